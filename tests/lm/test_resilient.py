"""Resilience on the real DSPy LM path: runs through App against simulated OpenAI-compatible servers.

Each test starts its own :class:`SimServer` (one per model endpoint), so counts of what every endpoint
received are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError, DeadlineExceeded, ExecutionError, LMError, SpecError
from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing import SimServer

QA = "question -> answer"


@pytest.fixture
def primary() -> Iterator[SimServer]:
    with SimServer(latency_scale=0, retry_after=0.05) as sim:
        yield sim


@pytest.fixture
def backup() -> Iterator[SimServer]:
    with SimServer(latency_scale=0) as sim:
        yield sim


def _app(primary: SimServer, backup: SimServer | None = None, **resilience: Any) -> App:
    models = {}
    if backup is not None:
        models["backup"] = {"model": "openai/sim-medium", "api_base": backup.url, "api_key": "sim-key"}
    settings = Settings.load(
        lm="openai/sim-small",
        api_base=primary.url,
        api_key="sim-key",
        lm_cache=False,
        models=models,
        resilience=resilience,
    )
    return App(settings)


def _lm_spans(app: App, execution_id: str) -> list[dict[str, Any]]:
    app.flush()
    record = app.executions.get(execution_id)
    assert record is not None
    return [s for s in record.trace["spans"] if s["kind"] == "lm"]


def _record(app: App, execution_id: str) -> Any:
    app.flush()
    record = app.executions.get(execution_id)
    assert record is not None
    return record


def _failed_id(exc: BaseException) -> str:
    execution_id = getattr(exc, "execution_id", None)
    assert isinstance(execution_id, str)
    return execution_id


def test_a_429_is_retried_after_its_retry_after_and_the_wait_is_a_span(primary: SimServer) -> None:
    primary.configure(fail_first=[429])
    with _app(primary) as app:
        result = app.run(dspy.Predict(QA), {"question": "What is the capital of Peru?"})
        spans = _lm_spans(app, result.execution_id)
        record = _record(app, result.execution_id)
    assert primary.stats().statuses == {429: 1, 200: 1}
    (lm,) = spans
    tried = lm["attrs"]["resilience"]["tried"]
    assert [t.get("cause", "ok") if not t.get("ok") else "ok" for t in tried] == ["rate_limit", "ok"]
    assert lm["model"] == "openai/sim-small"
    waits = [s for s in record.trace["spans"] if s["kind"] == "wait"]
    assert [w["name"] for w in waits] == ["backoff"]
    assert waits[0]["end_ms"] - waits[0]["start_ms"] >= 45  # Retry-After: 0.05 s, honoured
    assert waits[0]["parent"] == lm["index"]


def test_a_dead_primary_falls_back_and_usage_is_counted_under_the_model_that_served(
    primary: SimServer, backup: SimServer
) -> None:
    primary.configure(error_rate=1.0)
    with _app(
        primary,
        backup,
        retries=1,
        backoff_base_s=0.01,
        models={"openai/sim-small": {"fallbacks": ["backup"]}},
    ) as app:
        result = app.run(dspy.Predict(QA), {"question": "What is the capital of Peru?"})
        (lm,) = _lm_spans(app, result.execution_id)
        record = _record(app, result.execution_id)
    assert primary.stats().statuses == {500: 2}  # the call and its one retry
    assert backup.stats().statuses == {200: 1}
    assert lm["model"] == "openai/sim-medium"
    info = lm["attrs"]["resilience"]
    assert info["served_by"] == "openai/sim-medium"
    assert info["fallback"] == 1
    assert [(t["model"], t.get("cause")) for t in info["tried"][:2]] == [
        ("openai/sim-small", "server"),
        ("openai/sim-small", "server"),
    ]
    assert set(record.usage) == {"openai/sim-medium"}
    assert record.usage["openai/sim-medium"]["calls"] == 1
    assert lm["usage"]["total_tokens"] > 0


def test_an_open_breaker_sends_calls_straight_to_the_fallback(primary: SimServer, backup: SimServer) -> None:
    primary.configure(error_rate=1.0)
    breaker = {"failure_rate": 0.5, "min_calls": 4, "window_s": 60, "cooldown_s": 60}
    with _app(
        primary, backup, retries=0, breaker=breaker, models={"openai/sim-small": {"fallbacks": ["backup"]}}
    ) as app:
        for i in range(10):
            app.run(dspy.Predict(QA), {"question": f"q{i}"})
        states = {b["endpoint"]: b for b in app.resilience.status()["breakers"]}
        result = app.run(dspy.Predict(QA), {"question": "last"})
        (lm,) = _lm_spans(app, result.execution_id)
    assert primary.stats().statuses == {500: 4}  # the four that opened it; then none
    assert backup.stats().statuses == {200: 11}
    state = states[f"openai/sim-small@{primary.url}"]
    assert state["state"] == "open"
    assert lm["attrs"]["resilience"]["tried"][0]["skipped"] == "breaker_open"


def test_an_open_breaker_without_a_fallback_fails_fast_with_retry_after(primary: SimServer) -> None:
    primary.configure(error_rate=1.0)
    breaker = {"failure_rate": 0.5, "min_calls": 2, "cooldown_s": 30}
    with _app(primary, retries=0, breaker=breaker) as app:
        for _ in range(2):
            with pytest.raises(LMError):
                app.run(dspy.Predict(QA), {"question": "q"})
        t0 = time.perf_counter()
        with pytest.raises(LMError) as caught:
            app.run(dspy.Predict(QA), {"question": "q"})
        took = time.perf_counter() - t0
        record = _record(app, _failed_id(caught.value))
    assert caught.value.code == "breaker_open"
    assert caught.value.retry_after is not None
    assert 25 < caught.value.retry_after <= 30
    assert took < 0.5
    assert primary.stats().statuses == {500: 2}
    assert record.status == "failed"
    assert record.error["code"] == "breaker_open"


def test_a_client_error_is_neither_retried_nor_sent_to_the_fallback(
    primary: SimServer, backup: SimServer
) -> None:
    primary.configure(fail_first=[400])
    with _app(primary, backup, models={"openai/sim-small": {"fallbacks": ["backup"]}}) as app:
        with pytest.raises(LMError) as caught:
            app.run(dspy.Predict(QA), {"question": "q"})
        record = _record(app, _failed_id(caught.value))
    assert primary.stats().statuses == {400: 1}
    assert backup.stats().statuses == {}
    assert record.error["code"] == "lm_error"
    assert record.error["retryable"] is False


def test_the_retry_budget_stops_a_storm_of_retries(primary: SimServer) -> None:
    primary.configure(error_rate=1.0)
    breaker = {"min_calls": 1000}  # keep the breaker out of it
    with _app(
        primary, retries=5, backoff_base_s=0.001, retry_budget=0.0, retry_budget_min=2, breaker=breaker
    ) as app:
        for _ in range(4):
            with pytest.raises(LMError):
                app.run(dspy.Predict(QA), {"question": "q"})
        budgets = app.resilience.status()["budgets"]
    # 4 calls, and 2 retries in all (the budget's minimum), not 4 x 5
    assert primary.stats().statuses == {500: 6}
    assert budgets["openai/sim-small"]["retries_last_min"] == 2


def test_a_program_chain_overrides_the_model_chain(primary: SimServer, backup: SimServer) -> None:
    primary.configure(error_rate=1.0)
    with _app(primary, backup, retries=0, programs={"qa": {"fallbacks": ["backup"]}}) as app:
        app.programs.register("qa", {"module": "predict", "signature": QA})
        result = app.run("qa", {"question": "q"})
        (lm,) = _lm_spans(app, result.execution_id)
        with pytest.raises(LMError):  # the same program object, unnamed: no chain
            app.run(dspy.Predict(QA), {"question": "q"})
    assert lm["model"] == "openai/sim-medium"


def test_an_unknown_fallback_is_refused_at_start_naming_the_configured_models(primary: SimServer) -> None:
    with pytest.raises(
        ConfigurationError, match=r"resilience.models.openai/sim-small.fallbacks names 'bakup'"
    ):
        _app(primary, models={"openai/sim-small": {"fallbacks": ["bakup"]}}).resilience  # noqa: B018


# -- deadlines ----------------------------------------------------------------------------------------
def test_a_run_past_its_deadline_fails_with_its_own_code(primary: SimServer) -> None:
    primary.configure(latency=2.0)
    with _app(primary) as app:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as caught:
            app.run(dspy.Predict(QA), {"question": "q"}, timeout=0.3)
        took = time.perf_counter() - t0
        record = _record(app, _failed_id(caught.value))
    assert took < 1.0
    assert record.status == "failed"
    assert record.error["code"] == "deadline_exceeded"


async def test_an_async_run_past_its_deadline_is_cancelled_at_the_lm_call(primary: SimServer) -> None:
    primary.configure(latency=2.0)
    with _app(primary) as app:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as caught:
            await app.arun(dspy.Predict(QA), {"question": "q"}, timeout=0.3)
        took = time.perf_counter() - t0
        record = await asyncio.to_thread(_record, app, _failed_id(caught.value))
    assert took < 1.0
    assert record.error["code"] == "deadline_exceeded"


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(primary: SimServer) -> None:
    primary.configure(fail_first=[429], retry_after=30.0)
    with _app(primary) as app:
        t0 = time.perf_counter()
        with pytest.raises(LMError) as caught:
            app.run(dspy.Predict(QA), {"question": "q"}, timeout=4.0)
        took = time.perf_counter() - t0
    # it gave up at once rather than sleeping to the deadline (4 s) or the hint (30 s); the margin
    # is wide because a loaded 2-core CI machine can take half a second to fail a run
    assert took < 2.0
    assert caught.value.retryable is True
    assert caught.value.retry_after == pytest.approx(30.0)


def test_a_timeout_must_be_positive(primary: SimServer) -> None:
    with _app(primary) as app, pytest.raises(ConfigurationError, match="timeout"):
        app.run(dspy.Predict(QA), {"question": "q"}, timeout=0)


# -- limits -------------------------------------------------------------------------------------------
def test_an_rpm_limit_makes_the_call_wait_within_the_deadline(primary: SimServer) -> None:
    with _app(primary, models={"openai/sim-small": {"rpm": 2}}) as app:
        app.run(dspy.Predict(QA), {"question": "q1"})
        app.run(dspy.Predict(QA), {"question": "q2"})
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as caught:
            app.run(dspy.Predict(QA), {"question": "q3"}, timeout=0.3)
        took = time.perf_counter() - t0
        record = _record(app, _failed_id(caught.value))
    assert took < 1.0  # the third would wait ~60 s; the deadline ends it
    assert primary.stats().statuses == {200: 2}
    assert record.error["code"] == "deadline_exceeded"


def test_resilience_can_be_switched_off(primary: SimServer) -> None:
    primary.configure(fail_first=[500])
    with _app(primary, enabled=False) as app:
        app.run(dspy.Predict(QA), {"question": "q"})  # DSPy's own retry
        assert app.resilience.status()["breakers"] == []
    assert primary.stats().statuses == {500: 1, 200: 1}


def test_output_that_fails_to_parse_is_asked_of_the_fallback(primary: SimServer, backup: SimServer) -> None:
    primary.configure(malformed_rate=1.0)
    with _app(primary, backup, models={"openai/sim-small": {"fallbacks": ["backup"]}}) as app:
        result = app.run(dspy.Predict(QA), {"question": "What is the capital of Peru?"})
        record = _record(app, result.execution_id)
    lms = [s for s in record.trace["spans"] if s["kind"] == "lm"]
    # DSPy's ChatAdapter, then its JSON fallback, on the primary; then the backup
    assert [s["model"] for s in lms] == ["openai/sim-small", "openai/sim-small", "openai/sim-medium"]
    assert primary.stats().statuses == {200: 2}
    assert backup.stats().statuses == {200: 1}
    assert set(record.usage) == {"openai/sim-small", "openai/sim-medium"}  # the unparsable calls were billed
    (moved,) = [s for s in record.trace["spans"] if s["name"] == "parse_fallback"]
    assert moved["attrs"]["to"] == "openai/sim-medium"
    assert result.outputs["answer"]


def test_without_a_chain_a_parse_failure_is_dspys_own_error(primary: SimServer) -> None:
    primary.configure(malformed_rate=1.0)
    with _app(primary) as app, pytest.raises(ExecutionError, match="AdapterParseError"):
        app.run(dspy.Predict(QA), {"question": "q"})
    assert primary.stats().statuses == {200: 2}  # DSPy's ChatAdapter and its JSON fallback, no more


def test_a_fallback_is_retried_by_this_loop_not_by_dspys_own(primary: SimServer, backup: SimServer) -> None:
    primary.configure(error_rate=1.0)
    backup.configure(fail_first=[500])
    with _app(
        primary,
        backup,
        retries=1,
        backoff_base_s=0.01,
        models={"openai/sim-small": {"fallbacks": ["backup"]}},
    ) as app:
        t0 = time.perf_counter()
        result = app.run(dspy.Predict(QA), {"question": "q"})
        took = time.perf_counter() - t0
        (lm,) = _lm_spans(app, result.execution_id)
    assert backup.stats().statuses == {500: 1, 200: 1}
    assert took < 0.8  # DSPy's own retry would have slept 1 s first
    assert [(t["model"], t.get("ok", t.get("cause"))) for t in lm["attrs"]["resilience"]["tried"]] == [
        ("openai/sim-small", "server"),
        ("openai/sim-small", "server"),
        ("openai/sim-medium", "server"),
        ("openai/sim-medium", True),
    ]


def test_a_spec_names_its_fallbacks_among_the_configured_models(
    primary: SimServer, backup: SimServer
) -> None:
    primary.configure(error_rate=1.0)
    spec = {
        "module": "predict",
        "signature": QA,
        "lm": {"model": "openai/sim-small", "fallbacks": ["backup"]},
    }
    with _app(primary, backup, retries=0) as app:
        app.programs.register("qa", spec)
        result = app.run("qa", {"question": "q"})
        (lm,) = _lm_spans(app, result.execution_id)
        policy = app.spec_policy("untrusted")
        with pytest.raises(SpecError, match="unknown model 'nope'") as caught:
            policy.check_program_spec({**spec, "lm": {"model": "openai/sim-small", "fallbacks": ["nope"]}})
    assert caught.value.path == "lm.fallbacks[0]"
    assert lm["model"] == "openai/sim-medium"
    assert backup.stats().statuses == {200: 1}


def test_a_program_limit_holds_its_runs_whatever_the_model(primary: SimServer) -> None:
    with _app(primary, programs={"qa": {"rpm": 1}}) as app:
        app.programs.register("qa", {"module": "predict", "signature": QA})
        app.run("qa", {"question": "q1"})
        app.run(dspy.Predict(QA), {"question": "another program: not limited"})
        with pytest.raises(DeadlineExceeded):
            app.run("qa", {"question": "q2"}, timeout=0.3)
        status = {limit["key"]: limit for limit in app.resilience.status()["limits"]}
    assert status["program:qa"]["requests_last_min"] == 1
    assert primary.stats().statuses == {200: 2}


async def test_a_streamed_run_and_a_session_turn_keep_their_deadline(primary: SimServer) -> None:
    from dspex.runtime.stream import RunFailed, RunStream

    primary.configure(latency=2.0)
    with _app(primary) as app:
        opened = await RunStream.open(app, dspy.Predict(QA), {"question": "q"}, timeout=0.3)
        events = [event async for event in opened.events()]
        app.programs.register("qa", {"module": "predict", "signature": QA})
        session = await asyncio.to_thread(app.sessions.create, "qa")
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await app.sessions.arun(session.id, {"question": "q"}, timeout=0.3)
        took = time.perf_counter() - t0
    assert isinstance(events[-1], RunFailed)
    assert isinstance(events[-1].error, DeadlineExceeded)
    assert took < 1.0


def test_the_fallback_chain_is_a_variable_runs_and_evaluations_follow(
    primary: SimServer, backup: SimServer
) -> None:
    from dspex.optimize import Evaluator
    from dspex.variables.binding import apply, bind

    primary.configure(error_rate=1.0)
    devset = [dspy.Example(question=f"q{i}", answer="x").with_inputs("question") for i in range(4)]
    chain = [bind.fallbacks("chain")]
    with _app(primary, backup, retries=0, breaker={"min_calls": 1000}) as app:
        with_backup = apply(dspy.Predict(QA), {"chain": "backup"}, chain)
        without = apply(dspy.Predict(QA), {"chain": ""}, chain)
        result = app.run(with_backup, {"question": "q"})
        (lm,) = _lm_spans(app, result.execution_id)
        with pytest.raises(LMError):
            app.run(without, {"question": "q"})
        lm_of_app = app.resilience.wrap(app.lm())
        evaluator = Evaluator(lambda example, prediction, trace=None: 1.0, cache=False, max_errors=None)
        good = evaluator.run(with_backup, devset, lm=lm_of_app)
        bad = evaluator.run(without, devset, lm=lm_of_app)
        with pytest.raises(ConfigurationError, match="not a configured model"):
            app.run(apply(dspy.Predict(QA), {"chain": "nope"}, chain), {"question": "q"})
    assert lm["model"] == "openai/sim-medium"
    assert good.errors == 0
    assert bad.errors == len(devset)


def test_the_resilient_path_records_one_span_per_dspy_event(primary: SimServer) -> None:
    with _app(primary) as app, _app(primary, enabled=False) as bare:
        spans = [
            [
                s["kind"]
                for s in _record(a, a.run(dspy.ChainOfThought(QA), {"question": "q"}).execution_id).trace[
                    "spans"
                ]
            ]
            for a in (app, bare)
        ]
    assert spans[0] == spans[1] == ["module", "module", "lm"]  # the default level, lean


def test_an_open_breaker_on_a_pool_worker_reaches_the_caller_with_its_code() -> None:
    from dspex.lm.breaker import BreakerOpen
    from dspex.runtime.run import _rebuilt

    error = _rebuilt({"code": "breaker_open", "message": "open", "retry_after": 3.0, "retryable": True}, "e1")
    assert isinstance(error, BreakerOpen)
    assert (error.code, error.retry_after, error.execution_id) == ("breaker_open", 3.0, "e1")
