"""LM tokens as ``Token`` events: a ModuleStep under ``Pipeline.stream()`` runs through ``dspy.streamify``."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from dspex.pipeline import (
    Event,
    Finished,
    Pipeline,
    RetryPolicy,
    StepFinished,
    StepRetried,
    StepStarted,
    Token,
    parallel,
    step,
)
from dspex.testing import SimServer
from dspex.testing.engine import AsyncScriptedEngine, ScriptedEngine

# A hang (a stream that never ends) fails the test after this long instead of blocking the session.
DEADLOCK = 10.0
ANSWER = "The capital of Peru is Lima, on the Pacific coast."


class _CountingAsyncEngine(AsyncScriptedEngine):
    """The scripted engine's async side, counting streamed and whole-response calls."""

    def __init__(self, sync: ScriptedEngine) -> None:
        super().__init__(sync)
        self.streamed = 0
        self.completed = 0
        self.stream_ended = "never started"

    async def complete(self, request: Any) -> Any:
        self.completed += 1
        return await super().complete(request)

    async def stream(self, request: Any) -> Any:
        self.streamed += 1
        self.stream_ended = "running"
        try:
            async for event in super().stream(request):
                yield event
            self.stream_ended = "done"
        except BaseException:  # GeneratorExit or CancelledError: the consumer stopped listening
            self.stream_ended = "stopped"
            raise


def _counting_lm(engine: ScriptedEngine) -> tuple[Any, _CountingAsyncEngine]:
    counting = _CountingAsyncEngine(engine)
    return dspy.LM("scripted/counting", engine=engine, async_engine=counting, cache=False), counting


async def _events(pipeline: Pipeline, lm: Any, **inputs: Any) -> list[Event]:
    async def collect() -> list[Event]:
        with dspy.context(lm=lm):
            return [e async for e in pipeline.stream(**inputs)]

    return await asyncio.wait_for(collect(), DEADLOCK)


def _tokens(events: list[Event], step_name: str, field: str) -> list[str]:
    return [e.chunk for e in events if isinstance(e, Token) and e.step == step_name and e.field == field]


def _index(events: list[Event], kind: type, step_name: str) -> int:
    return next(i for i, e in enumerate(events) if isinstance(e, kind) and e.step == step_name)  # type: ignore[attr-defined]


def _parse(question: str) -> str:
    return question.strip()


async def test_tokens_stream_in_order_between_started_and_finished() -> None:
    engine = ScriptedEngine({"answer": ANSWER}, chunk_size=5)
    lm, counting = _counting_lm(engine)
    pipeline = Pipeline(
        [
            step(_parse, outputs="query"),
            step(dspy.Predict("question -> answer"), name="qa", inputs={"question": "query"}),
        ]
    )
    events = await _events(pipeline, lm, question=" What is the capital of Peru? ")
    chunks = _tokens(events, "qa", "answer")
    assert len(chunks) >= 5
    assert "".join(chunks) == ANSWER
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.result.answer == ANSWER
    token_positions = [i for i, e in enumerate(events) if isinstance(e, Token)]
    assert _index(events, StepStarted, "qa") < min(token_positions)
    assert max(token_positions) < _index(events, StepFinished, "qa")
    # The function step before it has no LM and so no tokens; its events all precede the module's.
    assert _index(events, StepFinished, "_parse") < _index(events, StepStarted, "qa")
    assert (counting.streamed, counting.completed) == (1, 0)


async def test_a_plain_call_streams_nothing_and_returns_the_same_outputs() -> None:
    engine = ScriptedEngine({"answer": ANSWER}, chunk_size=5)
    lm, counting = _counting_lm(engine)
    pipeline = Pipeline([step(dspy.ChainOfThought("question -> answer"), name="cot")])
    with dspy.context(lm=lm):
        plain = await pipeline.acall(question="Peru?")
    assert (counting.streamed, counting.completed) == (0, 1)  # no streamify, no listener
    streamed = await _events(pipeline, lm, question="Peru?")
    assert (counting.streamed, counting.completed) == (1, 1)
    final = streamed[-1]
    assert isinstance(final, Finished)
    assert final.result.toDict() == plain.toDict()


async def test_every_string_output_streams_under_its_state_name() -> None:
    engine = ScriptedEngine(
        {"reasoning": "Lima is on the coast.", "answer": ANSWER, "confidence": 0.9}, chunk_size=3
    )
    pipeline = Pipeline(
        [
            step(
                dspy.ChainOfThought("question -> answer, confidence: float"),
                name="cot",
                outputs={"answer": "draft", "reasoning": "why"},
            ),
            step(
                dspy.ChainOfThought("question -> answer"),
                name="quiet",
                outputs={"reasoning": None, "answer": "other"},
            ),
        ]
    )
    events = await _events(pipeline, engine.lm(), question="Peru?")
    assert "".join(_tokens(events, "cot", "why")) == "Lima is on the coast."
    assert "".join(_tokens(events, "cot", "draft")) == ANSWER
    # A float is not text: DSPy's listener cannot parse it, so it is not streamed; its value still arrives.
    assert {e.field for e in events if isinstance(e, Token) and e.step == "cot"} == {"why", "draft"}
    # A dropped output streams nothing.
    assert {e.field for e in events if isinstance(e, Token) and e.step == "quiet"} == {"other"}
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.result.confidence == 0.9
    assert final.result.draft == ANSWER


async def test_a_response_in_one_chunk_arrives_as_one_token() -> None:
    # DSPy's listener yields nothing when the whole response comes at once (as on a cache hit); the
    # step then emits the field's value as one token so a token-rendering consumer still sees it.
    engine = ScriptedEngine({"answer": ANSWER}, chunk_size=10_000)
    events = await _events(
        Pipeline([step(dspy.Predict("question -> answer"), name="qa")]), engine.lm(), question="?"
    )
    assert _tokens(events, "qa", "answer") == [ANSWER]


class _SyncModule(dspy.Module):  # type: ignore[misc]  # dspy is untyped
    """No native aforward (runs in a worker thread) and returns a dict, not a Prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dict[str, str]:
        return {"answer": self.predict(question=question).answer}


async def test_a_sync_module_returning_a_mapping_streams_from_its_worker_thread() -> None:
    # dspy.streamify alone waits forever for a Prediction from such a module; the step must not.
    engine = ScriptedEngine({"answer": ANSWER}, chunk_size=4)
    pipeline = Pipeline(
        [step(_SyncModule(), name="sync", input_fields=["question"], output_fields=["answer"], timeout=5)]
    )
    events = await _events(pipeline, engine.lm(), question="Peru?")
    assert "".join(_tokens(events, "sync", "answer")) == ANSWER
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.result.answer == ANSWER


async def test_parallel_and_nested_steps_stream_under_their_own_names() -> None:
    engine = ScriptedEngine(
        {"answer": lambda inputs: f"Answer to {inputs['question']} in several chunks."},
        chunk_size=4,
        latency=0.02,
    )
    pipeline = Pipeline(
        [
            parallel(
                step(dspy.Predict("question -> answer"), name="left", outputs={"answer": "a"}),
                [step(dspy.Predict("question -> answer"), name="right", outputs={"answer": "b"})],
            )
        ]
    )
    events = await _events(pipeline, engine.lm(), question="q")
    assert "".join(_tokens(events, "left", "a")) == "Answer to q in several chunks."
    assert "".join(_tokens(events, "right", "b")) == "Answer to q in several chunks."
    for name in ("left", "right"):
        mine = [i for i, e in enumerate(events) if isinstance(e, Token) and e.step == name]
        assert _index(events, StepStarted, name) < min(mine)
        assert max(mine) < _index(events, StepFinished, name)


async def test_a_retried_step_streams_each_attempt_after_its_started_event() -> None:
    calls: list[int] = []

    def answer(inputs: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("flaky backend")
        return ANSWER

    engine = ScriptedEngine({"answer": answer}, chunk_size=6)
    pipeline = Pipeline(
        [
            step(
                dspy.Predict("question -> answer"),
                name="qa",
                retry=RetryPolicy(attempts=2, backoff=0, jitter=0),
            )
        ]
    )
    events = await _events(pipeline, engine.lm(num_retries=0), question="?")
    retried = next(i for i, e in enumerate(events) if isinstance(e, StepRetried))
    second = next(i for i, e in enumerate(events) if isinstance(e, StepStarted) and e.attempt == 2)
    tokens = [i for i, e in enumerate(events) if isinstance(e, Token)]
    assert retried < second < min(tokens)
    assert "".join(_tokens(events, "qa", "answer")) == ANSWER


def _add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_react_streams_only_its_final_answer_and_still_calls_its_tools() -> None:
    engine = ScriptedEngine(
        {
            "next_tool_name": ["_add", "finish"],
            "next_tool_args": [{"a": 2, "b": 3}, {}],
            "answer": lambda inputs: "The sum is 5." if "5" in inputs["trajectory"] else "unknown",
        },
        chunk_size=3,
    )
    pipeline = Pipeline([step(dspy.ReAct("question -> answer", tools=[_add], max_iters=3), name="agent")])
    events = await _events(pipeline, engine.lm(), question="2 + 3?")
    # The loop's thoughts and tool choices are not outputs of the step; only the extracted answer streams.
    assert {e.field for e in events if isinstance(e, Token)} == {"answer"}
    assert "".join(_tokens(events, "agent", "answer")) == "The sum is 5."


class _Spans(BaseCallback):  # type: ignore[misc]  # dspy is untyped
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.started.append(getattr(instance, "name", None) or type(instance).__name__)


async def test_callbacks_see_the_step_and_its_module_when_streaming() -> None:
    engine = ScriptedEngine({"answer": ANSWER}, chunk_size=5)
    pipeline = Pipeline([step(dspy.ChainOfThought("question -> answer"), name="cot")], name="outer")
    spans = _Spans()
    with dspy.context(callbacks=[spans]):
        events = await _events(pipeline, engine.lm(), question="?")
    assert any(isinstance(e, Token) for e in events)
    # The pipeline, the step, the ChainOfThought and its Predict: nothing extra from the streaming wrapper.
    assert spans.started == ["outer", "cot", "ChainOfThought", "Predict"]


async def test_closing_the_stream_mid_tokens_cancels_the_lm_call() -> None:
    engine = ScriptedEngine({"answer": ANSWER * 4}, chunk_size=2, latency=5.0)  # ~50 ms between chunks
    lm, counting = _counting_lm(engine)
    pipeline = Pipeline([step(dspy.Predict("question -> answer"), name="qa")])
    with dspy.context(lm=lm):
        stream = pipeline.stream(question="?")
        first_token = None
        while first_token is None:
            event = await asyncio.wait_for(anext(stream), DEADLOCK)
            first_token = event if isinstance(event, Token) else None
        assert counting.stream_ended == "running"
        await asyncio.wait_for(stream.aclose(), DEADLOCK)
    assert first_token.step == "qa"
    assert counting.stream_ended == "stopped"


@pytest.fixture(scope="module")
def sim() -> Any:
    with SimServer(stream_chunk_chars=3) as server:
        yield server


async def test_tokens_stream_over_http_from_the_simulated_server(sim: Any) -> None:
    sim.reset()
    question = next(ex.question for ex in sim.task.items if ex.kind == "capital")
    pipeline = Pipeline([step(dspy.ChainOfThought("question -> answer"), name="cot")])
    events = await _events(pipeline, sim.lm("sim-large", num_retries=0), question=question)
    final = events[-1]
    assert isinstance(final, Finished)
    assert "".join(_tokens(events, "cot", "answer")) == final.result.answer
    assert "".join(_tokens(events, "cot", "reasoning")) == final.result.reasoning
    assert len(_tokens(events, "cot", "reasoning")) > 3  # really chunked, not one piece
    assert [r.stream for r in sim.requests()] == [True]
    # The same pipeline called plainly makes a non-streaming request and gets the same answer.
    with dspy.context(lm=sim.lm("sim-large", num_retries=0)):
        plain = await pipeline.acall(question=question)
    assert plain.answer == final.result.answer
    assert [r.stream for r in sim.requests()] == [True, False]
