"""Control flow of DSPex's reasoning patterns on the scripted engine: corrections stop at the limit,
pruning keeps the beam, consensus breaks ties deterministically, and every attempt and node is a span."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspex import ConfigurationError, ExecutionError, Settings, SpecError
from dspex.modules import ToolRegistry, build_module, module_from_spec
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine

# -- self-correcting chain of thought ---------------------------------------------------------------------


def test_corrections_stop_at_the_limit_and_feed_back_the_critique() -> None:
    engine = ScriptedEngine({"answer": ["5", "6", "7", "8"]})
    solver = build_module(
        "self_correcting_cot",
        "question -> answer",
        validator=lambda inputs, pred: (False, f"{pred.answer} is not 4"),
        max_corrections=2,
    )
    with dspy.context(lm=engine.lm()):
        pred = solver(question="2+2?")
    assert engine.calls == 3  # the first attempt and two corrections, never a fourth
    assert (pred.passed, pred.attempts) == (False, 3)
    assert pred.critiques == ["5 is not 4", "6 is not 4", "7 is not 4"]
    corrections = [c.prompt.inputs for c in list(engine.history)[1:]]
    assert [c["critique"] for c in corrections] == ["5 is not 4", "6 is not 4"]
    assert "answer: 5" in corrections[0]["rejected_attempt"]


def test_a_passing_attempt_stops_the_loop_and_scores_pick_the_best() -> None:
    engine = ScriptedEngine({"answer": ["1", "3", "4", "9"]})
    scores = {"1": 0.2, "3": 0.6, "4": 1.0}
    solver = build_module(
        "self_correcting_cot",
        "question -> answer",
        validator=lambda i, p: scores[p.answer],
        max_corrections=5,
    )
    with dspy.context(lm=engine.lm()):
        pred = solver(question="2+2?")
    assert (pred.answer, pred.attempts, pred.passed, pred.score) == ("4", 3, True, 1.0)

    partial = build_module(
        "self_correcting_cot",
        "question -> answer",
        validator=lambda i, p: scores[p.answer],
        max_corrections=1,
    )
    with dspy.context(lm=ScriptedEngine({"answer": ["3", "1"]}).lm()):
        best = partial(question="2+2?")
    assert (best.answer, best.passed, best.score) == ("3", False, 0.6)  # the best failed attempt


def test_lm_critic_and_signature_constraint_validators() -> None:
    engine = ScriptedEngine({"answer": ["5", "4"], "ok": [False, True], "critique": ["off by one", ""]})
    critic = build_module("self_correcting_cot", "question -> answer", validator="critic")
    with dspy.context(lm=engine.lm()):
        pred = critic(question="2+2?")
    assert (pred.answer, pred.attempts, pred.critiques) == ("4", 2, ["off by one"])
    assert [n for n, _ in critic.named_predictors()] == ["solve.predict", "correct.predict", "critic.predict"]

    typed = module_from_spec(
        {
            "module": "self_correcting_cot",
            "signature": "question -> answer",
            "options": {"validator": {"signature": "answer: Literal['yes', 'no']"}, "max_corrections": 1},
        }
    )
    with dspy.context(lm=ScriptedEngine({"answer": ["maybe", "yes"]}).lm()):
        pred = typed(question="Is 4 even?")
    assert (pred.answer, pred.attempts) == ("yes", 2)
    assert "answer" in pred.critiques[0]


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"max_corrections": -1}, "options.max_corrections", "at least 0"),
        ({"max_corrections": "2"}, "options.max_corrections", "expects int"),
        ({"validator": "no_such_check"}, "options.validator", "no_such_check"),
        ({"validator": {"signature": "verdict: bool"}}, "", "does not output"),
        ({"validator": {"rule": "x"}}, "", "signature-constraint"),
    ],
)
def test_bad_self_correcting_options_name_the_field(options: dict[str, Any], path: str, message: str) -> None:
    spec = {"module": "self_correcting_cot", "signature": "question -> answer", "options": options}
    with pytest.raises(SpecError, match=message) as info:
        module_from_spec(spec, registry=ToolRegistry())
    assert (info.value.path or "") == path
    with pytest.raises(ConfigurationError, match="max_corrections"):
        build_module("self_correcting_cot", "q -> a", validator="critic", max_corrections=-3)


def _app(tmp_path: Path, engine: ScriptedEngine) -> App:
    settings = Settings.load(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'dspex.db'}")
    return App(settings, lm=engine.lm("sim"))


def test_every_attempt_is_a_span_and_a_raising_validator_fails_the_run(tmp_path: Path) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: "4" if "critique" in inputs else "5"})
    solver = build_module(
        "self_correcting_cot", "question -> answer", validator=lambda i, p: (p.answer == "4", "recount")
    )
    with _app(tmp_path, engine) as app:
        result = app.run(solver, {"question": "2+2?"})
        assert result.outputs["answer"] == "4"

        def broken(inputs: dict[str, Any], prediction: Any) -> bool:
            raise RuntimeError("validator crashed")

        failing = build_module("self_correcting_cot", "question -> answer", validator=broken)
        with pytest.raises(ExecutionError) as info:
            app.run(failing, {"question": "2+2?"})
        assert app.flush()
        record = app.executions.get(result.execution_id)
        failed = app.executions.get(info.value.execution_id or "")
    assert record is not None
    assert failed is not None
    spans = (record.trace or {})["spans"]
    attempts = [s for s in spans if s["name"].startswith("attempt ")]
    assert [(s["name"], s["attrs"]["passed"]) for s in attempts] == [
        ("attempt 0", False),
        ("attempt 1", True),
    ]
    assert attempts[0]["attrs"]["critique"] == "recount"
    assert all(s["parent"] == 0 for s in attempts)  # under the SelfCorrectingCoT span
    assert failed.status == "failed"
    assert "validator crashed" in (failed.error or {}).get("message", "")


# -- tree of thoughts ------------------------------------------------------------------------------------


def _counting_thoughts() -> Any:
    counter = itertools.count()
    lock = threading.Lock()

    def thought(inputs: dict[str, Any]) -> str:
        with lock:
            return f"t{next(counter)}"

    return thought


def test_pruning_keeps_the_beam_and_returns_the_best_path() -> None:
    engine = ScriptedEngine({"thought": _counting_thoughts(), "answer": lambda i: "+".join(i["path"])})

    # Higher numbered thoughts score higher, except t4 which is best of all.
    def score(inputs: dict[str, Any], path: list[str]) -> float:
        last = int(path[-1][1:])
        return 100.0 if last == 4 else float(last)

    tot = build_module(
        "tree_of_thoughts", "question -> answer", breadth=3, depth=2, beam=2, scorer=score, num_threads=1
    )
    with dspy.context(lm=engine.lm()):
        pred = tot(question="q")
    tree = pred.tree
    assert len(tree) == 1 + 3 + 2 * 3  # the root, breadth at level 1, breadth per kept node at level 2
    level1 = [n for n in tree if n["depth"] == 1]
    assert [n["thought"] for n in level1 if n["kept"]] == ["t1", "t2"]  # the 2 best of t0, t1, t2
    level2 = [n for n in tree if n["depth"] == 2]
    assert {tree[n["parent"]]["thought"] for n in level2} == {"t1", "t2"}  # only kept nodes expanded
    assert sorted(n["thought"] for n in level2 if n["kept"]) == ["t4", "t8"]
    assert pred.path == ["t2", "t4"]
    assert pred.score == 100.0
    assert pred.answer == "t2+t4"
    assert engine.calls == 9 + 1  # 9 proposals, one answer


def test_lm_scorer_parallel_nodes_are_spans_under_the_tree(tmp_path: Path) -> None:
    engine = ScriptedEngine(
        {"thought": _counting_thoughts(), "score": lambda i: float(len(i["path"][-1])), "answer": "done"}
    )
    tot = build_module("tree_of_thoughts", "question -> answer", breadth=2, depth=2, beam=1, num_threads=4)
    with _app(tmp_path, engine) as app:
        result = app.run(tot, {"question": "q"})
        assert app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    assert result.outputs["answer"] == "done"
    spans = (record.trace or {})["spans"]
    nodes = [s for s in spans if s["name"].startswith("node ")]
    assert len(nodes) == 2 + 2
    assert all(s["parent"] == 0 for s in nodes)
    assert all({"depth", "score", "thought"} <= set(s["attrs"]) for s in nodes)
    lms_under_nodes = [s for s in spans if s["kind"] == "lm" and _ancestor(spans, s, "node ")]
    assert len(lms_under_nodes) == 2 * len(nodes)  # each node: one proposal and one LM score
    assert spans[0]["attrs"]["tree"][0]["id"] == 0  # the explored tree on the module's span


def _ancestor(spans: list[dict[str, Any]], span: dict[str, Any], prefix: str) -> bool:
    parent = span["parent"]
    while parent is not None:
        if spans[parent]["name"].startswith(prefix):
            return True
        parent = spans[parent]["parent"]
    return False


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"breadth": 0}, "options.breadth", "at least 1"),
        ({"depth": 0}, "options.depth", "at least 1"),
        ({"beam": -2}, "options.beam", "at least 1"),
        ({"depth": 2.5}, "options.depth", "expects int"),
        ({"scorer": "critic"}, "", "scorer"),
    ],
)
def test_bad_tree_options_name_the_field(options: dict[str, Any], path: str, message: str) -> None:
    spec = {"module": "tree_of_thoughts", "signature": "question -> answer", "options": options}
    with pytest.raises(SpecError, match=message) as info:
        module_from_spec(spec)
    assert (info.value.path or "") == path


# -- consensus -------------------------------------------------------------------------------------------


def test_a_tie_goes_to_the_first_member_and_weights_break_it() -> None:
    majority = build_module("consensus", "question -> answer", modules=["predict", "predict"], num_threads=1)
    with dspy.context(lm=ScriptedEngine({"answer": ["Paris", "Lyon"]}).lm()):
        pred = majority(question="capital?")
    assert (pred.answer, pred.tied, pred.agreement, pred.votes) == (
        "Paris",
        True,
        0.5,
        {"paris": 1.0, "lyon": 1.0},
    )

    weighted = build_module(
        "consensus",
        "question -> answer",
        modules=["predict", "predict", "predict"],
        method="weighted",
        weights=[1.0, 0.5, 0.75],
        num_threads=1,
    )
    with dspy.context(lm=ScriptedEngine({"answer": ["Paris", "Lyon", " lyon "]}).lm()):
        pred = weighted(question="capital?")
    assert (pred.answer, pred.tied, pred.chosen) == ("Lyon", False, 1)
    assert pred.agreement == pytest.approx(1.25 / 2.25)
    weighted.weights = [3.0, 0.5, 0.5]  # the weights are a plain attribute: a variable can set them
    with dspy.context(lm=ScriptedEngine({"answer": ["Paris", "Lyon", "Lyon"]}).lm()):
        assert weighted(question="capital?").answer == "Paris"


def test_judge_picks_among_distinct_candidates_and_a_bad_choice_fails() -> None:
    judge = build_module(
        "consensus", "question -> answer", modules=["predict"] * 3, method="judge", num_threads=1
    )
    engine = ScriptedEngine({"answer": ["4", "5", "4"], "choice": [2, 7, 1]})
    with dspy.context(lm=engine.lm()):
        pred = judge(question="2+2?")
        assert (pred.answer, pred.agreement) == ("5", 1 / 3)
        judged = [c.prompt.inputs for c in engine.history if "candidates" in c.prompt.inputs]
        assert judged[0]["candidates"] == ["4", "5"]
        engine.rules["answer"] = ["4", "5", "4"]
        engine._cursors.pop("answer")
        with pytest.raises(ExecutionError, match="chose 7"):
            judge(question="2+2?")


def test_one_module_on_several_models_and_a_failing_member_propagates() -> None:
    small = ScriptedEngine({"answer": "4"}).lm("small")
    large = ScriptedEngine({"answer": "4"}).lm("large")
    odd = ScriptedEngine({"answer": "5"}).lm("odd")
    vote = build_module("consensus", "question -> answer", lms=[small, odd, large])
    assert [m.lm.model for m in vote.members] == ["scripted/small", "scripted/odd", "scripted/large"]
    assert (vote(question="2+2?").answer, vote(question="2+2?").agreement) == ("4", 2 / 3)

    def fail(inputs: dict[str, Any]) -> str:
        raise ValueError("member down")

    broken = build_module("consensus", "question -> answer", modules=["predict", "predict"])
    with (
        dspy.context(lm=ScriptedEngine({"answer": fail}).lm()),
        pytest.raises(Exception, match="member down"),
    ):
        broken(question="2+2?")


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"modules": ["predict"]}, "", "at least 2 members"),
        ({"modules": ["predict", "predcit"]}, "options.modules[1]", "did you mean 'predict'"),
        ({"modules": ["predict", "predict"], "method": "weighted"}, "", "needs option 'weights'"),
        ({"modules": ["predict", "predict"], "method": "weighted", "weights": [1.0]}, "", "list of 2"),
        ({"modules": ["predict", "predict"], "method": "vote"}, "options.method", "expects"),
        ({"modules": ["predict", "predict"], "field": "score"}, "", "field"),
    ],
)
def test_bad_consensus_options_name_the_field(options: dict[str, Any], path: str, message: str) -> None:
    spec = {"module": "consensus", "signature": "question -> answer", "options": options}
    with pytest.raises(SpecError, match=message) as info:
        module_from_spec(spec)
    assert (info.value.path or "") == path


def test_patterns_are_pipeline_steps() -> None:
    from dspex.pipeline.spec import pipeline_from_spec

    pipeline = pipeline_from_spec(
        """
name: checked
steps:
  - name: vote
    module: consensus
    signature: "question -> answer"
    options: {modules: [predict, chain_of_thought, predict], num_threads: 1}
  - name: explain
    module: tree_of_thoughts
    signature: "answer -> explanation"
    options: {breadth: 2, depth: 1, beam: 1}
"""
    )
    engine = ScriptedEngine(
        {"answer": ["4", "4", "5"], "thought": "t", "score": 0.5, "explanation": "because"}
    )
    with dspy.context(lm=engine.lm()):
        out = pipeline(question="2+2?")
    assert (out.answer, out.explanation) == ("4", "because")


def test_consensus_weights_are_bound_by_variables() -> None:
    from dspex.variables.binding import Bindings, apply, bind

    vote = build_module(
        "consensus",
        "question -> answer",
        modules=["predict", "predict"],
        method="weighted",
        weights=[1.0, 1.0],
        num_threads=1,
    )
    configured = apply(vote, {"trust_second": 2.5}, Bindings([bind.attribute("trust_second", "weights[1]")]))
    assert (vote.weights, configured.weights) == ([1.0, 1.0], [1.0, 2.5])  # a configured copy
    with dspy.context(lm=ScriptedEngine({"answer": ["Paris", "Lyon"]}).lm()):
        assert configured(question="capital?").answer == "Lyon"


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("consensus", {"modules": ["predict", "chain_of_thought"]}),
        ("self_correcting_cot", {"validator": "critic"}),
        ("tree_of_thoughts", {"breadth": 2, "depth": 1, "beam": 1}),
    ],
)
def test_patterns_register_as_versioned_programs(tmp_path: Path, name: str, options: dict[str, Any]) -> None:
    engine = ScriptedEngine({"answer": "4", "thought": "t", "score": 0.5, "ok": True, "critique": ""})
    with _app(tmp_path, engine) as app:
        version = app.programs.register(
            "pattern", {"module": name, "signature": "question -> answer", "options": options}
        )
        assert version.status == "draft"
        assert app.run("pattern", {"question": "2+2"}).outputs["answer"] == "4"
