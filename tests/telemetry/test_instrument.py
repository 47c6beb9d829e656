"""The instrumentation layer: the span tree DSPy's callbacks describe, without DSPy's callback dispatch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from dspex.lm.pricing import Price, Prices
from dspex.runtime import App
from dspex.settings import Settings
from dspex.telemetry import instrument
from dspex.testing import ScriptedEngine

_KINDS = {
    "on_module_start": "module",
    "on_lm_start": "lm",
    "on_adapter_format_start": "adapter_format",
    "on_adapter_parse_start": "adapter_parse",
    "on_tool_start": "tool",
}


class TreeOfCallbacks(BaseCallback):  # type: ignore[misc]  # DSPy's BaseCallback is untyped
    """The span tree as DSPy's own callbacks describe it: (kind, name, parent index) in start order."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, int | None]] = []
        self.ends = 0
        self._open: dict[str, int] = {}
        self._stack: list[int] = []
        self._lock = threading.Lock()

    def _start(self, kind: str, call_id: str, instance: Any) -> None:
        name = str(
            getattr(instance, "model", None) or getattr(instance, "name", None) or type(instance).__name__
        )
        with self._lock:
            parent = self._stack[-1] if self._stack else None
            self._open[call_id] = len(self.spans)
            self._stack.append(len(self.spans))
            self.spans.append((kind, name, parent))

    def _end(self, call_id: str) -> None:
        with self._lock:
            self._stack.remove(self._open.pop(call_id))
            self.ends += 1

    def __getattribute__(self, name: str) -> Any:
        kind = _KINDS.get(name)
        if kind is not None:
            return lambda call_id, instance, inputs: self._start(kind, call_id, instance)
        if name.startswith("on_") and name.endswith("_end") and name.replace("_end", "_start") in _KINDS:
            return lambda call_id, outputs, exception=None: self._end(call_id)
        return super().__getattribute__(name)


def _spans(record: Any) -> list[dict[str, Any]]:
    assert record is not None
    assert record.trace is not None
    spans: list[dict[str, Any]] = record.trace["spans"]
    return spans


def _tree(record: Any) -> list[tuple[str, str, int | None]]:
    return [(s["kind"], s["name"], s["parent"]) for s in _spans(record)]


def _app(tmp_path: Path, trace: str = "full", **options: Any) -> App:
    """An App recording at ``trace`` (these tests compare whole trees, adapter spans included: ``full``)."""
    settings = Settings.load(home=tmp_path, database_url=f"sqlite:///{tmp_path}/dspex.db", trace=trace)
    return App(settings, **options)


def _add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _react_engine() -> ScriptedEngine:
    return ScriptedEngine(
        {
            "next_thought": ["add them", "done"],
            "next_tool_name": ["_add", "finish"],
            "next_tool_args": [{"a": 2, "b": 3}, {}],
            "answer": "5",
            "reasoning": "added",
        }
    )


@pytest.mark.parametrize(
    ("make", "inputs"),
    [
        (lambda: dspy.ChainOfThought("question -> answer"), {"question": "hi"}),
        (lambda: dspy.ReAct("question -> answer", tools=[_add], max_iters=3), {"question": "2 + 3?"}),
    ],
    ids=["chain_of_thought", "react"],
)
def test_the_span_tree_is_the_one_dspy_callbacks_describe(tmp_path: Path, make: Any, inputs: Any) -> None:
    reference = TreeOfCallbacks()
    with dspy.context(lm=_react_engine().lm("tree"), callbacks=[reference]):  # scripts are used up: one each
        make()(**inputs)
    with _app(tmp_path, lm=_react_engine().lm("tree")) as app:
        result = app.run(make(), inputs)
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    assert _tree(record) == reference.spans
    assert any(kind == "lm" for kind, _, _ in reference.spans)


def test_user_callbacks_still_see_every_event_once(tmp_path: Path) -> None:
    lm = ScriptedEngine({"answer": "HI"}).lm("callbacks")
    seen = TreeOfCallbacks()
    with _app(tmp_path, lm=lm) as app, dspy.context(callbacks=[seen]):
        result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    assert [kind for kind, _, _ in seen.spans] == [
        "module",
        "module",
        "adapter_format",
        "lm",
        "adapter_parse",
    ]
    assert seen.ends == len(seen.spans)  # each start ended once
    assert [kind for kind, _, _ in _tree(record)] == [kind for kind, _, _ in seen.spans]


@pytest.mark.parametrize(
    ("level", "kinds"),
    [
        ("full", ["module", "module", "adapter_format", "lm", "adapter_parse"]),
        ("lean", ["module", "module", "lm"]),
        (None, ["module", "module", "lm"]),  # the default is lean
    ],
)
def test_trace_levels_keep_what_they_say(tmp_path: Path, level: str | None, kinds: list[str]) -> None:
    lm = ScriptedEngine({"answer": "HI"}).lm("levels")
    options = {} if level is None else {"trace": level}
    settings = Settings.load(home=tmp_path, database_url=f"sqlite:///{tmp_path}/dspex.db", **options)
    prices = Prices({"scripted/levels": Price(0.5, 1.5)})
    with App(settings, lm=lm, prices=prices) as app:
        result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    spans = _spans(record)
    assert [s["kind"] for s in spans] == kinds
    assert [s["name"] for s in spans if s["kind"] == "module"] == ["ChainOfThought", "Predict"]
    assert spans[0]["inputs"] == {"question": "hi"}
    assert spans[0]["outputs"]["answer"] == "HI"
    # Every level keeps the LM span whole: messages in, completion out, model, tokens and cost.
    lm_span = next(s for s in spans if s["kind"] == "lm")
    assert spans[lm_span["parent"]]["name"] == "Predict"
    assert lm_span["model"] == "scripted/levels"
    assert record.total_tokens is not None
    assert lm_span["usage"]["total_tokens"] == record.total_tokens > 0
    assert record.cost_usd is not None
    assert lm_span["cost_usd"] == pytest.approx(record.cost_usd)
    assert record.cost_usd > 0
    assert lm_span["inputs"]["messages"][-1]["role"] == "user"
    assert "HI" in lm_span["outputs"][0]


def test_lean_keeps_tool_spans(tmp_path: Path) -> None:
    with _app(tmp_path, trace="lean", lm=_react_engine().lm("tools")) as app:
        result = app.run(dspy.ReAct("question -> answer", tools=[_add], max_iters=3), {"question": "2 + 3?"})
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    spans = _spans(record)
    assert not {s["kind"] for s in spans} & {"adapter_format", "adapter_parse"}
    tools = {s["name"]: s for s in spans if s["kind"] == "tool"}
    assert tools["_add"]["outputs"] == 5
    assert spans[tools["_add"]["parent"]]["name"] == "ReAct"
    assert sum(s["kind"] == "lm" for s in spans) >= 2


def test_trace_off_records_the_run_without_a_span_tree(tmp_path: Path) -> None:
    lm = ScriptedEngine({"answer": "HI"}).lm("off")
    settings = Settings.load(home=tmp_path, database_url=f"sqlite:///{tmp_path}/dspex.db", trace="off")
    with App(settings, lm=lm) as app:
        result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    assert record.trace is None
    assert record.outputs is not None
    assert record.outputs["answer"] == "HI"
    assert record.total_tokens is not None
    assert record.total_tokens > 0
    assert result.usage["scripted/off"]["calls"] == 1


def test_an_app_that_records_nothing_keeps_no_spans_but_still_counts_usage(tmp_path: Path) -> None:
    lm = ScriptedEngine({"answer": "HI"}).lm("quiet")
    with _app(tmp_path, lm=lm, record=False) as app:
        assert app.trace_level == "off"
        result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
    assert result.usage["scripted/quiet"]["calls"] == 1


def test_spans_in_dspy_parallel_threads_join_the_run(tmp_path: Path) -> None:
    class Fan(dspy.Module):  # type: ignore[misc]  # dspy is untyped
        def __init__(self) -> None:
            super().__init__()
            self.qa = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            pairs = [(self.qa, {"question": f"{question} {i}"}) for i in range(3)]
            answers = dspy.Parallel(num_threads=3)(pairs)
            return dspy.Prediction(answer=" ".join(a.answer for a in answers))

    lm = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}).lm("fan")
    with _app(tmp_path, lm=lm) as app:
        result = app.run(Fan(), {"question": "q"})
        app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    spans = _spans(record)
    assert spans[0]["name"] == "Fan"
    predicts = [s for s in spans if s["kind"] == "module" and s["name"] == "Predict"]
    assert len(predicts) == 3
    assert all(s["parent"] == 0 for s in predicts)  # worker threads hang under the run's root span
    lms = [s for s in spans if s["kind"] == "lm"]
    assert len(lms) == 3
    assert all(spans[s["parent"]]["name"] == "Predict" for s in lms)
    assert all(s["end_ms"] is not None for s in spans)


def test_outside_a_run_the_wrapped_entry_points_call_straight_through() -> None:
    instrument.install()
    assert hasattr(dspy.Module.__call__, "__dspex_traced__")
    lm = ScriptedEngine({"answer": "HI"}).lm("outside")
    seen = TreeOfCallbacks()
    with dspy.context(lm=lm, callbacks=[seen]):
        assert instrument.active() is None
        assert dspy.ChainOfThought("question -> answer")(question="hi").answer == "HI"
    assert [kind for kind, _, _ in seen.spans] == [
        "module",
        "module",
        "adapter_format",
        "lm",
        "adapter_parse",
    ]
    instrument.install()  # idempotent: wrapping twice would make two spans per call
    assert not hasattr(dspy.Module.__call__.__dspex_traced__, "__dspex_traced__")


def test_a_failing_module_closes_its_span_with_the_error(tmp_path: Path) -> None:
    class Broken(dspy.Module):  # type: ignore[misc]  # dspy is untyped
        def forward(self, question: str) -> dspy.Prediction:
            raise RuntimeError("no answer today")

    with _app(tmp_path, lm=ScriptedEngine({"answer": "x"}).lm("broken")) as app:
        with pytest.raises(Exception, match="no answer today") as info:
            app.run(Broken(), {"question": "q"})
        app.flush()
        record = app.executions.get(info.value.execution_id)  # type: ignore[attr-defined]
    assert record is not None
    assert record.status == "failed"
    (span,) = _spans(record)
    assert span["error"]["type"] == "RuntimeError"
    assert span["end_ms"] is not None


def test_each_run_uses_the_adapter_configured_around_it(tmp_path: Path) -> None:
    """The run's adapter (resilience's parse fallback and the adapter spans mixed in) is built once per
    configured adapter and reused: a run under another adapter still gets its own."""
    lm = ScriptedEngine({"answer": "HI"}).lm("adapters")
    program = dspy.Predict("question -> answer")
    json_adapter = dspy.JSONAdapter()
    with _app(tmp_path, lm=lm) as app:
        ids = [app.run(program, {"question": "hi"}).execution_id]
        with dspy.context(adapter=json_adapter):
            ids += [app.run(program, {"question": "hi"}).execution_id for _ in range(2)]
        ids.append(app.run(program, {"question": "hi"}).execution_id)
        app.flush()
        records = [app.executions.get(i) for i in ids]
    names = []
    for record in records:
        assert record is not None
        assert record.status == "succeeded"
        names.append(next(s["name"] for s in _spans(record) if s["kind"] == "adapter_format"))
    assert names == ["ChatAdapter", "JSONAdapter", "JSONAdapter", "ChatAdapter"]
    assert json_adapter.__class__ is dspy.JSONAdapter  # the configured adapter itself is left as it was
