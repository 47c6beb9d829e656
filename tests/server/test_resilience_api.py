"""Resilience over the REST service: deadlines as 504, open breakers as 503 with Retry-After, and the
breakers' states in /health and /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(latency_scale=0) as server:
        yield server


@pytest.fixture
def sim_app(database_url: str, sim: SimServer) -> Iterator[App]:
    settings = Settings(
        database_url=database_url,
        lm="openai/sim-small",
        api_base=sim.url,
        api_key="sim-key",
        lm_cache=False,
        resilience={"retries": 0, "breaker": {"min_calls": 2, "failure_rate": 0.5, "cooldown_s": 30}},
    )
    with App(settings) as app:
        yield app


@pytest.fixture
def client(sim_app: App, serve: Callable[..., Live]) -> Iterator[Any]:
    live = serve(sim_app)
    key = sim_app.keys.create("admin", ["admin"])[1]
    with live.client(key) as http:
        response = http.post("/v1/programs", json={"name": "qa", "spec": QA_SPEC})
        assert response.status_code == 201, response.text
        yield http


def test_a_run_past_its_timeout_is_a_504_with_its_record(client: Any, sim: SimServer) -> None:
    sim.configure(latency=2.0)
    response = client.post("/v1/programs/qa/runs", json={"inputs": {"question": "q"}, "timeout": 0.3})
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded"
    record = client.get(f"/v1/executions/{error['execution_id']}").json()
    assert record["status"] == "failed"
    assert record["error"]["code"] == "deadline_exceeded"


def test_a_timeout_must_be_positive(client: Any) -> None:
    response = client.post("/v1/programs/qa/runs", json={"inputs": {"question": "q"}, "timeout": 0})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "timeout"


def test_an_open_breaker_is_a_503_with_retry_after_and_shows_in_health_and_metrics(
    client: Any, sim: SimServer
) -> None:
    sim.configure(error_rate=1.0)
    for _ in range(2):
        assert client.post("/v1/programs/qa/runs", json={"inputs": {"question": "q"}}).status_code == 503
    response = client.post("/v1/programs/qa/runs", json={"inputs": {"question": "q"}})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "breaker_open"
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert sim.stats().statuses == {500: 2}  # the third never reached the endpoint

    health = client.get("/health").json()
    (breaker,) = health["lms"]["breakers"]
    assert breaker["endpoint"] == f"openai/sim-small@{sim.url}"
    assert breaker["state"] == "open"
    assert breaker["opens"] == 1

    metrics = client.get("/metrics").text
    endpoint = breaker["endpoint"]
    assert f'dspex_lm_breaker_state{{endpoint="{endpoint}",state="open"}} 1.0' in metrics
    assert f'dspex_lm_breaker_opens_total{{endpoint="{endpoint}"}} 1.0' in metrics
