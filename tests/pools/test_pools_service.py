"""The service on a worker pool: runs execute on it, ``/v1/pools``, ``/health`` and ``/metrics`` show it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dspex.errors import ConfigurationError
from dspex.runtime.app import App
from dspex.server import ServiceOptions, create_app
from dspex.settings import Settings


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[tuple[App, httpx.AsyncClient, dict[str, str]]]:
    settings = Settings(
        database_url=database_url, pools={"general": {"size": 2, "initializer": "pool_programs:scripted"}}
    )
    with App(settings) as app:
        app.programs.register("qa", "pool_programs:build_qa")
        keys = {
            "admin": app.keys.create("ops", ["admin"])[1],
            "runner": app.keys.create("ci", ["runs:execute"])[1],
        }
        api = create_app(app, options=ServiceOptions(pool="general"))
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://dspex.test") as client:
            yield app, client, keys


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_runs_execute_on_the_pool(service: tuple[App, httpx.AsyncClient, dict[str, str]]) -> None:
    _app, client, keys = service
    response = await client.post(
        "/v1/programs/qa/runs",
        json={"inputs": {"question": "hi"}, "idempotent": True},
        headers=_auth(keys["runner"]),
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["answer"] == "answer to hi"
    execution = await client.get(
        f"/v1/executions/{response.json()['execution_id']}", headers=_auth(keys["admin"])
    )
    placement: dict[str, Any] = execution.json()["placement"]
    assert placement["pool"] == "general"
    assert placement["worker"].startswith("general-")


async def test_pools_health_and_metrics_show_the_workers(
    service: tuple[App, httpx.AsyncClient, dict[str, str]],
) -> None:
    _app, client, keys = service
    await client.post(
        "/v1/programs/qa/runs", json={"inputs": {"question": "hi"}}, headers=_auth(keys["runner"])
    )
    assert (await client.get("/v1/pools", headers=_auth(keys["runner"]))).status_code == 403
    pools = (await client.get("/v1/pools", headers=_auth(keys["admin"]))).json()
    assert [p["name"] for p in pools] == ["general"]
    assert pools[0]["healthy"] is True
    assert pools[0]["completed"] >= 1
    assert {w["state"] for w in pools[0]["workers"]} <= {"idle", "busy"}
    assert all(w["pid"] and w["rss_mb"] > 0 for w in pools[0]["workers"])
    health = (await client.get("/health")).json()
    assert health["pools"][0]["name"] == "general"
    assert health["pools"][0]["size"] == 2
    metrics = (await client.get("/metrics", headers=_auth(keys["admin"]))).text
    assert 'dspex_pool_workers{pool="general",state="idle"}' in metrics
    assert 'dspex_pool_tasks_total{outcome="completed",pool="general"}' in metrics
    assert "dspex_pool_worker_rss_bytes" in metrics
    assert 'dspex_pool_coalesced_runs_total{pool="general"} 0.0' in metrics  # one run at a time: none
    assert pools[0]["coalesced"] == 0


def test_an_unknown_pool_is_refused_when_the_service_is_built(database_url: str) -> None:
    with (
        App(Settings(database_url=database_url)) as app,
        pytest.raises(ConfigurationError, match="valid: general"),
    ):
        create_app(app, options=ServiceOptions(pool="gpu"))


async def test_sessions_over_the_api_carry_history_and_stay_private(
    service: tuple[App, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, client, keys = service
    app.programs.register("chat", "pool_programs:build_chat")
    other = app.keys.create("other", ["runs:execute"])[1]
    created = await client.post("/v1/sessions", json={"program": "chat"}, headers=_auth(keys["runner"]))
    assert created.status_code == 201, created.text
    session = created.json()["id"]
    for question in ("Where is Paris?", "And its river?"):
        turn = await client.post(
            f"/v1/sessions/{session}/runs",
            json={"inputs": {"question": question}},
            headers=_auth(keys["runner"]),
        )
        assert turn.status_code == 200, turn.text
    assert turn.json()["outputs"]["answer"] == "turn 2 after ['Where is Paris?']"
    shown = (await client.get(f"/v1/sessions/{session}", headers=_auth(keys["runner"]))).json()
    assert shown["turns"] == 2
    assert [t["inputs"]["question"] for t in shown["history"]] == ["Where is Paris?", "And its river?"]
    # Another key cannot see, run or delete it; an admin can see it.
    for call in (
        client.get(f"/v1/sessions/{session}", headers=_auth(other)),
        client.post(f"/v1/sessions/{session}/runs", json={"inputs": {"question": "x"}}, headers=_auth(other)),
        client.delete(f"/v1/sessions/{session}", headers=_auth(other)),
    ):
        assert (await call).status_code == 404
    assert (await client.get("/v1/sessions", headers=_auth(other))).json() == []
    assert (await client.get(f"/v1/sessions/{session}", headers=_auth(keys["admin"]))).status_code == 200
    execution = await client.get(
        f"/v1/executions/{turn.json()['execution_id']}", headers=_auth(keys["admin"])
    )
    assert execution.json()["session_id"] == session
    assert (await client.delete(f"/v1/sessions/{session}", headers=_auth(keys["runner"]))).status_code == 200
    assert (await client.get(f"/v1/sessions/{session}", headers=_auth(keys["runner"]))).status_code == 404
    bad = await client.post("/v1/sessions", json={"program": "nope"}, headers=_auth(keys["runner"]))
    assert bad.status_code == 404


async def test_a_key_limited_to_programs_cannot_open_sessions_on_others(
    service: tuple[App, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, client, keys = service
    app.programs.register("chat", "pool_programs:build_chat")
    limited = app.keys.create("qa-only", ["runs:execute"], programs=["qa"])[1]
    refused = await client.post("/v1/sessions", json={"program": "chat"}, headers=_auth(limited))
    assert refused.status_code == 403
    theirs = await client.post("/v1/sessions", json={"program": "chat"}, headers=_auth(keys["admin"]))
    session = theirs.json()["id"]
    turn = await client.post(
        f"/v1/sessions/{session}/runs", json={"inputs": {"question": "x"}}, headers=_auth(limited)
    )
    assert turn.status_code == 404  # another key's session does not exist for this one
    bad = await client.post(
        "/v1/sessions", json={"program": "qa", "ttl_s": -1, "extra": "x"}, headers=_auth(limited)
    )
    assert bad.status_code == 422
