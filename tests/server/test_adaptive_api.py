"""Adaptive programs over the API: start, serve, show, freeze, stop; scopes, program limits and bad input
(an import path for a metric, an unconfigured model, another program's adaptive program), on SQLite and
PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.modules import ToolRegistry
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.variables import Bindings, Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document

SPACE = space_document(
    VariableSpace([Variable.float("temperature", 0.0, 1.0)]), Bindings([bind.temperature("temperature")])
)


def answered(inputs: dict[str, Any], outputs: dict[str, Any]) -> float:
    return 1.0 if outputs.get("answer") else 0.0


@pytest.fixture
def dspex_app(database_url: str) -> Iterator[App]:
    tools = ToolRegistry()
    tools.add(answered, name="answered")
    engine = ScriptedEngine({"answer": "4"})
    with App(Settings(database_url=database_url), lm=engine.lm(), tools=tools) as app:
        app.programs.register("qa", QA_SPEC)
        app.programs.register("other", QA_SPEC)
        yield app


def _key(app: App, *scopes: str, programs: list[str] | None = None) -> str:
    return app.keys.create(f"k-{uuid.uuid4().hex[:6]}", list(scopes), programs=programs)[1]


START = {
    "name": "qa-live",
    "space": SPACE,
    "arms": [{"temperature": 0.1}, {"temperature": 0.9}],
    "metric": "answered",
    "policy": {"seed": 1},
}


def test_start_serve_show_freeze_and_stop(live: Live, admin: httpx.Client, dspex_app: App) -> None:
    started = admin.post("/v1/programs/qa/adaptive", json=START)
    assert started.status_code == 201, started.text
    assert {a["configuration"]["temperature"] for a in started.json()["arms"]} == {0.1, 0.9}
    served = []
    for _ in range(12):
        response = admin.post(
            "/v1/programs/qa/adaptive/qa-live/runs", json={"inputs": {"question": "2 + 2?"}}
        )
        assert response.status_code == 200, response.text
        served.append(response.json())
    assert {s["reason"] for s in served} <= {"exploit", "explore", "guardrail"}
    assert all(s["outputs"] == {"answer": "4"} for s in served)
    dspex_app.flush()
    record = admin.get(f"/v1/executions/{served[0]['execution_id']}").json()
    assert record["adaptation"]["arm"] == served[0]["arm"]
    shown = admin.get("/v1/programs/qa/adaptive/qa-live").json()
    assert shown["runs"] == 12
    assert sum(a["served"] for a in shown["arms"]) == 12
    assert all("posterior_mean" in a and "interval" in a for a in shown["arms"])
    assert shown["reward_over_time"]
    assert [a["name"] for a in admin.get("/v1/programs/qa/adaptive").json()] == ["qa-live"]
    metrics = admin.get("/metrics").text
    for arm in shown["arms"]:
        assert (
            f'dspex_adaptive_arm_served{{adaptive="qa-live",arm="{arm["arm"]}"}} {float(arm["served"])}'
            in metrics
        )
        assert f'dspex_adaptive_arm_active{{adaptive="qa-live",arm="{arm["arm"]}"}} 1.0' in metrics
    assert 'dspex_adaptive_arm_posterior_mean{adaptive="qa-live"' in metrics
    assert 'dspex_adaptive_explore_share{adaptive="qa-live"}' in metrics

    added = admin.post("/v1/programs/qa/adaptive", json={"name": "qa-live", "arms": [{"temperature": 0.5}]})
    assert added.status_code == 200, added.text
    assert len(added.json()["arms"]) == 3
    arm = served[0]["arm"]
    frozen = admin.post("/v1/programs/qa/adaptive/qa-live/freeze", json={"arm": arm[:8]})
    assert frozen.status_code == 200, frozen.text
    assert frozen.json()["frozen_arm"] == arm
    run = admin.post("/v1/programs/qa/adaptive/qa-live/runs", json={"inputs": {"question": "q"}}).json()
    assert (run["arm"], run["reason"]) == (arm, "frozen")
    assert admin.post("/v1/programs/qa/adaptive/qa-live/stop").json()["status"] == "stopped"
    refused = admin.post("/v1/programs/qa/adaptive/qa-live/runs", json={"inputs": {"question": "q"}})
    assert refused.status_code == 422
    assert "is stopped" in refused.json()["error"]["message"]
    assert admin.post("/v1/programs/qa/adaptive/qa-live/resume").json()["status"] == "active"


def test_scopes_and_program_limits(live: Live, admin: httpx.Client, dspex_app: App) -> None:
    assert admin.post("/v1/programs/qa/adaptive", json=START).status_code == 201
    runner = live.client(_key(dspex_app, "runs:execute"))
    reader = live.client(_key(dspex_app, "programs:read"))
    elsewhere = live.client(_key(dspex_app, "admin", programs=["other"]))
    promoter = live.client(_key(dspex_app, "programs:promote"))
    anonymous = live.client()
    try:
        _check_scopes(runner, reader, elsewhere, promoter, anonymous)
    finally:
        for client in (runner, reader, elsewhere, promoter, anonymous):
            client.close()


def _check_scopes(
    runner: httpx.Client,
    reader: httpx.Client,
    elsewhere: httpx.Client,
    promoter: httpx.Client,
    anonymous: httpx.Client,
) -> None:
    inputs = {"inputs": {"question": "q"}}
    assert runner.post("/v1/programs/qa/adaptive", json={**START, "name": "x"}).status_code == 403
    assert runner.post("/v1/programs/qa/adaptive/qa-live/freeze").status_code == 403
    assert runner.post("/v1/programs/qa/adaptive/qa-live/runs", json=inputs).status_code == 200
    assert reader.get("/v1/programs/qa/adaptive/qa-live").status_code == 200
    assert reader.post("/v1/programs/qa/adaptive/qa-live/runs", json=inputs).status_code == 403
    # A key limited to another program can neither see nor reach qa's adaptive program, even by
    # naming it under its own program.
    assert elsewhere.get("/v1/programs/qa/adaptive/qa-live").status_code == 403
    assert elsewhere.get("/v1/programs/other/adaptive/qa-live").status_code == 404
    assert elsewhere.post("/v1/programs/other/adaptive/qa-live/runs", json=inputs).status_code == 404
    assert elsewhere.post("/v1/programs/other/adaptive/qa-live/stop").status_code == 404
    clash = elsewhere.post(
        "/v1/programs/other/adaptive", json={"name": "qa-live", "arms": [{"temperature": 0.2}]}
    )
    assert clash.status_code == 409
    # Re-optimization queues jobs: it needs the optimize scope as well.
    reopt = promoter.post("/v1/programs/qa/adaptive", json={**START, "name": "qa-r", "reoptimize": {}})
    assert reopt.status_code == 403
    assert "optimize" in reopt.json()["error"]["message"]
    assert anonymous.get("/v1/programs/qa/adaptive/qa-live").status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**START, "metric": "os:system"}, 422, "unknown reward metric 'os:system'"),
        ({**START, "metric": "nope"}, 422, "unknown reward metric 'nope'"),
        ({**START, "arms": [{"temprature": 0.1}]}, 422, "temprature"),
        ({**START, "arms": [{"temperature": 7}]}, 422, "temperature"),
        ({**START, "policy": {"discount": 0.1}}, 422, "discount"),
        ({**START, "reward": {"quality": "1"}}, 422, "quality"),
        ({**START, "features": ["not a field"]}, 422, "input field"),
        ({**START, "from_optimization": "opt-nope"}, 404, "no optimization 'opt-nope'"),
        ({**START, "name": "bad name!"}, 422, "name"),
        ({**START, "extra": 1}, 422, "extra"),
        (
            {
                **START,
                "space": space_document(
                    VariableSpace([Variable.model("model", ["openai/gpt-evil"])]),
                    Bindings([bind.model("model")]),
                ),
                "arms": [{"model": "openai/gpt-evil"}],
            },
            422,
            "gpt-evil",
        ),
    ],
)
def test_bad_input_is_a_clear_error(
    live: Live, admin: httpx.Client, dspex_app: App, body: dict[str, Any], status: int, needle: str
) -> None:
    response = admin.post("/v1/programs/qa/adaptive", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert dspex_app.adapt.list() == []  # nothing half-made was stored


def test_unknown_program_and_adaptive_are_404(live: Live, admin: httpx.Client) -> None:
    assert admin.post("/v1/programs/nope/adaptive", json=START).status_code == 404
    assert admin.get("/v1/programs/qa/adaptive/nope").status_code == 404
    assert admin.post("/v1/programs/qa/adaptive/nope/runs", json={"inputs": {}}).status_code == 404
