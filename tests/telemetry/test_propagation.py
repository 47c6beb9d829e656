"""Trace context across boundaries: a ``traceparent`` header on the REST API, and runs on pool workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dspex.runtime import App
from dspex.settings import Settings
from dspex.telemetry.otel import Telemetry
from dspex.testing import ScriptedEngine

TRACE_ID, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
QA_SPEC = {"module": "predict", "signature": "question -> answer"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def app(exporter: InMemorySpanExporter, tmp_path: Path) -> Iterator[App]:
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs['question']}"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'p.db'}")
    with App(settings, lm=engine.lm("qa"), telemetry=Telemetry(exporter)) as app:
        app.programs.register("qa", QA_SPEC)
        yield app


async def test_a_traceparent_header_makes_the_run_a_child_of_the_callers_span(
    app: App, exporter: InMemorySpanExporter
) -> None:
    from dspex.server import create_app

    transport = httpx.ASGITransport(app=create_app(app, auth=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://dspex") as client:
        joined = await client.post(
            "/v1/programs/qa/runs", json={"inputs": {"question": "hi"}}, headers={"traceparent": TRACEPARENT}
        )
        fresh = await client.post("/v1/programs/qa/runs", json={"inputs": {"question": "again"}})
        streamed = await client.post(
            "/v1/programs/qa/runs/stream",
            json={"inputs": {"question": "s"}},
            headers={"traceparent": TRACEPARENT},
        )
    assert joined.status_code == fresh.status_code == streamed.status_code == 200
    body = joined.json()
    assert body["trace_id"] == TRACE_ID
    assert fresh.json()["trace_id"] not in (None, TRACE_ID)
    assert f'"trace_id":"{TRACE_ID}"' in streamed.text.replace(" ", "")
    app.flush()
    record = app.executions.get(body["execution_id"])
    assert record is not None
    assert record.trace_id == TRACE_ID
    runs = [s for s in exporter.get_finished_spans() if s.name == "run qa"]
    assert len(runs) == 3
    assert [f"{s.parent.span_id:016x}" if s.parent else None for s in runs].count(CALLER_SPAN) == 2
    assert sum(s.parent is None for s in runs) == 1  # the request without a traceparent starts a trace


def test_a_pooled_run_is_exported_once_by_the_caller_with_the_workers_spans_under_it(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    from dspex.telemetry.context import continue_trace

    settings = Settings.load(
        database_url=f"sqlite:///{tmp_path / 'pool.db'}",
        pools={"general": {"size": 1, "initializer": "telemetry_programs:scripted"}},
    )
    with App(settings, telemetry=Telemetry(exporter)) as app:
        app.programs.register("qa", QA_SPEC)
        with continue_trace(TRACEPARENT):
            result = app.run("qa", {"question": "pooled"}, pool="general")
        app.flush()
        record = app.executions.get(result.execution_id)
    assert result.outputs["answer"] == "answer to pooled"
    assert record is not None
    assert record.trace_id == result.trace_id == TRACE_ID
    spans = list(exporter.get_finished_spans())
    (run,) = [s for s in spans if s.name == "run qa"]  # exactly one export of the run
    assert run.parent is not None
    assert f"{run.parent.span_id:016x}" == CALLER_SPAN
    assert run.attributes is not None
    assert run.attributes["dspex.placement.pool"] == "general"
    assert run.attributes["dspex.placement.worker"] == record.placement["worker"]  # type: ignore[index]
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}
    by_id = {s.context.span_id: s for s in spans}
    (lm,) = [s for s in spans if s.name == "chat scripted/worker"]  # the worker's LM call
    chain = []
    node = lm
    while node.parent is not None and node.parent.span_id in by_id:
        node = by_id[node.parent.span_id]
        chain.append(node.name)
    assert chain == ["Predict", "run qa"]
    assert lm.attributes is not None
    assert lm.attributes["gen_ai.usage.input_tokens"] == result.usage["scripted/worker"]["prompt_tokens"]
    assert run.start_time <= lm.start_time <= lm.end_time <= run.end_time  # type: ignore[operator]


def test_a_cache_hit_is_a_run_of_the_callers_trace_and_is_exported(
    app: App, exporter: InMemorySpanExporter
) -> None:
    from dspex.telemetry.context import continue_trace

    app.set_cache("qa", 60)
    miss = app.run("qa", {"question": "hi"})
    with continue_trace(TRACEPARENT):
        hit = app.run("qa", {"question": "hi"})
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert hit.trace_id == TRACE_ID
    app.flush()
    record = app.executions.get(hit.execution_id)
    assert record is not None
    assert record.trace_id == TRACE_ID
    (span,) = [
        s for s in exporter.get_finished_spans() if s.attributes.get("dspex.execution_id") == hit.execution_id
    ]
    assert span.name == "run qa"
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert span.attributes.get("dspex.cache_hit") is True
