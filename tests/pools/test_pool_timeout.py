"""A pool's task timeout counts from when the worker says a task started, not from when it was sent (a
task may wait in the worker, behind its concurrency or its CPU gate). No processes here."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from dspex.errors import WorkerError
from dspex.pools.pool import Pool, _Replace, _Slot, _Task
from dspex.settings import PoolSetting, Settings


def _pool() -> Pool:
    return Pool("general", PoolSetting(size=1, concurrency=4, task_timeout_s=2.0), Settings())


def test_the_timeout_counts_from_the_start_the_worker_reports() -> None:
    pool = _pool()
    slot = _Slot(0, "general-0")
    now = time.monotonic()
    slot.started = slot.last_heartbeat = now
    slot.load = 1  # one task sent, maybe a minute ago: it may have waited in the worker
    slot.oldest = (7, now - 0.5, None)  # the worker started it half a second ago
    assert pool._verdict(slot) is None
    slot.oldest = (7, now - 2.5, None)
    verdict = pool._verdict(slot)
    assert verdict is not None
    assert verdict.reason == "task_timeout"
    assert verdict.task_id == 7


def test_the_task_the_worker_named_fails_with_task_timeout_and_the_others_are_lost() -> None:
    pool = _pool()
    slot = _Slot(0, "general-0")
    tasks = [_Task({"program": {"name": "qa"}}, Future()) for _ in range(3)]
    for task in tasks:
        task.future.set_running_or_notify_cancel()
    late = tasks[1]
    pool._fail_begun(slot, tasks, _Replace("task_timeout", "task_timeout", "over 2 s", task_id=late.id))
    for task in tasks:
        with pytest.raises(WorkerError) as caught:
            task.future.result()
        assert caught.value.code == ("task_timeout" if task is late else "worker_lost")
