"""A pipeline is a dspy.Module: its predictors are found, its state saves and loads, callbacks see every step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from dspex.pipeline import Pipeline, Step, map, parallel, step, when
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine


def _pipeline() -> Pipeline:
    """Predictors in a plain step, parallel branches, a fallback, a map, both when branches and a sub-pipeline."""
    return Pipeline(
        [
            step(dspy.Predict("question -> query"), name="rewrite"),
            parallel(
                step(
                    dspy.Predict("query -> passages: list[str]"),
                    name="search_a",
                    fallback=step(dspy.Predict("query -> passages: list[str]"), name="search_backup"),
                ),
                step(dspy.Predict("query -> passages: list[str]"), name="search_b"),
                merge={"passages": "concat"},
                name="search",
            ),
            map(dspy.Predict("passage -> note"), over="passages", item="passage", into="notes", name="notes"),
            when(
                "hard",
                then=step(dspy.ChainOfThought("question, notes -> answer"), name="deep"),
                otherwise=[step(dspy.Predict("question, notes -> answer"), name="quick")],
                name="route",
            ),
        ],
        name="research",
    )


def test_named_predictors_reach_into_every_construct() -> None:
    names = [name for name, _ in _pipeline().named_predictors()]
    assert names == [
        "steps[0].module",
        "steps[1].branches[0].fallback.module",  # Step.__init__ sets the fallback before ModuleStep its module
        "steps[1].branches[0].module",
        "steps[1].branches[1].module",
        "steps[2].inner.module",
        "steps[3].then.module.predict",
        "steps[3].otherwise.steps[0].module",
    ]


def test_save_and_load_keep_the_demos(tmp_path: Path) -> None:
    trained = _pipeline()
    for i, (_, predictor) in enumerate(trained.named_predictors()):
        predictor.demos = [dspy.Example(question=f"q{i}", answer=f"a{i}")]
    path = tmp_path / "research.json"
    trained.save(str(path))
    saved = json.loads(path.read_text())
    assert saved["steps[1].branches[0].fallback.module"]["demos"] == [{"question": "q1", "answer": "a1"}]

    fresh = _pipeline()
    assert all(not p.demos for _, p in fresh.named_predictors())
    fresh.load(str(path))
    loaded = {name: [dict(d) for d in p.demos] for name, p in fresh.named_predictors()}
    assert loaded == {name: [dict(d) for d in p.demos] for name, p in trained.named_predictors()}
    assert loaded["steps[3].otherwise.steps[0].module"] == [{"question": "q6", "answer": "a6"}]


class StepSpans(BaseCallback):  # type: ignore[misc]  # DSPy's BaseCallback is untyped
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []
        self.modules: dict[str, str] = {}

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if isinstance(instance, Step):
            self.started.append(instance.name)
            self.modules[call_id] = instance.name
        else:
            self.started.append(f"<{type(instance).__name__}>")

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if call_id in self.modules:
            self.ended.append(self.modules[call_id])


def _lm() -> Any:
    return ScriptedEngine(
        {
            "query": "q",
            "passages": lambda inputs: ["p1", "p2"],
            "note": lambda inputs: f"note on {inputs['passage']}",
            "answer": "42",
            "reasoning": "thinking",
        },
    ).lm()


@pytest.mark.parametrize("hard", [True, False])
def test_callbacks_see_one_module_span_per_step(hard: bool) -> None:
    spans = StepSpans()
    with dspy.context(lm=_lm(), callbacks=[spans]):
        result = _pipeline()(question="why?", hard=hard)
    assert result.answer == "42"
    assert result.notes == ["note on p1", "note on p2", "note on p1", "note on p2"]
    steps = [name for name in spans.started if not name.startswith("<")]
    branch = ["deep"] if hard else ["route.otherwise", "quick"]
    expected = [
        "research",
        "rewrite",
        "search",
        "search_a",
        "search_b",
        "notes",
        *["predict"] * 4,
        "route",
        *branch,
    ]
    assert sorted(steps) == sorted(expected)
    assert sorted(spans.ended) == sorted(expected)  # every span closes
    assert steps[:2] == ["research", "rewrite"]
    assert spans.started.count("<Predict>") == 8  # 1 + 2 + 4 notes + 1 answer
    assert spans.started.count("<ChainOfThought>") == (1 if hard else 0)


def test_app_run_records_a_span_per_step(tmp_path: Path) -> None:
    def tidy(answer: str) -> str:
        return answer.strip().lower()

    pipeline = Pipeline(
        [
            parallel(
                step(dspy.Predict("question -> answer"), name="left", outputs={"answer": "left"}),
                step(dspy.Predict("question -> answer"), name="right", outputs={"answer": "right"}),
            ),
            step(lambda left, right: f"{left} {right}", name="join", outputs="answer"),
            step(tidy, outputs="final"),
        ],
        name="qa",
    )
    lm = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}).lm()
    with App(lm=lm) as app:
        result = app.run(pipeline, {"question": "Hi"})
        assert result.outputs == {"left": "HI", "right": "HI", "answer": "HI HI", "final": "hi hi"}
        app.flush()
        record = app.executions.get(result.execution_id)
    spans = record.trace["spans"]
    by_name = {s["name"]: s for s in spans if s["kind"] == "module"}
    assert {"qa", "parallel", "left", "right", "join", "tidy"} <= set(by_name)
    root = by_name["qa"]
    assert root["parent"] is None
    assert (
        by_name["parallel"]["parent"]
        == by_name["join"]["parent"]
        == by_name["tidy"]["parent"]
        == root["index"]
    )
    assert by_name["left"]["parent"] == by_name["right"]["parent"] == by_name["parallel"]["index"]
    lm_spans = [s for s in spans if s["kind"] == "lm"]
    assert len(lm_spans) == 2
    # each LM call nests under its own branch's step (through the Predict span), even though they overlap
    owners = set()
    for lm_span in lm_spans:
        parent = spans[lm_span["parent"]]
        while parent["name"] not in ("left", "right"):
            parent = spans[parent["parent"]]
        owners.add(parent["name"])
    assert owners == {"left", "right"}
    assert all(s["end_ms"] is not None for s in spans)
