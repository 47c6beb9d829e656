"""Runs that borrow a worker: with ``concurrency = 1`` a synchronous run's own thread sends its task down
an idle worker's pipe and reads the answer (``Pool.call``), while queued tasks (async runs, a session's
turns) still go through the slot's thread. The failure modes of both ways are in ``test_pools.py``
(``PATHS``); here, how the two ways share the workers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dspex.errors import ConfigurationError, WorkerError
from dspex.pools.pool import Pool
from dspex.runtime.app import App
from dspex.store.executions import ExecutionFilter


@pytest.fixture
def make_app(pool_app: Callable[..., App]) -> Callable[..., App]:
    return lambda **pool: pool_app(("qa", "timed", "chat"), {"concurrency": 1, **pool})


def _count_submits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    submitted: list[dict[str, Any]] = []
    submit = Pool.submit

    def counted(self: Pool, payload: dict[str, Any], **kwargs: Any) -> Any:
        submitted.append(payload)
        return submit(self, payload, **kwargs)

    monkeypatch.setattr(Pool, "submit", counted)
    return submitted


def test_a_synchronous_run_borrows_an_idle_worker_and_is_recorded_as_a_queued_one(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = _count_submits(monkeypatch)
    app = make_app(size=2)
    result = app.run("qa", {"question": "Paris?"}, pool="general")
    assert result.outputs["answer"] == "answer to Paris?"
    assert submitted == []  # no task went to a slot's thread
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    assert record.placement is not None
    assert record.placement["pool"] == "general"
    assert record.placement["worker"] in ("general-0", "general-1")
    assert record.placement["attempts"] == 1
    assert record.trace is not None  # the worker's span tree, as a queued run's record holds it
    status = app.pools.get("general").status()
    assert status.completed == 1
    assert [w.state for w in status.workers] == ["idle", "idle"]


def test_workers_that_run_many_tasks_at_once_are_not_borrowed(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A borrowed worker runs one task at a time: with concurrency above 1 runs are queued, so runs waiting
    # on their LM overlap on one worker.
    submitted = _count_submits(monkeypatch)
    app = make_app(size=1, concurrency=4)
    app.run("qa", {"question": "q"}, pool="general")
    assert len(submitted) == 1


def test_borrowed_queued_and_pinned_runs_share_the_workers(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Threads borrowing workers, async runs queued for the slots' threads and a session's turns (pinned to
    # its worker) at once, on two workers: every run ends, each once, with its own answer.
    submitted = _count_submits(monkeypatch)
    app = make_app(size=2)
    app.run("qa", {"question": "warm"}, pool="general")
    session = app.sessions.create("chat")
    answers: dict[str, str] = {}
    errors: list[BaseException] = []

    def borrowing(k: int) -> None:
        for i in range(40):
            question = f"sync {k}.{i}"
            answers[question] = app.run("qa", {"question": question}, pool="general").outputs["answer"]

    def queued() -> None:
        async def many() -> None:
            questions = [f"async {i}" for i in range(80)]
            results = await asyncio.gather(
                *(app.arun("qa", {"question": q}, pool="general") for q in questions)
            )
            answers.update({q: r.outputs["answer"] for q, r in zip(questions, results, strict=True)})

        asyncio.run(many())

    def turns() -> None:
        for i in range(10):
            app.sessions.run(session.id, {"question": f"turn {i}"}, pool="general")

    def guarded(target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(borrowing, k)) for k in range(4)]
    threads += [
        threading.Thread(target=guarded, args=(queued,)),
        threading.Thread(target=guarded, args=(turns,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a run never ended"
    assert errors == []
    assert len(answers) == 4 * 40 + 80
    assert all(answer == f"answer to {question}" for question, answer in answers.items())
    assert app.sessions.get(session.id).turns == 10
    assert len(submitted) >= 80 + 10  # the async runs and the turns were queued; the sync ones borrowed
    app.flush()
    records = [
        r
        for r in app.executions.find(ExecutionFilter(program="qa"), limit=1000)
        if r.inputs["question"] != "warm"
    ]
    assert len(records) == len(answers)
    assert {r.status for r in records} == {"succeeded"}
    status = app.pools.get("general").status()
    assert status.queued == 0
    assert status.healthy


def _one_worker(app: App) -> tuple[Pool, Callable[[str, float], dict[str, Any]]]:
    """The app's warmed pool, and what builds a task of ``timed`` for ``Pool.submit`` / ``Pool.call``."""
    app.run("timed", {"question": "warm"}, pool="general")
    pool = app.pools.get("general")
    assert isinstance(pool, Pool)
    version = app.programs.resolve("timed").id

    def timed(question: str, seconds: float) -> dict[str, Any]:
        program = {"name": "timed", "version_id": version}
        return {"program": program, "inputs": {"question": question, "seconds": seconds}}

    return pool, timed


def test_tasks_already_queued_go_before_a_run_that_would_borrow(make_app: Callable[..., App]) -> None:
    app = make_app(size=1)
    pool, timed = _one_worker(app)
    futures = [pool.submit(timed(f"q{i}", 0.2)) for i in range(3)]
    result = app.run("timed", {"question": "last"}, pool="general")
    queued = [future.result(30)["outcome"]["outputs"] for future in futures]
    assert all(outputs["ended"] <= result.outputs["began"] for outputs in queued)


def test_a_run_finding_every_worker_busy_is_queued_and_fails_if_the_pool_closes_first(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = _count_submits(monkeypatch)
    pool, timed = _one_worker(make_app(size=1))
    payload = timed("q", 1.0)
    with ThreadPoolExecutor(2) as executor:
        running = executor.submit(pool.call, payload)
        while pool.status().workers[0].state != "busy":  # the first has borrowed the worker
            time.sleep(0.005)
        waiting = executor.submit(pool.call, payload)
        while not submitted:  # the second found it busy: queued, not waiting for the borrower
            time.sleep(0.005)
        assert pool.status().queued == 1
        pool.close()
        # The run under way ends first (as a task sent to a worker does); the queued one never ran.
        assert running.result(30)["outcome"]["status"] == "succeeded"
        with pytest.raises(WorkerError, match="closed before the task ran"):
            waiting.result(30)
    with pytest.raises(ConfigurationError, match="is closed"):
        pool.call(payload)
