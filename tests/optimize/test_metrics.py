"""Metrics: exact match, F1, DSPy-style callables and the LM judge, alone and inside evaluations."""

from __future__ import annotations

import logging
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError
from dspex.optimize import Evaluator, LMJudge, Metric, Score, as_metric, exact_match, f1, lm_judge
from dspex.testing import ScriptedEngine


def ex(**fields: Any) -> dspy.Example:
    return dspy.Example(**fields).with_inputs("question")


def test_exact_match_normalises_like_dspy() -> None:
    gold = ex(question="?", answer="The Eiffel Tower")
    assert exact_match(gold, dspy.Prediction(answer="eiffel tower!")) == 1.0
    assert exact_match(gold, dspy.Prediction(answer="Eiffel")) == 0.0
    assert (
        exact_match(ex(question="?", answer=["Paris", "Lutetia"]), dspy.Prediction(answer="lutetia")) == 1.0
    )
    # Non-string values compare by their text (an int label against a string answer).
    assert exact_match(ex(question="?", answer=4), dspy.Prediction(answer="4")) == 1.0


def test_exact_match_on_another_field_and_its_errors() -> None:
    metric = exact_match(field="city")
    assert isinstance(metric, Metric)
    assert metric.name == "exact_match:city"
    assert metric(ex(question="?", city="Rome"), dspy.Prediction(city="rome")) == 1.0
    with pytest.raises(ConfigurationError, match=r"no field 'city' \(it has: answer\)"):
        metric(ex(question="?", city="Rome"), dspy.Prediction(answer="Rome"))
    with pytest.raises(ConfigurationError, match="no label 'city'"):
        metric(ex(question="?"), dspy.Prediction(city="Rome"))
    with pytest.raises(ConfigurationError, match="takes"):
        exact_match(ex(question="?"))


def test_f1_scores_token_overlap() -> None:
    gold = ex(question="?", answer="Eiffel Tower")
    assert f1(gold, dspy.Prediction(answer="the Eiffel Tower, Paris")) == pytest.approx(0.8)
    assert f1(gold, dspy.Prediction(answer="Louvre")) == 0.0
    assert f1(gold, dspy.Prediction(answer="eiffel tower")) == 1.0
    assert f1(
        ex(question="?", answer=["x y", "Eiffel"]), dspy.Prediction(answer="Eiffel Tower")
    ) == pytest.approx(2 / 3)
    assert f1(field="short").name == "f1:short"


def test_callables_with_dspy_signatures_become_metrics() -> None:
    example, prediction = ex(question="?", answer="4"), dspy.Prediction(answer="4")
    two = as_metric(lambda e, p: p.answer == e.answer, name="two")
    assert two(example, prediction) == 1.0

    seen: list[Any] = []

    def three(example: Any, pred: Any, trace: Any) -> int:  # trace required, as some DSPy metrics do
        seen.append(trace)
        return 0

    assert as_metric(three).name == "three"
    assert as_metric(three)(example, prediction) == 0.0
    assert seen == [None]

    def gepa(example: Any, pred: Any, trace: Any = None) -> dspy.Prediction:
        return dspy.Prediction(score=0.25, feedback="too short")

    assert as_metric(gepa).score_sync(example, prediction) == Score(0.25, "too short")


async def test_async_callables_are_awaited_and_bad_returns_are_explained() -> None:
    async def judge(example: Any, pred: Any) -> float:
        return 0.5

    metric = as_metric(judge)
    assert metric.is_async
    assert await metric.ascore(ex(question="?"), dspy.Prediction(answer="x")) == Score(0.5)
    with pytest.raises(ConfigurationError, match="is async"):
        metric(ex(question="?"), dspy.Prediction(answer="x"))
    with pytest.raises(ConfigurationError, match=r"metric 'broken' returned 'yes' \(str\)"):
        as_metric(lambda e, p: "yes", name="broken")(ex(question="?"), dspy.Prediction())
    with pytest.raises(ConfigurationError, match="returned nan"):
        as_metric(lambda e, p: float("nan"), name="nan")(ex(question="?"), dspy.Prediction())


def judge_engine() -> ScriptedEngine:
    return ScriptedEngine(
        {
            "verdict": lambda inputs: inputs["answer"].lower() == inputs["gold"].lower(),
            "reason": lambda inputs: f"compared {inputs['answer']!r} with {inputs['gold']!r}",
        }
    )


def test_lm_judge_asks_its_lm_and_reads_the_verdict() -> None:
    engine = judge_engine()
    judge = lm_judge("names the same city as the gold answer", lm=engine.lm())
    assert isinstance(judge, LMJudge)
    example = ex(question="Capital of Peru?", answer="Lima")
    assert judge(example, dspy.Prediction(answer="lima")) == 1.0
    assert judge.score_sync(example, dspy.Prediction(answer="Cusco")) == Score(
        0.0, "compared 'Cusco' with 'Lima'"
    )
    assert engine.calls == 2
    prompt = engine.history[-1].prompt
    assert prompt.inputs["question"] == "Capital of Peru?"
    assert "names the same city" in engine.history[-1].prompt.instructions
    with pytest.raises(ConfigurationError, match="needs criteria"):
        lm_judge("  ")


def test_lm_judge_in_an_evaluation_records_its_reasons() -> None:
    judge_lm = judge_engine()
    program_lm = ScriptedEngine({"answer": lambda inputs: "Lima" if "Peru" in inputs["question"] else "?"})
    devset = [
        ex(question="Capital of Peru?", answer="Lima"),
        ex(question="Capital of Chile?", answer="Santiago"),
    ]
    evaluator = Evaluator(
        {"em": exact_match, "judge": lm_judge("same city", lm=judge_lm.lm())}, primary="judge"
    )
    result = evaluator.run(dspy.Predict("question -> answer"), devset, lm=program_lm.lm())
    assert result.primary == "judge"
    assert result.scores == {"em": 0.5, "judge": 0.5}
    assert [r.feedback["judge"] for r in result.records] == [
        "compared 'Lima' with 'Lima'",
        "compared '?' with 'Santiago'",
    ]
    assert judge_lm.calls == 2
    assert program_lm.calls == 2
    assert result.lm_calls == 4  # judge calls count as this evaluation's LM calls


def test_our_metrics_work_inside_dspy_evaluate(caplog: pytest.LogCaptureFixture) -> None:
    engine = ScriptedEngine({"answer": "Paris"})
    devset = [
        ex(question="Capital of France?", answer="paris"),
        ex(question="Capital of Peru?", answer="Lima"),
    ]
    with caplog.at_level(logging.WARNING), dspy.context(lm=engine.lm()):
        result = dspy.Evaluate(devset=devset, metric=exact_match, num_threads=2)(
            dspy.Predict("question -> answer")
        )
    assert result.score == 50.0
