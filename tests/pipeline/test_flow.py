"""Sequences: data by field name with renames, dependency-ordered concurrency, nesting, build-time errors."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError
from dspex.pipeline import Pipeline, step
from dspex.testing.engine import ScriptedEngine

# A deadlock (steps that should overlap but do not) fails the test after this long instead of hanging.
DEADLOCK = 5.0


def _lm() -> Any:
    return ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}).lm()


def test_sequence_renames_inputs_and_outputs() -> None:
    def parse(text: str) -> str:
        return text.strip()

    def shout(draft: str, suffix: str = "!") -> dict[str, str]:
        return {"final": draft + suffix, "length": str(len(draft))}

    pipeline = Pipeline(
        [
            step(parse, outputs="query"),
            step(
                dspy.Predict("question -> answer"),
                name="qa",
                inputs={"question": "query"},
                outputs={"answer": "draft"},
            ),
            step(shout, outputs=["final", "length"]),
        ],
        name="qa",
    )
    assert pipeline.local_inputs == ("text", "suffix")
    assert pipeline.optional_inputs == frozenset({"suffix"})
    assert pipeline.writes == ("query", "draft", "final", "length")
    with dspy.context(lm=_lm()):
        result = pipeline(text="  hi ")
    assert result.toDict() == {"query": "hi", "draft": "HI", "final": "HI!", "length": "2"}
    with dspy.context(lm=_lm()):
        assert pipeline(text="yo", suffix="?").final == "YO?"


def test_outputs_mapped_to_none_are_dropped() -> None:
    engine = ScriptedEngine({"reasoning": "because", "answer": "42"})
    pipeline = Pipeline(
        [step(dspy.ChainOfThought("question -> answer"), name="cot", outputs={"reasoning": None})]
    )
    assert pipeline.writes == ("answer",)
    with dspy.context(lm=engine.lm()):
        result = pipeline(question="?")
    assert result.toDict() == {"answer": "42"}


def test_declared_outputs_select_the_result_fields() -> None:
    pipeline = Pipeline(
        [step(lambda x: x + 1, name="inc", outputs="y"), step(lambda y: y * 2, name="dbl", outputs="z")],
        outputs=["z"],
    )
    assert pipeline(x=1).toDict() == {"z": 4}


async def test_independent_steps_overlap_and_a_dependent_one_waits() -> None:
    a_started, b_started = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def a(x: int) -> int:
        a_started.set()
        await b_started.wait()  # only returns if b runs at the same time
        finished.append("a")
        return x + 1

    async def b(x: int) -> int:
        b_started.set()
        await a_started.wait()
        finished.append("b")
        return x + 2

    async def c(a_out: int, b_out: int) -> int:
        finished.append("c")
        return a_out + b_out

    pipeline = Pipeline([step(a, outputs="a_out"), step(b, outputs="b_out"), step(c, outputs="total")])
    assert pipeline._deps == [set(), set(), {0, 1}]
    result = await asyncio.wait_for(pipeline.acall(x=1), DEADLOCK)
    assert result.total == 5
    assert sorted(finished[:2]) == ["a", "b"]
    assert finished[2] == "c"


async def test_a_step_rewriting_a_field_waits_for_the_earlier_readers() -> None:
    log: list[str] = []

    async def read(value: int) -> int:
        await asyncio.sleep(0.02)
        log.append("read")
        return value

    async def overwrite() -> int:
        log.append("overwrite")
        return 99

    pipeline = Pipeline([step(read, outputs="seen"), step(overwrite, outputs="value")])
    result = await pipeline.acall(value=1)
    assert log == ["read", "overwrite"]
    assert (result.seen, result.value) == (1, 99)


async def test_sequential_runs_independent_steps_in_list_order() -> None:
    log: list[str] = []

    def make(name: str) -> Any:
        async def run(x: int) -> int:
            log.append(f"{name}+")
            await asyncio.sleep(0.01)
            log.append(f"{name}-")
            return x

        run.__name__ = name
        return run

    steps = [step(make(n), outputs=f"{n}_out") for n in ("a", "b", "c")]
    await Pipeline(steps, sequential=True).acall(x=1)
    assert log == ["a+", "a-", "b+", "b-", "c+", "c-"]
    log.clear()
    await Pipeline([step(make(n), outputs=f"{n}_out") for n in ("a", "b", "c")]).acall(x=1)
    assert log[:3] == ["a+", "b+", "c+"]  # the same steps overlap without sequential=True


def test_nested_pipeline_is_a_step_over_the_parent_state() -> None:
    inner = Pipeline(
        [step(lambda query: query + "?", name="ask", outputs="question"), dspy.Predict("question -> answer")],
        name="inner",
    )
    outer = Pipeline(
        [
            step(lambda text: text.lower(), name="lower", outputs="query"),
            inner,
            step(lambda answer: f"<{answer}>", name="wrap", outputs="final"),
        ],
        name="outer",
    )
    assert inner.reads == ("query",)
    assert inner.writes == ("question", "answer")
    assert outer.local_inputs == ("text",)
    with dspy.context(lm=_lm()):
        result = outer(text="HeLLo")
    assert result.toDict() == {
        "query": "hello",
        "question": "hello?",
        "answer": "HELLO?",
        "final": "<HELLO?>",
    }


def test_a_nested_pipeline_can_be_renamed_like_any_step() -> None:
    inner = Pipeline([step(lambda x: x * 10, name="times", outputs="y")], name="inner", outputs=["y"])
    outer = Pipeline([Pipeline([inner], name="wrapped")], name="outer")
    assert outer(x=2).y == 20


def test_calling_without_a_required_input_is_an_error_not_a_silent_skip() -> None:
    pipeline = Pipeline([step(lambda question: question, name="echo", outputs="answer")], name="p")
    with pytest.raises(ConfigurationError, match=r"pipeline 'p' needs input 'question'.*did you mean"):
        pipeline(qustion="typo")
    with pytest.raises(ConfigurationError, match="needs input 'question'"):
        pipeline()


# -- build-time errors -----------------------------------------------------------------------------------


def test_reading_a_field_nobody_writes_is_a_build_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Pipeline(
            [
                step(lambda question: question, name="echo", outputs="answer"),
                step(lambda contxt: contxt, name="use", outputs="out"),
            ],
            name="qa",
            inputs=["question"],
        )
    assert str(info.value) == (
        "pipeline 'qa': step 'use' reads 'contxt', which is neither a pipeline input nor written by an "
        "earlier step; available: answer, question"
    )


def test_reading_a_field_a_later_step_writes_is_a_build_error() -> None:
    with pytest.raises(ConfigurationError, match="step 'first' reads 'late'"):
        Pipeline(
            [
                step(lambda late: late, name="first", outputs="a"),
                step(lambda x: x, name="then", outputs="late"),
            ],
            inputs=["x"],
        )


def test_duplicate_step_names_are_a_build_error() -> None:
    with pytest.raises(ConfigurationError, match=r"several steps named \['qa'\]; give each step a unique"):
        Pipeline(
            [
                step(dspy.Predict("question -> answer"), name="qa"),
                step(dspy.Predict("answer -> critique"), name="qa"),
            ],
        )


def test_functions_must_declare_their_outputs() -> None:
    def parse(text: str) -> str:
        return text

    with pytest.raises(ConfigurationError, match=r"function 'parse' needs its outputs declared"):
        Pipeline([parse])
    with pytest.raises(ConfigurationError, match=r"function step 'parse' must declare what it returns"):
        step(parse)
    with pytest.raises(ConfigurationError, match="must name at least one output"):
        step(parse, outputs=[])


def test_bad_renames_suggest_the_right_name() -> None:
    predict = dspy.Predict("question -> answer")
    with pytest.raises(ConfigurationError) as info:
        step(predict, outputs={"answr": "draft"})
    assert "step 'predict': outputs={'answr': ...} names no output of the step" in str(info.value)
    assert "did you mean 'answer'?" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"inputs=\{'qestion': \.\.\.\}.*did you mean 'question'"):
        step(predict, inputs={"qestion": "query"})
    with pytest.raises(ConfigurationError, match="outputs= renames fields"):
        step(predict, outputs=["answer"])


def test_declared_outputs_must_exist() -> None:
    with pytest.raises(ConfigurationError, match=r"declares outputs \['answr'\].*did you mean 'answer'"):
        Pipeline([step(lambda q: q, name="echo", outputs="answer")], outputs=["answr"])


def test_empty_pipeline_and_bad_steps_are_build_errors() -> None:
    with pytest.raises(ConfigurationError, match="has no steps"):
        Pipeline([])
    with pytest.raises(ConfigurationError, match="got int"):
        Pipeline([42])
    with pytest.raises(ConfigurationError, match="already a step"):
        step(step(lambda x: x, name="s", outputs="y"))
