"""Routes that read or write the store while the database is down answer 503 ``database_unavailable``
with ``Retry-After`` (the request was fine; retry), never a 500, and work again once it is back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dspy
import httpx

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.testing.postgres import PostgresCluster


def test_feedback_and_reads_during_an_outage_are_503_not_500(
    chaos_database_url: str,
    private_postgres: PostgresCluster,
    serve_api: Callable[..., str],
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine({"answer": "42"})
    settings = Settings(database_url=chaos_database_url, home=tmp_path / "home")
    with App(settings, lm=engine.lm()) as app:
        key = app.keys.create("admin", ["admin"])[1]
        execution_id = app.run(dspy.Predict("question -> answer"), {"question": "q"}).execution_id
        app.flush()
        url = serve_api(app)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            private_postgres.stop("fast")
            try:
                feedback = http.post(f"/v1/executions/{execution_id}/feedback", json={"score": 1.0})
                listing = http.get("/v1/executions")
            finally:
                private_postgres.start()
            after = http.post(f"/v1/executions/{execution_id}/feedback", json={"score": 1.0})
    for response in (feedback, listing):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.headers["Retry-After"] == "1"
    assert after.status_code == 201, after.text
