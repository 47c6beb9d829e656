from __future__ import annotations

import asyncio
import time
from typing import Any

import dspy
import pytest
from dspy.lm15 import RateLimitError
from dspy.utils.exceptions import LMUnexpectedError

from dspex import ConfigurationError
from dspex.testing._prompt import Field, default_value
from dspex.testing.engine import ScriptedEngine


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter(), dspy.XMLAdapter()])
def test_answers_through_every_adapter(adapter: Any) -> None:
    engine = ScriptedEngine(
        {"answer": lambda inputs: f"{inputs['question']}:{inputs['k'] * 2}", "tags": ["a", "b"]}
    )
    lm = engine.lm()
    # The list rule is one value per call: a list[str] field gets a list value.
    engine.rules["tags"] = [["x", "y"]]
    with dspy.context(lm=lm, adapter=adapter):
        out = dspy.Predict("question, k: int -> answer, tags: list[str]")(question="q", k=21)
    assert out.answer == "q:42"
    assert out.tags == ["x", "y"]
    call = engine.history[-1]
    assert call.prompt.inputs == {"question": "q", "k": 21}
    assert call.prompt.output_names == ("answer", "tags")


def test_reads_multiline_inputs_and_counts_demos() -> None:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    predict = dspy.Predict("question -> answer")
    predict.demos = [dspy.Example(question="a\n\nb", answer="A\n\nB"), dspy.Example(question="c", answer="C")]
    with dspy.context(lm=engine.lm()):
        assert predict(question="line one\n\nline two").answer == "LINE ONE\n\nLINE TWO"
    assert engine.history[-1].prompt.demos == 2


def test_chain_of_thought_gets_default_reasoning() -> None:
    engine = ScriptedEngine({"answer": "42"})
    with dspy.context(lm=engine.lm()):
        out = dspy.ChainOfThought("question -> answer: int")(question="?")
    assert out.answer == 42
    assert out.reasoning == "Let me think step by step."


def test_list_rules_are_consumed_and_running_out_is_an_error() -> None:
    engine = ScriptedEngine({"answer": ["one", "two"]})
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=engine.lm()):
        assert [predict(question="x").answer for _ in range(2)] == ["one", "two"]
        # DSPy wraps engine failures at its LM boundary and keeps ours as the cause.
        with pytest.raises(
            LMUnexpectedError, match="ran out of answers for field 'answer' after 2 calls"
        ) as info:
            predict(question="x")
    assert isinstance(info.value.__cause__, ConfigurationError)


def test_async_calls_overlap() -> None:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"]}, latency=0.2)
    predict = dspy.Predict("question -> answer")

    async def main() -> list[str]:
        with dspy.context(lm=engine.lm()):
            outs = await asyncio.gather(*(predict.acall(question=str(i)) for i in range(5)))
        return [o.answer for o in outs]

    started = time.perf_counter()
    assert asyncio.run(main()) == ["0", "1", "2", "3", "4"]
    # Five 0.2 s calls run concurrently, not one after another (1.0 s).
    assert time.perf_counter() - started < 0.8


def test_streams_in_chunks_through_streamify() -> None:
    text = "a fairly long answer that arrives in several chunks"
    engine = ScriptedEngine({"answer": text}, chunk_size=5)
    program = dspy.streamify(
        dspy.Predict("question -> answer"), stream_listeners=[dspy.streaming.StreamListener("answer")]
    )

    async def main() -> tuple[list[str], Any]:
        chunks: list[str] = []
        final = None
        with dspy.context(lm=engine.lm()):
            async for item in program(question="q"):
                if isinstance(item, dspy.streaming.StreamResponse):
                    chunks.append(item.chunk)
                elif isinstance(item, dspy.Prediction):
                    final = item
        return chunks, final

    chunks, final = asyncio.run(main())
    assert len(chunks) > 3
    assert "".join(chunks).strip() == text
    assert final is not None
    assert final.answer == text


def test_reports_usage_to_dspy() -> None:
    engine = ScriptedEngine({"answer": "a" * 40})
    lm = engine.lm()
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="q")
    usage = lm.history[-1]["usage"]
    assert usage["completion_tokens"] == engine.history[-1].usage.output_tokens > 10
    assert usage["prompt_tokens"] > 50


def test_rule_errors_reach_dspy_retries() -> None:
    attempts = []

    def flaky(inputs: dict[str, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RateLimitError("slow down", retry_after=0.05)
        return "ok"

    engine = ScriptedEngine({"answer": flaky})
    with dspy.context(lm=engine.lm(num_retries=2)):
        assert dspy.Predict("question -> answer")(question="q").answer == "ok"
    assert len(attempts) == 2


def test_free_form_prompts_are_refused() -> None:
    engine = ScriptedEngine()
    with pytest.raises(LMUnexpectedError, match="no DSPy output fields") as info:
        engine.lm()("hello")
    assert isinstance(info.value.__cause__, ConfigurationError)


def test_bad_knobs() -> None:
    with pytest.raises(ConfigurationError, match="latency must be >= 0"):
        ScriptedEngine(latency=-1)
    with pytest.raises(ConfigurationError, match="chunk_size must be >= 1"):
        ScriptedEngine(chunk_size=0)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (Field("x", "str"), ""),
        (Field("x", "int"), 0),
        (Field("x", "list[str]"), []),
        (Field("x", "dict[str, int]"), {}),
        (Field("x", "Literal['a', 'b']"), "a"),
        (Field("next_tool_name", "Literal['search', 'finish']"), "finish"),
        (Field("reasoning", "str"), "Let me think step by step."),
    ],
)
def test_default_values_match_the_type(field: Field, expected: Any) -> None:
    assert default_value(field) == expected
