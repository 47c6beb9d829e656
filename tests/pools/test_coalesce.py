"""``coalesce``: queued runs go to a worker in groups (one message each way), each keeping its own answer,
record and failure."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from dspex.errors import WorkerError
from dspex.pools.pool import Pool
from dspex.runtime.app import App


@pytest.fixture
def make_app(pool_app: Callable[..., App]) -> Callable[..., App]:
    return lambda **pool: pool_app(("qa", "sleepy"), {"size": 2, "concurrency": 1, **pool})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The tasks the pools' threads send to their workers."""
    messages: list[dict[str, Any]] = []
    send = Pool._send

    def spy(self: Pool, slot: Any, message: dict[str, Any]) -> None:
        messages.append(message["task"])
        send(self, slot, message)

    monkeypatch.setattr(Pool, "_send", spy)
    return messages


def _groups(sent: list[dict[str, Any]]) -> list[int]:
    return [len(task["runs"]) for task in sent if task.get("kind") == "runs"]


def test_queued_runs_go_in_groups_and_each_keeps_its_answer_and_record(
    make_app: Callable[..., App], sent: list[dict[str, Any]]
) -> None:
    app = make_app()  # coalesce = 8 by default
    assert app.pools.setting("general").coalesce == 8
    app.pools.get("general")

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(app.arun("qa", {"question": f"q{i}"}, pool="general") for i in range(60))
        )

    results = asyncio.run(many())
    assert [r.outputs["answer"] for r in results] == [f"answer to q{i}" for i in range(60)]
    groups = _groups(sent)
    assert groups, "no group was sent, though 60 runs were queued at once"
    assert max(groups) <= 8
    app.flush()
    records = [app.executions.get(r.execution_id) for r in results]
    assert all(r is not None and r.status == "succeeded" for r in records)
    assert len({r.execution_id for r in results}) == 60
    status = app.pools.get("general").status()
    assert status.completed == 60
    assert status.coalesced == sum(groups)  # what /v1/pools and /metrics show
    assert status.to_json()["coalesced"] == sum(groups)


def test_without_coalesce_every_run_is_its_own_message(
    make_app: Callable[..., App], sent: list[dict[str, Any]]
) -> None:
    app = make_app(coalesce=1)

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(app.arun("qa", {"question": f"q{i}"}, pool="general") for i in range(30))
        )

    assert len(asyncio.run(many())) == 30
    assert _groups(sent) == []
    assert len(sent) == 30


def _replaced(pool: Pool, expected: dict[str, int]) -> None:
    """The pool counts the replacement after it failed the tasks: wait for the count."""
    deadline = time.monotonic() + 10
    while pool.status().replaced != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.status().replaced == expected


def _queue_behind_a_blocker(pool: Pool, runs: list[float]) -> tuple[Any, list[Any]]:
    """A run that holds the only worker, then ``runs`` (sleeps) queued behind it: they go as one group."""
    blocker = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "b", "seconds": 0.4}})
    time.sleep(0.1)  # the blocker is on the worker (prefetch 1: it holds nothing else)
    queued = [
        pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": f"r{i}", "seconds": s}})
        for i, s in enumerate(runs)
    ]
    return blocker, queued


def test_a_worker_lost_mid_group_fails_each_of_its_runs_and_the_pool_goes_on(
    make_app: Callable[..., App], sent: list[dict[str, Any]]
) -> None:
    app = make_app(size=1, prefetch=1, coalesce=4)
    pool = app.pools.get("general")
    blocker, queued = _queue_behind_a_blocker(pool, [0.4] * 6)
    assert blocker.result(30)["outcome"]["status"] == "succeeded"
    time.sleep(0.2)  # the group of 4 is under way
    assert _groups(sent) == [4]
    [worker] = pool.status().workers
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    for future in queued[:4]:
        with pytest.raises(WorkerError) as caught:
            future.result(30)
        assert caught.value.code == "worker_lost"
        assert caught.value.pid == worker.pid
    assert [f.result(30)["outcome"]["status"] for f in queued[4:]] == ["succeeded"] * 2
    _replaced(pool, {"died": 1})


def test_a_task_timeout_in_a_group_fails_the_run_under_way_with_its_code(
    make_app: Callable[..., App], sent: list[dict[str, Any]]
) -> None:
    app = make_app(size=1, prefetch=1, coalesce=3, task_timeout_s=1.0, heartbeat_s=0.05)
    pool = app.pools.get("general")
    blocker, queued = _queue_behind_a_blocker(pool, [0.0, 5.0, 0.0])
    assert blocker.result(30)["outcome"]["status"] == "succeeded"
    codes = []
    for future in queued:
        with pytest.raises(WorkerError) as caught:
            future.result(30)
        codes.append(caught.value.code)
    assert _groups(sent) == [3]
    assert codes == ["worker_lost", "task_timeout", "worker_lost"]  # each run's timeout is its own
    _replaced(pool, {"task_timeout": 1})
    after = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "next"}})
    assert after.result(30)["outcome"]["status"] == "succeeded"
