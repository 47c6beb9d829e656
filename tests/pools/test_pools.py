"""Worker pools: runs on pre-warmed worker processes, recorded as inline runs are, and the pool's limits.

Every test starts real worker processes (forkserver) and stops them; workers import ``pool_programs``
from this directory (on ``sys.path``, as pytest puts it there), and get their LM from its initializer.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import ConfigurationError, ExecutionError, ValidationError, WorkerError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine

SCRIPTED = "pool_programs:scripted"


@pytest.fixture
def make_app(pool_app: Callable[..., App]) -> Callable[..., App]:
    """``make_app(**pool_settings)``: an App whose ``general`` pool has those settings; closed after."""
    return lambda **pool: pool_app(("qa", "sleepy", "hog", "timed"), {"size": 2, **pool})


def PATHS(test: Callable[..., None]) -> Callable[..., None]:
    """The failure modes hold on both ways a synchronous run reaches a worker: queued for the slot's
    thread (workers that run many tasks at once), or borrowed by the calling thread when one is idle
    (``concurrency = 1``, :meth:`Pool.call`); ``path_taken`` checks each test took the way its id says."""
    test = pytest.mark.usefixtures("path_taken")(test)
    return pytest.mark.parametrize("concurrency", [64, 1], ids=["queued", "borrowed"])(test)


@pytest.fixture
def path_taken(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, make_app: Callable[..., App]
) -> Iterator[None]:
    # After make_app: a test skipped for its database (PostgreSQL unset) never gets here.
    from dspex.pools.pool import Pool

    borrowed = 0
    call_on = Pool._call_on

    def counted(self: Pool, *args: Any, **kwargs: Any) -> Any:
        nonlocal borrowed
        borrowed += 1
        return call_on(self, *args, **kwargs)

    monkeypatch.setattr(Pool, "_call_on", counted)
    yield
    if request.node.callspec.params["concurrency"] == 1:
        assert borrowed > 0, "no run borrowed a worker"
    else:
        assert borrowed == 0


def _error(app: App, execution_id: str) -> dict[str, Any]:
    app.flush()
    record = app.executions.get(execution_id)
    assert record is not None
    assert record.status == "failed"
    assert record.error is not None
    return record.error


def test_a_pool_run_is_recorded_as_an_inline_run_is(make_app: Callable[..., App]) -> None:
    app = make_app()
    pooled = app.run("qa", {"question": "Where is Paris?"}, pool="general")
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    inline = app.run("qa", {"question": "Where is Paris?"}, lm=engine.lm(cache=False))
    assert (
        pooled.outputs
        == inline.outputs
        == {
            "reasoning": "Let me think step by step.",
            "answer": "answer to Where is Paris?",
        }
    )
    app.flush()
    on_pool, here = app.executions.get(pooled.execution_id), app.executions.get(inline.execution_id)
    assert on_pool is not None
    assert here is not None
    assert on_pool.status == here.status == "succeeded"
    assert on_pool.version_id == here.version_id
    assert on_pool.total_tokens == here.total_tokens
    assert on_pool.total_tokens
    assert on_pool.trace is not None
    assert here.trace is not None

    def shape(trace: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(s["kind"], s["name"], s["parent"]) for s in trace["spans"]]

    assert shape(on_pool.trace) == shape(here.trace)
    worker = on_pool.placement or {}
    assert worker["target"] == "pool"
    assert worker["pool"] == "general"
    assert worker["attempts"] == 1
    assert worker["pid"] != os.getpid()
    assert worker["worker"].startswith("general-")
    assert here.placement is None


async def test_arun_awaits_the_worker(make_app: Callable[..., App]) -> None:
    import asyncio

    app = make_app()
    results = await asyncio.gather(
        *(app.arun("sleepy", {"question": "q", "seconds": 0.2}, pool="general") for _ in range(4))
    )
    assert len({r.outputs["pid"] for r in results}) == 2  # both workers took tasks


async def test_an_async_pool_run_prepares_on_the_loop_once_its_program_and_pool_are_ready(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first async run by name on a pool reads the program's settings and version and starts the
    pool off the event loop; the next ones read nothing, so they are sent from the loop itself."""
    import asyncio

    import dspex.runtime.app as app_module

    app = make_app()
    hops: list[object] = []
    real = asyncio.to_thread

    async def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(getattr(fn, "func", fn), "__module__", "").startswith("dspex."):
            hops.append(fn)
        return await real(fn, *args, **kwargs)

    # What is read stays fresh for a second; a slow machine must not make it stale between two runs.
    monkeypatch.setattr("dspex.runtime.cache.POLICY_REFRESH_S", 60.0)
    monkeypatch.setattr(app_module.asyncio, "to_thread", counted)
    await app.arun("qa", {"question": "first"}, pool="general")
    assert hops
    hops.clear()
    result = await app.arun("qa", {"question": "second"}, pool="general")
    assert result.outputs["answer"] == "answer to second"
    assert hops == []
    assert app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert (record.status, (record.placement or {}).get("pool")) == ("succeeded", "general")


def test_inputs_are_checked_on_the_worker_and_errors_keep_their_type(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(ValidationError, match="question: missing") as caught:
        app.run("sleepy", {}, pool="general")
    error = _error(app, caught.value.execution_id)  # type: ignore[attr-defined]
    assert error["code"] == "validation_error"
    with pytest.raises(ExecutionError, match="ValueError"):
        app.run("sleepy", {"question": "q", "seconds": -1}, pool="general")  # time.sleep(-1) raises


def test_what_cannot_cross_to_a_pool_is_refused(make_app: Callable[..., App]) -> None:
    import dspy

    app = make_app()
    with pytest.raises(ConfigurationError, match="unknown pool 'genral'; did you mean 'general'"):
        app.run("qa", {"question": "q"}, pool="genral")
    with pytest.raises(ConfigurationError, match="run it by name"):
        app.run(dspy.Predict("question -> answer"), {"question": "q"}, pool="general")
    with pytest.raises(ConfigurationError, match="lm= cannot cross"):
        app.run("qa", {"question": "q"}, pool="general", lm=ScriptedEngine().lm())


def test_invalid_pool_settings_name_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"pools\.general\.max_rss_mb: Input should be greater"):
        Settings.load(pools={"general": {"max_rss_mb": 10}})
    with pytest.raises(ConfigurationError, match=r"pools\.general\.sise: Extra inputs"):
        Settings.load(pools={"general": {"sise": 2}})


def test_a_pool_that_cannot_start_says_why(make_app: Callable[..., App]) -> None:
    app = make_app(initializer="pool_programs:no_such_function")
    with pytest.raises(ConfigurationError, match=r"(?s)could not start.*no_such_function"):
        app.run("qa", {"question": "q"}, pool="general")


def _kill_when_busy(app: App, pid_seen: threading.Event) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = [w for w in app.pools.get("general").status().workers if w.state == "busy"]
        if busy and busy[0].pid is not None:
            os.kill(busy[0].pid, signal.SIGKILL)
            pid_seen.set()
            return
        time.sleep(0.005)


@PATHS
def test_a_worker_killed_mid_run_leaves_a_failed_record_and_is_replaced(
    make_app: Callable[..., App], concurrency: int
) -> None:
    app = make_app(size=1, concurrency=concurrency)
    app.run("qa", {"question": "warm"}, pool="general")
    killed = threading.Event()
    killer = threading.Thread(target=_kill_when_busy, args=(app, killed))
    killer.start()
    with pytest.raises(WorkerError, match="died") as caught:
        app.run("sleepy", {"question": "q", "seconds": 5}, pool="general")
    killer.join()
    assert killed.is_set()
    assert caught.value.code == "worker_lost"
    assert caught.value.retryable
    error = _error(app, caught.value.execution_id or "")
    assert error["code"] == "worker_lost"
    assert app.run("qa", {"question": "after"}, pool="general").outputs["answer"] == "answer to after"
    status = app.pools.get("general").status()
    assert status.replaced == {"died": 1}
    assert status.healthy
    assert status.size == 1


@PATHS
def test_an_idempotent_run_is_tried_again_on_another_worker(
    make_app: Callable[..., App], concurrency: int
) -> None:
    app = make_app(size=1, concurrency=concurrency)
    app.run("qa", {"question": "warm"}, pool="general")
    first_pid = app.pools.get("general").status().workers[0].pid
    killed = threading.Event()
    killer = threading.Thread(target=_kill_when_busy, args=(app, killed))
    killer.start()
    result = app.run("sleepy", {"question": "q", "seconds": 0.5}, pool="general", idempotent=True)
    killer.join()
    assert killed.is_set()
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    assert record.placement is not None
    assert record.placement["attempts"] == 2
    assert record.placement["pid"] != first_pid


@PATHS
def test_a_task_over_the_memory_limit_fails_with_its_own_code(
    make_app: Callable[..., App], concurrency: int
) -> None:
    app = make_app(size=1, max_rss_mb=300, heartbeat_s=0.05, concurrency=concurrency)
    with pytest.raises(
        WorkerError, match=r"over the pool's memory limit of 450 MB \(kill_rss_mb\)"
    ) as caught:
        app.run("hog", {"mb": 400, "hold_s": 2.0}, pool="general")
    assert caught.value.code == "memory_limit"
    assert not caught.value.retryable
    assert _error(app, caught.value.execution_id or "")["code"] == "memory_limit"
    record = app.executions.get(caught.value.execution_id or "")
    assert record is not None
    assert record.placement is not None  # the worker that had it, though it failed
    assert (record.placement["worker"], record.placement["pid"]) == ("general-0", caught.value.pid)
    assert isinstance(caught.value.pid, int)
    assert app.run("qa", {"question": "next"}, pool="general").outputs["answer"] == "answer to next"
    assert app.pools.get("general").status().replaced == {"memory_limit": 1}


@PATHS
def test_a_leaking_program_is_recycled_and_memory_stays_bounded(
    make_app: Callable[..., App], concurrency: int
) -> None:
    app = make_app(size=1, max_rss_mb=250, concurrency=concurrency)
    peak = 0.0
    for _ in range(12):  # 40 MB more per task: without recycling the worker would reach ~580 MB
        app.run("hog", {"mb": 40}, pool="general")
        rss = app.pools.get("general").status().workers[0].rss_mb or 0.0
        peak = max(peak, rss)
    status = app.pools.get("general").status()
    assert status.replaced.get("max_rss", 0) >= 2
    assert peak < 250 + 40 + 20  # at most one task's leak over the limit before it is recycled


@PATHS
def test_workers_are_recycled_after_max_tasks(make_app: Callable[..., App], concurrency: int) -> None:
    app = make_app(size=1, max_tasks=3, concurrency=concurrency)
    pids = [app.run("sleepy", {"question": "q"}, pool="general").outputs["pid"] for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert app.pools.get("general").status().replaced == {"max_tasks": 2}


@pytest.mark.parametrize(("concurrency", "prefetch"), [(1, 1), (1, 3), (2, 1)])
def test_a_busy_worker_holds_concurrency_plus_prefetch_minus_one_tasks(
    make_app: Callable[..., App], concurrency: int, prefetch: int
) -> None:
    # coalesce = 1: a group of queued runs would be one task (tests/pools/test_coalesce.py)
    app = make_app(size=1, prefetch=prefetch, concurrency=concurrency, coalesce=1)
    pool = app.pools.get("general")
    futures = [
        pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "q", "seconds": 0.4}})
        for _ in range(3)
    ]
    for _ in range(200):  # until the worker runs the first task
        if pool.status().workers[0].state == "busy":
            break
        time.sleep(0.01)
    # Sent to the worker (running, or waiting in its pipe) or still in the pool's queue, where any
    # worker could take them.
    assert pool.status().queued == 3 - (concurrency + prefetch - 1)
    assert [f.result(timeout=20)["outcome"]["status"] for f in futures] == ["succeeded"] * 3


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals ``(began, ended)`` that overlap at one time."""
    edges = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_worker_runs_concurrency_tasks_at_once(make_app: Callable[..., App], concurrency: int) -> None:
    # Runs that wait (as on an LM) overlap on one worker up to its concurrency, and no further.
    app = make_app(size=1, concurrency=concurrency)
    app.run("timed", {"question": "warm"}, pool="general")  # the program loaded: what follows only waits
    with ThreadPoolExecutor(6) as executor:
        results = list(
            executor.map(
                lambda i: app.run("timed", {"question": f"q{i}", "seconds": 0.4}, pool="general"), range(6)
            )
        )
    assert len({r.outputs["pid"] for r in results}) == 1
    assert _most_at_once([(r.outputs["began"], r.outputs["ended"]) for r in results]) == concurrency


def test_a_task_queued_for_a_busy_worker_with_room_starts_at_once(make_app: Callable[..., App]) -> None:
    # The worker runs a long task; a short one sent meanwhile runs beside it and ends first.
    app = make_app(size=1, concurrency=2)
    app.run("qa", {"question": "warm"}, pool="general")
    pool = app.pools.get("general")
    long = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "q", "seconds": 3.0}})
    for _ in range(200):
        if pool.status().workers[0].state == "busy":
            break
        time.sleep(0.01)
    assert app.run("sleepy", {"question": "short"}, pool="general").outputs["answer"] == "slept 0.0"
    assert not long.done()
    assert long.result(timeout=20)["outcome"]["status"] == "succeeded"


def test_a_timeout_fails_the_late_task_and_loses_the_others_it_ran_beside(
    make_app: Callable[..., App],
) -> None:
    # Concurrency 2, prefetch 2: the worker runs the first two and holds the third in its pipe. The first
    # runs over the timeout: it fails with task_timeout, the second (running beside it) is lost with the
    # worker, and the third, never started, runs on the replacement.
    app = make_app(size=1, concurrency=2, task_timeout_s=3.0)
    app.run("qa", {"question": "warm"}, pool="general")
    pool = app.pools.get("general")
    first_pid = pool.status().workers[0].pid
    late = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "a", "seconds": 60}})
    time.sleep(0.5)
    beside = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "b", "seconds": 60}})
    waiting = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "c", "seconds": 0.0}})
    with pytest.raises(WorkerError, match="task_timeout_s of 3") as timed_out:
        late.result(timeout=30)
    assert timed_out.value.code == "task_timeout"
    with pytest.raises(WorkerError, match="killed for another task's timeout") as lost:
        beside.result(timeout=30)
    assert lost.value.code == "worker_lost"
    assert lost.value.retryable
    answer = waiting.result(timeout=30)
    assert answer["outcome"]["status"] == "succeeded"
    assert answer["pid"] != first_pid
    assert pool.status().replaced == {"task_timeout": 1}


def test_tasks_run_side_by_side_over_the_memory_limit_each_fail_with_its_code(
    make_app: Callable[..., App],
) -> None:
    app = make_app(size=1, concurrency=2, max_rss_mb=300, heartbeat_s=0.05)
    pool = app.pools.get("general")
    hogs = [pool.submit({"program": {"name": "hog"}, "inputs": {"mb": 250, "hold_s": 3.0}}) for _ in range(2)]
    for hog in hogs:
        with pytest.raises(WorkerError, match=r"it ran 2 tasks at once; with concurrency = 1") as caught:
            hog.result(timeout=30)
        assert caught.value.code == "memory_limit"
    assert app.run("qa", {"question": "next"}, pool="general").outputs["answer"] == "answer to next"


@PATHS
def test_a_task_over_its_timeout_has_its_worker_replaced(
    make_app: Callable[..., App], concurrency: int
) -> None:
    # 3 s: the replacement's first task (a fresh process loading the program) must fit in it on a loaded
    # machine; with 0.5 s it did not always, and the test saw two timeouts.
    app = make_app(size=1, task_timeout_s=3.0, concurrency=concurrency)
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"task_timeout_s of 3") as caught:
        app.run("sleepy", {"question": "q", "seconds": 60}, pool="general")
    assert time.monotonic() - started < 20
    assert caught.value.code == "task_timeout"
    assert app.run("sleepy", {"question": "q"}, pool="general").outputs["answer"] == "slept 0.0"
    assert app.pools.get("general").status().replaced == {"task_timeout": 1}


@PATHS
def test_a_hung_worker_is_killed_and_replaced(make_app: Callable[..., App], concurrency: int) -> None:
    app = make_app(size=1, hung_after_s=1.0, heartbeat_s=0.1, concurrency=concurrency)
    app.run("qa", {"question": "warm"}, pool="general")
    pid = app.pools.get("general").status().workers[0].pid
    assert pid is not None

    def freeze() -> None:  # SIGSTOP: the process lives but says nothing, as a deadlocked one would
        time.sleep(0.3)
        os.kill(pid, signal.SIGSTOP)

    threading.Thread(target=freeze).start()
    with pytest.raises(WorkerError, match="sent no heartbeat") as caught:
        app.run("sleepy", {"question": "q", "seconds": 5}, pool="general")
    assert caught.value.code == "worker_lost"
    assert app.run("qa", {"question": "after"}, pool="general").outputs["answer"] == "answer to after"
    assert app.pools.get("general").status().replaced == {"hung": 1}


@PATHS
def test_chaos_random_kills_lose_no_run(
    make_app: Callable[..., App], tmp_path: Path, concurrency: int
) -> None:
    """30 kill -9s of random workers during 600 idempotent runs: every run has one terminal record, and
    at least 99% succeed after their retry."""
    app = make_app(size=2, concurrency=concurrency)
    app.run("qa", {"question": "warm"}, pool="general")
    runs, kills = 600, 30
    done = threading.Event()
    killed = finished = 0

    def killer() -> None:  # a kill every runs/kills finished runs, spread over the whole batch
        nonlocal killed
        rng = random.Random(7)
        while killed < kills and not done.is_set():
            if finished < (killed + 1) * runs // (kills + 1):
                time.sleep(0.002)
                continue
            workers = [w for w in app.pools.get("general").status().workers if w.state in ("busy", "idle")]
            pid = rng.choice(workers).pid if workers else None
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):  # recycled in between: the next one counts
                    os.kill(pid, signal.SIGKILL)
                    killed += 1

    def one(i: int) -> tuple[str | None, str]:
        nonlocal finished
        try:
            result = app.run(
                "sleepy", {"question": f"q{i}", "seconds": 0.01}, pool="general", idempotent=True
            )
        except WorkerError as exc:
            return exc.execution_id, "failed"
        finally:
            finished += 1
        return result.execution_id, "succeeded"

    thread = threading.Thread(target=killer)
    thread.start()
    with ThreadPoolExecutor(8) as executor:
        outcomes = list(executor.map(one, range(runs)))
    done.set()
    thread.join()
    assert killed >= kills * 0.9, killed
    app.flush()
    ids = [execution_id for execution_id, _ in outcomes]
    assert None not in ids
    assert len(set(ids)) == runs
    records = {r.id: r for r in app.executions.find(limit=10_000) if r.program == "sleepy"}
    assert set(records) == set(ids)  # one record per run, none lost, none extra
    for execution_id, status in outcomes:
        assert records[str(execution_id)].status == status  # the record says what the caller saw
    succeeded = sum(1 for _, status in outcomes if status == "succeeded")
    assert succeeded >= runs * 0.99, succeeded


def test_a_worker_starts_with_its_start_up_heap_frozen(make_app: Callable[..., App]) -> None:
    app = make_app(size=1)
    app.programs.register("heap", "pool_programs:build_heap_info")
    result = app.run("heap", {"question": "gc"}, pool="general")
    frozen = int(result.outputs["answer"])
    assert frozen > 50_000  # DSPy and dspex, frozen by the forkserver and the worker's start-up
    assert result.outputs["tracked"] < frozen // 2  # the collector's full passes walk what runs allocate
