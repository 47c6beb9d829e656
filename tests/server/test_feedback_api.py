"""Feedback over the API (auth, scopes, validation, shown with the execution) and live signals (the SSE
stream's stats and anomaly events, the JSON snapshot, the Prometheus metrics), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.runtime.app import App
from dspex.server import ServiceOptions


@pytest.fixture
def execution_id(admin: httpx.Client, qa: dict[str, Any]) -> str:
    response = admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "2 + 2?"}})
    assert response.status_code == 200, response.text
    value: str = response.json()["execution_id"]
    return value


def _key(app: App, *scopes: str, programs: list[str] | None = None) -> str:
    return app.keys.create(f"k-{uuid.uuid4().hex[:6]}", list(scopes), programs=programs)[1]


def test_feedback_is_stored_and_shown_with_the_execution(
    live: Live, admin: httpx.Client, execution_id: str, dspex_app: App
) -> None:
    response = admin.post(
        f"/v1/executions/{execution_id}/feedback",
        json={"score": 0.8, "label": "good", "comment": "right answer", "detail": {"user": "u-17"}},
    )
    assert response.status_code == 201, response.text
    given = response.json()
    assert given["execution_id"] == execution_id
    assert (given["score"], given["label"], given["detail"]) == (0.8, "good", {"user": "u-17"})
    assert given["actor"].startswith("key:")
    by_prefix = admin.post(f"/v1/executions/{execution_id[:8]}/feedback", json={"score": 0})
    assert by_prefix.status_code == 201, by_prefix.text

    listed = admin.get(f"/v1/executions/{execution_id}/feedback")
    assert listed.status_code == 200
    assert [f["score"] for f in listed.json()] == [0.8, 0.0]
    shown = admin.get(f"/v1/executions/{execution_id}").json()
    assert [f["id"] for f in shown["feedback"]] == [f["id"] for f in listed.json()]
    assert [f.score for f in dspex_app.feedback.list(execution_id)] == [0.8, 0.0]


def test_feedback_needs_a_key_with_the_scope_and_the_program(
    live: Live, execution_id: str, dspex_app: App
) -> None:
    url = f"/v1/executions/{execution_id}/feedback"
    body = {"score": 1.0}
    with live.client() as anonymous:
        missing = anonymous.post(url, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get(url).status_code == 401
    with live.client(_key(dspex_app, "programs:read")) as reader:
        refused = reader.post(url, json=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == (
            "this API key lacks the 'feedback' (or 'runs:execute') scope"
        )
        assert reader.get(url).status_code == 200  # reading feedback is reading the record
    with live.client(_key(dspex_app, "feedback")) as widget:
        assert widget.post(url, json=body).status_code == 201
        assert widget.get(url).status_code == 403  # may rate runs, not read them
        assert widget.get(f"/v1/executions/{execution_id}").status_code == 403
    with live.client(_key(dspex_app, "runs:execute", programs=["qa"])) as runner:
        assert runner.post(url, json={"label": "fine"}).status_code == 201
    with live.client(_key(dspex_app, "feedback", programs=["other"])) as elsewhere:
        foreign = elsewhere.post(url, json=body)
        assert foreign.status_code == 403
        assert "may not use program 'qa'" in foreign.json()["error"]["message"]
    assert len(dspex_app.feedback.list(execution_id)) == 2


def test_unknown_executions_and_bad_feedback_are_refused(
    admin: httpx.Client, execution_id: str, dspex_app: App
) -> None:
    unknown = admin.post(f"/v1/executions/{uuid.uuid4()}/feedback", json={"score": 1.0})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert admin.get(f"/v1/executions/{uuid.uuid4()}/feedback").status_code == 404
    url = f"/v1/executions/{execution_id}/feedback"
    for body, field in [
        ({"score": 1.5}, "score"),
        ({"score": -1}, "score"),
        ({"score": "high"}, "score"),
        ({}, "body"),
        ({"label": ""}, "label"),
        ({"label": "x" * 201}, "label"),
        ({"comment": "x" * 10_001}, "comment"),
        ({"score": 0.5, "mood": "meh"}, "mood"),
    ]:
        response = admin.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["field"] == field, (body, response.json())
    nan = admin.post(url, content=b'{"score": NaN}', headers={"content-type": "application/json"})
    assert nan.status_code == 422
    blank = admin.post(url, json={"label": "  "})  # passes the schema; the store refuses it
    assert blank.status_code == 422
    assert blank.json()["error"]["code"] == "validation_error"
    assert blank.json()["error"]["field"] == "label"
    large = admin.post(url, json={"label": "ok", "detail": {"blob": "x" * 20_000}})
    assert large.status_code == 422
    assert large.json()["error"]["field"] == "detail"
    assert dspex_app.feedback.list(execution_id) == []


# -- signals ----------------------------------------------------------------------------------------------


def _rows(app: App, count: int, ms: float, start: dt.datetime) -> list[dict[str, Any]]:
    version = app.programs.resolve("qa").id
    rows = []
    for i in range(count):
        ended = start + dt.timedelta(milliseconds=10 * i)
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "program": "qa",
                "version_id": version,
                "status": "succeeded",
                "inputs": {"question": "q"},
                "outputs": {"answer": "a"},
                "error": None,
                "started_at": ended - dt.timedelta(milliseconds=ms),
                "ended_at": ended,
                "duration_ms": ms,
                "usage": {"openai/sim": {"total_tokens": 40, "calls": 1, "cost_usd": 0.0004}},
                "total_tokens": 40,
                "cost_usd": 0.0004,
                "variables": None,
                "trace": None,
                "cache_hit": False,
                "runner": "test:1",
            }
        )
    return rows


@pytest.fixture
def signals_live(dspex_app: App, serve: Callable[..., Live]) -> Live:
    options = ServiceOptions(events_poll_s=0.05, ping_s=5.0, events_timeout_s=20.0)
    return serve(dspex_app, options=options)


@pytest.fixture
def signals_admin(signals_live: Live, admin_key: str) -> Iterator[httpx.Client]:
    with signals_live.client(admin_key) as client:
        yield client


def test_the_signal_stream_sends_stats_and_anomalies(signals_admin: httpx.Client, dspex_app: App) -> None:
    dspex_app.programs.register("qa", QA_SPEC)
    events: list[tuple[str, Any]] = []
    with signals_admin.stream("GET", "/v1/signals", params={"program": "qa", "stats_s": 0.2}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        now = dt.datetime.now(dt.UTC)
        deadline = time.monotonic() + 15
        name = None
        for line in lines:
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name is not None:
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "stats" and len(events) == 1:
                    # The stream is following: 30 runs at 100 ms, then 12 at 900 ms.
                    dspex_app.executions.upsert(_rows(dspex_app, 30, 100.0, now))
                    dspex_app.executions.upsert(_rows(dspex_app, 12, 900.0, now + dt.timedelta(seconds=1)))
                if name == "anomaly" or time.monotonic() > deadline:
                    break
    kinds = [name for name, _ in events]
    assert kinds[0] == "stats"
    assert "anomaly" in kinds, kinds
    anomaly = next(data for name, data in events if name == "anomaly")
    assert anomaly["kind"] == "latency_spike"
    assert anomaly["where"]["program"] == "qa"
    assert anomaly["value"] == 900.0
    assert anomaly["baseline"] == 100.0
    assert anomaly["threshold"] == {"z": 3.5, "ratio": 1.5}

    snapshot = signals_admin.get("/v1/signals/stats", params={"program": "qa"})
    assert snapshot.status_code == 200
    program = next(g for g in snapshot.json()["groups"] if g["where"]["dimension"] == "program")
    assert (program["runs"], program["success_rate"], program["anomalies"]) == (42, 1.0, ["latency_spike"])
    assert {g["where"]["dimension"] for g in snapshot.json()["groups"]} == {"program", "version", "model"}

    metrics = signals_admin.get("/metrics").text
    assert 'dspex_signal_runs{program="qa"} 42.0' in metrics
    assert 'dspex_signal_success_rate{program="qa"} 1.0' in metrics
    assert (
        'dspex_signal_anomalies_total{dimension="program",kind="latency_spike",program="qa"} 1.0' in metrics
    )


def test_signals_need_programs_read_and_a_limited_key_names_its_program(
    signals_live: Live, dspex_app: App
) -> None:
    with signals_live.client() as anonymous:
        assert anonymous.get("/v1/signals/stats").status_code == 401
        assert anonymous.get("/v1/signals").status_code == 401
    with signals_live.client(_key(dspex_app, "feedback")) as widget:
        assert widget.get("/v1/signals/stats").status_code == 403
    with signals_live.client(_key(dspex_app, "programs:read", programs=["qa"])) as limited:
        assert limited.get("/v1/signals/stats").status_code == 403
        assert limited.get("/v1/signals/stats", params={"program": "other"}).status_code == 403
        assert limited.get("/v1/signals/stats", params={"program": "qa"}).status_code == 200
        assert limited.get("/v1/signals", params={"program": "qa", "stats_s": 0}).status_code == 422
