"""Per-step run options: timeout, retry, fallback, continue_on_error; and cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError, StepError
from dspex.pipeline import (
    Pipeline,
    RetryPolicy,
    StepFailed,
    StepFinished,
    StepRetried,
    parallel,
    step,
)
from dspex.testing.engine import ScriptedEngine

DEADLOCK = 5.0


class Flaky:
    """An async step function that fails its first ``failures`` calls with ``error``.

    (A closure, not an async ``__call__``: FunctionStep tells async functions apart with
    ``inspect.iscoroutinefunction``, which is false for callable objects.)
    """

    def __init__(self, failures: int, error: type[Exception] = ValueError) -> None:
        self.calls = 0

        async def flaky(x: int) -> int:
            self.calls += 1
            if self.calls <= failures:
                raise error(f"failure {self.calls}")
            return x * 10

        self.fn = flaky


def _no_wait(attempts: int, **kwargs: Any) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=0, jitter=0, **kwargs)


# -- timeouts --------------------------------------------------------------------------------------------


async def test_a_step_past_its_timeout_fails_with_a_timeout_error_as_cause() -> None:
    cancelled = asyncio.Event()

    async def hang(x: int) -> int:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return x

    pipeline = Pipeline([step(hang, outputs="y", timeout=0.05)])
    with pytest.raises(StepError, match="step 'hang' failed: TimeoutError: step 'hang' took longer than"):
        await asyncio.wait_for(pipeline.acall(x=1), DEADLOCK)
    assert cancelled.is_set()  # the attempt's work was stopped, not left running


async def test_a_timed_out_attempt_is_retried() -> None:
    calls = 0

    async def slow_then_fast(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        return x + 1

    pipeline = Pipeline([step(slow_then_fast, outputs="y", timeout=0.05, retry=_no_wait(2))])
    events = [e async for e in pipeline.stream(x=1)]
    assert events[-1].result.y == 2
    assert calls == 2
    retried = [e for e in events if isinstance(e, StepRetried)]
    assert [(e.step, e.attempt, e.error["type"]) for e in retried] == [("slow_then_fast", 1, "TimeoutError")]


async def test_the_timeout_applies_to_a_dspy_module_and_a_nested_pipeline() -> None:
    lm = ScriptedEngine({"answer": "late"}, latency=2.0).lm()
    predict = step(dspy.Predict("question -> answer"), name="qa", timeout=0.05)
    with dspy.context(lm=lm), pytest.raises(StepError, match="step 'qa' failed: TimeoutError") as info:
        await asyncio.wait_for(Pipeline([predict]).acall(question="?"), DEADLOCK)
    assert isinstance(info.value.__cause__, TimeoutError)

    inner_cancelled = asyncio.Event()

    async def hang(x: int) -> int:
        try:
            await asyncio.Event().wait()
        finally:
            inner_cancelled.set()
        return x

    inner = Pipeline([step(hang, outputs="y")], name="inner", timeout=0.05)
    with pytest.raises(StepError, match="step 'inner' failed: TimeoutError") as info:
        await asyncio.wait_for(Pipeline([inner], name="outer").acall(x=1), DEADLOCK)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert inner_cancelled.is_set()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="timeout must be > 0 seconds, got 0"):
        step(lambda x: x, name="s", outputs="y", timeout=0)


# -- retries ---------------------------------------------------------------------------------------------


async def test_retries_until_success_within_the_attempts() -> None:
    flaky = Flaky(failures=2)
    result = await Pipeline([step(flaky.fn, outputs="y", retry=_no_wait(3))]).acall(x=4)
    assert result.y == 40
    assert flaky.calls == 3


async def test_gives_up_after_the_last_attempt_with_the_last_error() -> None:
    flaky = Flaky(failures=5)
    with pytest.raises(StepError, match="step 'flaky' failed: ValueError: failure 3") as info:
        await Pipeline([step(flaky.fn, outputs="y", retry=_no_wait(3))]).acall(x=4)
    assert flaky.calls == 3
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.step == "flaky"


async def test_retry_on_restricts_which_errors_are_retried() -> None:
    not_listed = Flaky(failures=1, error=TypeError)
    with pytest.raises(StepError, match="TypeError: failure 1"):
        await Pipeline([step(not_listed.fn, outputs="y", retry=_no_wait(3, retry_on=(ValueError,)))]).acall(
            x=1
        )
    assert not_listed.calls == 1

    listed = Flaky(failures=1, error=KeyError)
    policy = _no_wait(3, retry_on=(LookupError,))  # subclasses count
    assert (await Pipeline([step(listed.fn, outputs="y", retry=policy)]).acall(x=1)).y == 10
    assert listed.calls == 2


async def test_backoff_grows_exponentially_without_jitter() -> None:
    flaky = Flaky(failures=2)
    policy = RetryPolicy(attempts=3, backoff=0.05, multiplier=3, jitter=0)
    pipeline = Pipeline([step(flaky.fn, outputs="y", retry=policy)])
    started = time.perf_counter()
    events = [e async for e in pipeline.stream(x=1)]
    elapsed = time.perf_counter() - started
    waits = [e.wait_s for e in events if isinstance(e, StepRetried)]
    assert waits == pytest.approx([0.05, 0.15])
    assert elapsed >= 0.19  # it really waited (a loose lower bound only: the machine may be slow)


async def test_backoff_is_capped_and_jitter_adds_at_most_its_bound() -> None:
    flaky = Flaky(failures=4)
    policy = RetryPolicy(attempts=5, backoff=0.01, multiplier=10, max_backoff=0.02, jitter=0.01)
    events = [e async for e in Pipeline([step(flaky.fn, outputs="y", retry=policy)]).stream(x=1)]
    waits = [e.wait_s for e in events if isinstance(e, StepRetried)]
    assert len(waits) == 4
    assert 0.01 <= waits[0] <= 0.02
    assert all(0.02 <= w <= 0.03 for w in waits[1:])


def test_retry_policy_validation() -> None:
    with pytest.raises(ConfigurationError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigurationError, match="jitter must be >= 0 seconds"):
        RetryPolicy(jitter=-1)
    with pytest.raises(ConfigurationError, match="multiplier must be >= 1"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ConfigurationError, match="retry_on must be a non-empty tuple"):
        RetryPolicy(retry_on=())


# -- fallbacks -------------------------------------------------------------------------------------------


async def test_a_fallback_runs_when_the_step_gives_up_and_writes_the_same_fields() -> None:
    flaky = Flaky(failures=10)

    async def cached(x: int) -> int:
        return -x

    pipeline = Pipeline(
        [
            step(flaky.fn, outputs="y", retry=_no_wait(2), fallback=step(cached, outputs="y")),
            step(lambda y: y + 1, name="after", outputs="z"),
        ]
    )
    events = [e async for e in pipeline.stream(x=3)]
    assert events[-1].result.toDict() == {"y": -3, "z": -2}
    assert flaky.calls == 2
    failed = next(e for e in events if isinstance(e, StepFailed))
    assert (failed.step, failed.handled, failed.error["message"]) == ("flaky", True, "failure 2")
    finished = [e for e in events if isinstance(e, StepFinished)]
    assert [(e.step, e.fallback) for e in finished] == [("cached", False), ("flaky", True), ("after", False)]


async def test_a_fallback_module_step_with_renamed_outputs() -> None:
    def broken(question: str) -> str:
        raise RuntimeError("primary down")

    lm = ScriptedEngine({"answer": "from backup"}).lm()
    backup = step(dspy.Predict("question -> answer"), name="backup", outputs={"answer": "draft"})
    pipeline = Pipeline([step(broken, outputs="draft", fallback=backup)])
    with dspy.context(lm=lm):
        assert (await pipeline.acall(question="?")).draft == "from backup"


def test_a_fallback_writing_other_fields_is_a_build_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        step(lambda x: x, name="main", outputs="y", fallback=step(lambda x: x, name="fb", outputs="z"))
    assert str(info.value) == (
        "step 'main': its fallback 'fb' writes ['z'], which the step does not; a fallback must produce the "
        "same fields (rename with outputs={...})"
    )


async def test_a_failing_fallback_fails_the_step() -> None:
    async def broken(x: int) -> int:
        raise ValueError("fallback down too")

    pipeline = Pipeline([step(Flaky(9).fn, outputs="y", fallback=step(broken, outputs="y"))])
    with pytest.raises(StepError, match="step 'broken' failed: ValueError: fallback down too"):
        await pipeline.acall(x=1)


# -- continue_on_error -----------------------------------------------------------------------------------


async def test_continue_on_error_returns_partial_results_with_the_step_errors() -> None:
    async def fetch(query: str) -> list[str]:
        raise ConnectionError("search is down")

    pipeline = Pipeline(
        [
            step(lambda query: query.upper(), name="title", outputs="title"),
            step(fetch, outputs="passages", continue_on_error=True),
            step(lambda passages: len(passages), name="count", outputs="n"),
            step(lambda n, title: f"{title}:{n}", name="report", outputs="report"),
        ],
        name="partial",
    )
    result = await pipeline.acall(query="q")
    assert sorted(result.keys()) == ["step_errors", "title"]
    assert result.title == "Q"
    assert result.step_errors == {
        "fetch": {"type": "ConnectionError", "message": "search is down"},
        "count": {
            "type": "Skipped",
            "code": "skipped",
            "message": "not run: fields ['passages'] were not produced",
        },
        "report": {
            "type": "Skipped",
            "code": "skipped",
            "message": "not run: fields ['n'] were not produced",
        },
    }


async def test_continue_on_error_in_a_nested_pipeline_reaches_the_top_result() -> None:
    async def broken(x: int) -> int:
        raise ValueError("nope")

    inner = Pipeline([step(broken, outputs="y", continue_on_error=True)], name="inner")
    outer = Pipeline([inner, step(lambda x: x, name="echo", outputs="same")], name="outer")
    result = await outer.acall(x=1)
    assert sorted(result.keys()) == ["same", "step_errors"]
    assert result.step_errors == {"broken": {"type": "ValueError", "message": "nope"}}


async def test_a_step_error_without_continue_on_error_raises_and_keeps_the_cause() -> None:
    async def broken(x: int) -> int:
        raise KeyError("missing")

    inner = Pipeline([step(broken, outputs="y")], name="inner")
    with pytest.raises(StepError) as info:
        await Pipeline([inner], name="outer").acall(x=1)
    assert info.value.step == "broken"  # the innermost step, not the nested pipeline
    assert info.value.code == "step_error"


# -- cancellation ----------------------------------------------------------------------------------------


async def test_cancelling_acall_stops_the_work_in_flight_and_nothing_runs_after() -> None:
    started = [asyncio.Event(), asyncio.Event()]
    stopped = [asyncio.Event(), asyncio.Event()]
    ran_after: list[str] = []

    def hanging(i: int) -> Any:
        async def run(x: int) -> int:
            started[i].set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped[i].set()
            return x

        run.__name__ = f"hang{i}"
        return step(run, outputs=f"out{i}")

    async def after(out0: int) -> int:
        ran_after.append("after")
        return out0

    pipeline = Pipeline(
        [
            parallel(hanging(0), hanging(1)),
            step(after, outputs="final"),
            step(lambda out1: ran_after.append("sync") or 1, name="sync_after", outputs="z"),
        ]
    )
    task = asyncio.ensure_future(pipeline.acall(x=1))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), DEADLOCK)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(e.is_set() for e in stopped)
    for _ in range(5):  # give anything left over a chance to run
        await asyncio.sleep(0)
    assert ran_after == []


async def test_cancelling_during_a_retry_backoff_stops_retrying() -> None:
    flaky = Flaky(failures=10)
    retried = asyncio.Event()
    pipeline = Pipeline([step(flaky.fn, outputs="y", retry=RetryPolicy(attempts=5, backoff=30, jitter=0))])

    async def consume() -> None:
        async for event in pipeline.stream(x=1):
            if isinstance(event, StepRetried):
                retried.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(retried.wait(), DEADLOCK)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flaky.calls == 1
