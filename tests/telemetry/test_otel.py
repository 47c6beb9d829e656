"""OpenTelemetry export of runs, seen by the SDK's in-memory exporter (no consumer needed).

Each test gives its App a :class:`Telemetry` over an ``InMemorySpanExporter`` and reads the finished
spans after ``app.flush()``: the span tree, the GenAI attributes, the trace id in the record and result.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dspex.errors import ConfigurationError, ExecutionError
from dspex.lm.pricing import Price, Prices
from dspex.pipeline import Pipeline, step
from dspex.runtime import App
from dspex.settings import Settings
from dspex.telemetry.context import TraceContext, continue_trace
from dspex.telemetry.otel import Telemetry
from dspex.testing import ScriptedEngine, SimServer

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def app(exporter: InMemorySpanExporter, tmp_path: Path) -> Iterator[App]:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    prices = Prices({"scripted/qa": Price(0.5, 1.5)})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'otel.db'}")
    with App(settings, lm=engine.lm("qa"), prices=prices, telemetry=Telemetry(exporter)) as app:
        yield app


def _spans(app: App, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert app.flush()
    return list(exporter.get_finished_spans())


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def _tree(spans: Sequence[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(span name, parent span name) for every span, in export order."""
    names = {span.context.span_id: span.name for span in spans}
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in spans]


def test_a_chain_of_thought_run_is_a_tree_of_genai_spans(app: App, exporter: InMemorySpanExporter) -> None:
    result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"}, variables={"t": 0.5})
    spans = _spans(app, exporter)
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert _tree(spans) == [
        ("run ChainOfThought", None),
        ("ChainOfThought", "run ChainOfThought"),
        ("Predict", "ChainOfThought"),
        ("chat scripted/qa", "Predict"),  # the default trace level, lean: no adapter spans
    ]
    assert {_hex(s.context.trace_id, 32) for s in spans} == {result.trace_id}
    assert record.trace_id == result.trace_id
    run, lm = spans[0], spans[3]
    assert run.parent is None
    assert run.attributes is not None
    assert run.attributes["dspex.execution_id"] == result.execution_id
    assert run.attributes["dspex.program"] == "ChainOfThought"
    assert run.attributes["dspex.status"] == "succeeded"
    assert json.loads(str(run.attributes["dspex.variables"])) == {"t": 0.5}
    assert run.attributes["dspex.cost_usd"] == pytest.approx(result.cost_usd)
    usage = result.usage["scripted/qa"]
    assert lm.attributes is not None
    assert dict(lm.attributes) == {
        "dspex.span.kind": "lm",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "scripted/qa",
        "gen_ai.response.model": "scripted/qa",
        "gen_ai.provider.name": "scripted",
        "gen_ai.system": "scripted",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "dspex.cost_usd": pytest.approx(usage["cost_usd"]),
        "dspex.resilience.served_by": "scripted/qa",
        "dspex.resilience.fallback": 0,
        "dspex.resilience.attempts": 1,
        "dspex.resilience.tried": '[{"model":"scripted/qa","attempt":0,"ok":true}]',
    }
    # Recorded times: children inside the run, the run as long as the record says.
    assert all(run.start_time <= s.start_time <= s.end_time <= run.end_time for s in spans[1:])  # type: ignore[operator]
    assert (run.end_time - run.start_time) / 1e6 == pytest.approx(record.duration_ms, abs=0.01)  # type: ignore[operator]


def test_the_full_trace_level_exports_the_adapter_spans(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    engine = ScriptedEngine({"answer": "HI"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'full.db'}", trace="full")
    with App(settings, lm=engine.lm("qa"), telemetry=Telemetry(exporter)) as app:
        app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
        spans = _spans(app, exporter)
    assert _tree(spans) == [
        ("run ChainOfThought", None),
        ("ChainOfThought", "run ChainOfThought"),
        ("Predict", "ChainOfThought"),
        ("format ChatAdapter", "Predict"),
        ("chat scripted/qa", "Predict"),
        ("parse ChatAdapter", "Predict"),
    ]
    assert {dict(s.attributes or {}).get("dspex.span.kind") for s in spans[3::2]} == {
        "adapter_format",
        "adapter_parse",
    }


def test_messages_are_exported_only_when_asked(tmp_path: Path) -> None:
    engine = ScriptedEngine({"answer": "secret answer"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    for capture in (False, True):
        exporter = InMemorySpanExporter()  # closing an App shuts its exporter down
        with App(settings, lm=engine.lm(), telemetry=Telemetry(exporter, capture_messages=capture)) as app:
            app.run(dspy.Predict("question -> answer"), {"question": "private question"})
            spans = _spans(app, exporter)
        text = json.dumps([dict(s.attributes or {}) for s in spans])
        assert ("private question" in text) is capture
        assert ("secret answer" in text) is capture
    (lm,) = [s for s in spans if s.name.startswith("chat ")]
    assert lm.attributes is not None
    messages = json.loads(str(lm.attributes["gen_ai.input.messages"]))
    assert messages[-1]["role"] == "user"
    assert "private question" in messages[-1]["content"]


def test_a_pipeline_with_two_models_and_a_tool(app: App, exporter: InMemorySpanExporter) -> None:
    alpha = ScriptedEngine({"answer": lambda inputs: "A:" + inputs["question"]}).lm("alpha")
    beta = ScriptedEngine({"summary": "short"}).lm("beta")
    lookup = dspy.Tool(lambda question: f"facts about {question}", name="lookup")

    def research(question: str) -> dict[str, Any]:
        return {"facts": lookup(question=question)}

    answer, summarise = dspy.Predict("question -> answer"), dspy.ChainOfThought("answer, facts -> summary")
    answer.lm, summarise.predict.lm = alpha, beta
    pipeline = Pipeline([step(research, outputs=["facts"]), step(answer), step(summarise)], name="two")
    result = app.run(pipeline, {"question": "q?"}, program_name="two-models")
    spans = _spans(app, exporter)
    tree = _tree(spans)
    assert tree[0] == ("run two-models", None)
    assert ("two", "run two-models") in tree
    assert ("execute_tool lookup", "research") in tree
    lms = {s.name: s for s in spans if s.name.startswith("chat ")}
    assert set(lms) == {"chat scripted/alpha", "chat scripted/beta"}
    for model, span in lms.items():
        assert span.attributes is not None
        assert span.attributes["gen_ai.response.model"] == model.removeprefix("chat ")
        tokens = result.usage[model.removeprefix("chat ")]
        assert span.attributes["gen_ai.usage.input_tokens"] == tokens["prompt_tokens"]
    (tool,) = [s for s in spans if s.name == "execute_tool lookup"]
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "lookup"


def test_a_fallback_shows_the_model_asked_and_the_one_that_served(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    with SimServer(latency_scale=0) as primary, SimServer(latency_scale=0) as backup:
        primary.configure(error_rate=1.0)
        settings = Settings.load(
            lm="openai/sim-small",
            api_base=primary.url,
            api_key="sim-key",
            lm_cache=False,
            database_url=f"sqlite:///{tmp_path / 'f.db'}",
            models={"backup": {"model": "openai/sim-medium", "api_base": backup.url, "api_key": "sim-key"}},
            resilience={"retries": 0, "models": {"openai/sim-small": {"fallbacks": ["backup"]}}},
        )
        with App(settings, telemetry=Telemetry(exporter)) as app:
            app.run(dspy.Predict("question -> answer"), {"question": "What is the capital of Peru?"})
            spans = _spans(app, exporter)
    (lm,) = [s for s in spans if s.name.startswith("chat ")]
    assert lm.name == "chat openai/sim-small"
    assert lm.attributes is not None
    assert lm.attributes["gen_ai.request.model"] == "openai/sim-small"
    assert lm.attributes["gen_ai.response.model"] == "openai/sim-medium"
    assert lm.attributes["gen_ai.provider.name"] == "openai"
    assert lm.attributes["dspex.resilience.fallback"] == 1
    assert lm.attributes["dspex.resilience.attempts"] == 2
    assert lm.attributes["dspex.resilience.served_by"] == "openai/sim-medium"
    tried = json.loads(str(lm.attributes["dspex.resilience.tried"]))
    assert [t["model"] for t in tried] == ["openai/sim-small", "openai/sim-medium"]


def test_a_failed_run_is_an_error_span(app: App, exporter: InMemorySpanExporter) -> None:
    class Broken(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            raise RuntimeError("broken on purpose")

    with pytest.raises(ExecutionError):
        app.run(Broken(), {"question": "x"})
    run, module = _spans(app, exporter)
    assert run.status.status_code.name == "ERROR"
    assert run.attributes is not None
    assert run.attributes["error.type"] == "execution_error"
    assert module.status.description == "broken on purpose"
    assert module.attributes is not None
    assert module.attributes["error.type"] == "RuntimeError"


def test_a_run_continues_the_callers_trace(app: App, exporter: InMemorySpanExporter) -> None:
    with continue_trace(PARENT):
        result = app.run(dspy.Predict("question -> answer"), {"question": "hi"})
    run = _spans(app, exporter)[0]
    assert result.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert run.parent is not None
    assert _hex(run.parent.span_id, 16) == "00f067aa0ba902b7"
    assert run.parent.is_remote


def test_an_unsampled_caller_exports_nothing_but_keeps_its_trace_id(
    app: App, exporter: InMemorySpanExporter
) -> None:
    with continue_trace(PARENT[:-2] + "00"):
        result = app.run(dspy.Predict("question -> answer"), {"question": "hi"})
    assert _spans(app, exporter) == []
    assert result.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_run_inside_the_callers_own_otel_span_is_its_child(
    app: App, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("caller")
    with tracer.start_as_current_span("request") as outer:
        result = app.run(dspy.Predict("question -> answer"), {"question": "hi"})
    run = _spans(app, exporter)[0]
    assert result.trace_id == _hex(outer.get_span_context().trace_id, 32)
    assert run.parent is not None
    assert run.parent.span_id == outer.get_span_context().span_id


def test_sampling_keeps_the_share_of_new_traces_asked_for(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    engine = ScriptedEngine({"answer": "a"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 's.db'}")
    with App(settings, lm=engine.lm(), telemetry=Telemetry(exporter, sample_ratio=0.0)) as app:
        result = app.run(dspy.Predict("question -> answer"), {"question": "hi"})
        assert _spans(app, exporter) == []
    assert result.trace_id is not None  # the record still names its trace


def test_an_exporter_that_fails_never_fails_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Failing(SpanExporter):  # type: ignore[misc]  # the SDK's base class is partly untyped
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise ConnectionError("collector down")

    engine = ScriptedEngine({"answer": "a"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    with caplog.at_level(logging.ERROR), App(settings, lm=engine.lm(), telemetry=Telemetry(Failing())) as app:
        result = app.run(dspy.Predict("question -> answer"), {"question": "hi"})
        app.flush()
    assert result.outputs == {"answer": "a"}
    assert "collector down" in caplog.text


def test_settings_turn_export_on_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert Telemetry.from_settings(Settings.load()) is None
    on = Telemetry.from_settings(Settings.load(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert on is not None
    on.close()
    assert (
        Telemetry.from_settings(
            Settings.load(telemetry={"enabled": False}), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
        )
        is None
    )
    assert (
        Telemetry.from_settings(
            Settings.load(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
        )
        is None
    )
    configured = Telemetry.from_settings(
        Settings.load(telemetry={"endpoint": "http://127.0.0.1:1", "headers": {"authorization": "OTLP_AUTH"}, "sample_ratio": 0.25}),
        {"OTLP_AUTH": "Bearer k"},
    )  # fmt: skip
    assert configured is not None
    assert configured.sample_ratio == 0.25
    configured.close()
    with pytest.raises(ConfigurationError, match="'OTLP_AUTH', which is not set"):
        Telemetry.from_settings(
            Settings.load(telemetry={"endpoint": "http://127.0.0.1:1", "headers": {"authorization": "OTLP_AUTH"}}), {}
        )  # fmt: skip


@pytest.mark.parametrize(
    "header",
    [
        PARENT,
        PARENT[:-2] + "00",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",  # a later version may extend it
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 may not
        "garbage",
    ],
)
def test_traceparent_parsing_agrees_with_the_sdks_propagator(header: str) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    expected = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": header}))
    span_context = expected.get_span_context()
    parsed = TraceContext.parse(header)
    if not span_context.is_valid:
        assert parsed is None
        return
    assert parsed == TraceContext(
        _hex(span_context.trace_id, 32),
        _hex(span_context.span_id, 16),
        bool(span_context.trace_flags.sampled),
    )


def test_with_telemetry_off_nothing_is_imported_and_the_callers_trace_is_still_recorded(
    tmp_path: Path,
) -> None:
    code = f"""
import json, os, sys
for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
    os.environ.pop(name, None)
import dspy
from dspex.runtime import App
from dspex.settings import Settings
from dspex.telemetry.context import continue_trace
from dspex.testing import ScriptedEngine
with App(Settings.load(database_url="sqlite:///{tmp_path / "off.db"}"), lm=ScriptedEngine({{"answer": "a"}}).lm()) as app:
    plain = app.run(dspy.Predict("question -> answer"), {{"question": "hi"}})
    with continue_trace("{PARENT}"):
        joined = app.run(dspy.Predict("question -> answer"), {{"question": "hi"}})
    app.flush()
    recorded = app.executions.get(joined.execution_id).trace_id
print(json.dumps([plain.trace_id, joined.trace_id, recorded, app.telemetry is None,
                  sorted(m for m in sys.modules if m.startswith("opentelemetry"))]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, joined, recorded, off, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert off
    assert plain is None
    assert joined == recorded == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert modules == []
