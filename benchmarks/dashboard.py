"""Server time of the dashboard's executions page and one execution page with 100,000 executions stored.

Run: ``python benchmarks/dashboard.py [--rows 100000] [--repeat 20]``.

The script records one real run (``dspy.Predict("question -> answer")`` on a scripted LM, so its trace,
usage and messages are real), then writes ``--rows`` copies of that record into a fresh SQLite store
through the execution repository's batch upsert: three programs, 5% failed, 10% cache hits, one start a
second apart. It logs in to ``/ui`` with an API key and times requests in process (the ASGI app through
Starlette's test client: routing, auth from the session cookie, the queries and the template, no
network), median of ``--repeat``. Each row also counts the SQL statements the request ran, so a query
per row would show as ~50. Baseline, same process, same store: the REST API's JSON for the same data
(``GET /v1/executions?limit=50``, with ``offset`` for the deep page, and ``GET /v1/executions/{id}``);
printed as the ratio dashboard / API. The deep page is reached the way its links reach it, by cursor.

Targets (issue 19): executions page <= 150 ms, one execution <= 50 ms, no query per row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TARGETS_MS = {"executions": 150.0, "execution": 50.0}


def fill(app: Any, rows: int) -> str:
    """Record one real run, then store ``rows`` copies of it; returns an id from the middle."""
    import dspy

    from dspex.testing import ScriptedEngine

    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs['question']}"})
    app.run(dspy.Predict("question -> answer"), {"question": "what is stored?"}, lm=engine.lm())
    app.flush(30)
    template = app.executions.find(with_trace=True)[0].to_json()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    middle = ""
    batch: list[dict[str, Any]] = []
    for i in range(rows):
        row = dict(template)
        row["id"] = str(uuid.UUID(int=i + 1))
        row["program"] = ("qa", "summarize", "classify")[i % 3]
        row["status"] = "failed" if i % 20 == 0 else "succeeded"
        row["cache_hit"] = i % 10 == 0
        row["started_at"] = start + dt.timedelta(seconds=i)
        row["ended_at"] = row["started_at"] + dt.timedelta(milliseconds=120)
        if i == rows // 2:
            middle = row["id"]
        batch.append(row)
        if len(batch) == 5000:
            app.executions.upsert(batch)
            batch = []
    app.executions.upsert(batch)
    return middle


@contextmanager
def counting(engine: Any) -> Iterator[list[str]]:
    """The SQL statements run while the block runs."""
    import sqlalchemy as sa

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    call()  # warm: templates compiled, statements cached
    samples = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from dspex.runtime.app import App
    from dspex.server import create_app
    from dspex.server.ui.runs import cursor_of
    from dspex.settings import Settings

    with (
        tempfile.TemporaryDirectory() as home,
        App(Settings(database_url=f"sqlite:///{Path(home) / 'd.db'}")) as app,
    ):
        started = time.perf_counter()
        middle = fill(app, args.rows)
        print(f"stored {app.executions.count():,} executions in {time.perf_counter() - started:.1f} s")
        _, key = app.keys.create("bench", ["admin"])
        engine = app.executions.db.engine
        with TestClient(create_app(app)) as client:
            page = client.get("/ui/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert token is not None
            assert client.post("/ui/login", data={"csrf": token.group(1), "key": key}).status_code in (
                200,
                303,
            )
            api = {"Authorization": f"Bearer {key}"}
            # A page half-way down: its cursor, as the "older" links carry it, against the API's offset.
            deep = app.executions.find(limit=1, offset=min(50_000, args.rows // 2))[0]
            cursor = quote(cursor_of(deep))
            rows = [
                ("executions", "/ui/executions", "/v1/executions?limit=50"),
                ("executions", "/ui/executions?program=qa", "/v1/executions?limit=50&program=qa"),
                ("executions", "/ui/executions?cache=hit", "/v1/executions?limit=50"),
                (
                    "executions",
                    "/ui/executions?status=failed&program=qa",
                    "/v1/executions?limit=50&status=failed&program=qa",
                ),
                (
                    "executions",
                    f"/ui/executions?before={cursor}",
                    f"/v1/executions?limit=50&offset={min(50_000, args.rows // 2)}",
                ),
                ("execution", f"/ui/executions/{middle}", f"/v1/executions/{middle}"),
            ]
            print(f"{'page':58} {'median ms':>10} {'target':>7} {'queries':>8} {'API ms':>8} {'ratio':>6}")
            for kind, page_url, api_url in rows:
                with counting(engine) as statements:
                    response = client.get(page_url)
                assert response.status_code == 200, (page_url, response.status_code, response.text[:300])
                queries = len(statements)
                ui_ms, _ = timed(lambda url=page_url: client.get(url), args.repeat)
                api_ms, answer = timed(lambda url=api_url: client.get(url, headers=api), args.repeat)
                assert answer.status_code == 200, answer.text[:300]
                verdict = "ok" if ui_ms <= TARGETS_MS[kind] else "MISSED"
                print(
                    f"{page_url.split('~')[0][:58]:58} {ui_ms:10.1f} {TARGETS_MS[kind]:7.0f} {queries:8d} {api_ms:8.1f} "
                    f"{ui_ms / api_ms:6.2f}  {verdict}"
                )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
