"""``stream()`` events in order, a failing stream, closing a stream early, and sync calls from async code."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import dspy
import pytest

from dspex.errors import StepError
from dspex.pipeline import (
    Finished,
    Pipeline,
    RetryPolicy,
    StepFailed,
    StepFinished,
    StepRetried,
    StepSkipped,
    StepStarted,
    step,
)
from dspex.testing.engine import ScriptedEngine

DEADLOCK = 5.0


def _shape(event: Any) -> tuple[Any, ...]:
    """An event without its timings, for comparing sequences."""
    if isinstance(event, StepStarted):
        return ("started", event.step, event.attempt)
    if isinstance(event, StepRetried):
        return ("retried", event.step, event.attempt, event.error["message"], event.wait_s)
    if isinstance(event, StepFailed):
        return ("failed", event.step, event.error["message"], event.handled)
    if isinstance(event, StepFinished):
        return ("finished", event.step, event.fields, event.fallback)
    if isinstance(event, StepSkipped):
        return ("skipped", event.step, event.missing)
    assert isinstance(event, Finished)
    return ("done", sorted(event.result.keys()), sorted(event.errors))


async def test_stream_yields_every_event_in_order() -> None:
    calls = 0

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first try")
        return x + 1

    async def broken(y: int) -> int:
        raise RuntimeError("down")

    pipeline = Pipeline(
        [
            step(flaky, outputs="y", retry=RetryPolicy(attempts=2, backoff=0, jitter=0)),
            step(broken, outputs="z", continue_on_error=True),
            step(lambda z: z, name="uses_z", outputs="w"),
        ],
        sequential=True,
    )
    events = [e async for e in pipeline.stream(x=1)]
    assert [_shape(e) for e in events] == [
        ("started", "flaky", 1),
        ("retried", "flaky", 1, "first try", 0.0),
        ("started", "flaky", 2),
        ("finished", "flaky", ("y",), False),
        ("started", "broken", 1),
        ("failed", "broken", "down", True),
        ("skipped", "uses_z", ("z",)),
        ("done", ["step_errors", "y"], ["broken", "uses_z"]),
    ]
    assert events[-1].result.y == 2
    assert events[-1].errors["uses_z"]["code"] == "skipped"


async def test_nested_steps_emit_inside_their_parent() -> None:
    inner = Pipeline([step(lambda x: x + 1, name="inc", outputs="y")], name="inner")
    outer = Pipeline([inner, step(lambda y: y * 2, name="dbl", outputs="z")], name="outer")
    shapes = [_shape(e) for e in [e async for e in outer.stream(x=1)]]
    assert shapes == [
        ("started", "inner", 1),
        ("started", "inc", 1),
        ("finished", "inc", ("y",), False),
        ("finished", "inner", ("y",), False),
        ("started", "dbl", 1),
        ("finished", "dbl", ("z",), False),
        ("done", ["y", "z"], []),
    ]


async def test_a_failing_stream_raises_step_error_after_its_failed_event() -> None:
    async def broken(x: int) -> int:
        raise ValueError("boom")

    seen: list[Any] = []
    pipeline = Pipeline([step(broken, outputs="y")])

    async def consume() -> None:
        async for event in pipeline.stream(x=1):
            seen.append(event)

    with pytest.raises(StepError, match="step 'broken' failed: ValueError: boom"):
        await consume()
    assert [_shape(e) for e in seen] == [("started", "broken", 1), ("failed", "broken", "boom", False)]


async def test_closing_a_stream_early_cancels_the_run() -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def hang(x: int) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return x

    stream = Pipeline([step(hang, outputs="y")]).stream(x=1)
    first = await asyncio.wait_for(anext(stream), DEADLOCK)
    assert first == StepStarted("hang", 1)
    await asyncio.wait_for(started.wait(), DEADLOCK)
    await stream.aclose()
    assert stopped.is_set()


def test_events_from_a_pipeline_run_synchronously_in_a_worker_thread() -> None:
    # A sync DSPy module wrapping a pipeline runs in a worker thread and emits from there. asyncio.Queue is
    # not thread-safe: in debug mode a put from another thread raises and the consumer waits forever, so
    # the run happens on its own thread, joined with a deadline.
    inner = Pipeline([step(lambda x: x + 1, name="inc", outputs="y")], name="inner")

    class Wrapper(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: int) -> Any:
            return self.inner(x=x)

    outer = Pipeline(
        [
            step(Wrapper(), name="wrap", input_fields=["x"], output_fields=["y"]),
            step(lambda y: y * 2, name="dbl", outputs="z"),
        ],
    )
    events: list[Any] = []

    async def collect() -> None:
        asyncio.get_running_loop().set_debug(True)
        events.extend([e async for e in outer.stream(x=1)])

    runner = threading.Thread(target=asyncio.run, args=(collect(),), daemon=True)
    runner.start()
    runner.join(DEADLOCK)
    assert not runner.is_alive(), "the stream hung"
    assert [_shape(e) for e in events] == [
        ("started", "wrap", 1),
        ("started", "inc", 1),
        ("finished", "inc", ("y",), False),
        ("finished", "wrap", ("y",), False),
        ("started", "dbl", 1),
        ("finished", "dbl", ("z",), False),
        ("done", ["y", "z"], []),
    ]


# -- sync calls --------------------------------------------------------------------------------------------

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


async def test_a_sync_call_inside_a_running_loop_runs_on_a_worker_thread_with_this_context() -> None:
    seen: dict[str, str] = {}

    async def probe(answer: str) -> str:
        seen["thread"] = threading.current_thread().name
        seen["marker"] = _marker.get()
        return answer + "!"

    lm = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}).lm()
    pipeline = Pipeline([dspy.Predict("question -> answer"), step(probe, outputs="final")])
    _marker.set("from the caller")
    with dspy.context(lm=lm):  # dspy.context applies on the worker thread too
        result = pipeline(question="hi")  # would deadlock if it blocked this loop waiting on itself
    assert result.final == "HI!"
    assert seen["thread"].startswith("dspex-pipeline")
    assert seen["marker"] == "from the caller"


def test_a_sync_call_without_a_loop_runs_on_a_fresh_loop_in_this_thread() -> None:
    seen: list[str] = []

    async def probe(x: int) -> int:
        seen.append(threading.current_thread().name)
        return x + 1

    assert Pipeline([step(probe, outputs="y")])(x=1).y == 2
    assert seen == [threading.current_thread().name]
