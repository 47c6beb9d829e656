"""Shards: many runs sent to one worker of a process pool as one task, each with its own record.
The same guarantees on Ray actors: ``tests/distributed/test_ray_shards.py``.

Real worker processes (forkserver), as in ``test_pools.py``; workers import ``pool_programs`` by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_pools import _kill_when_busy

from dspex.distributed.batch import SHARD_SIZE, SHARD_START, run_batch
from dspex.errors import ConfigurationError, ValidationError, WorkerError
from dspex.pools.pool import Pool
from dspex.runtime.app import App
from dspex.runtime.run import RunResult
from dspex.store.executions import ExecutionFilter


@pytest.fixture
def make_app(pool_app: Callable[..., App]) -> Callable[..., App]:
    return lambda **pool: pool_app(("qa", "sleepy"), {"size": 2, **pool}, max_input_bytes=2000)


def _submitted(app: App, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every payload the ``general`` pool is given, in order (the real submit still runs)."""
    pool = app.pools.get("general")
    assert isinstance(pool, Pool)
    payloads: list[dict[str, Any]] = []
    submit = pool.submit

    def spy(payload: dict[str, Any], **kwargs: Any) -> Any:
        payloads.append(payload)
        return submit(payload, **kwargs)

    monkeypatch.setattr(pool, "submit", spy)
    return payloads


def test_a_shard_is_one_task_and_each_run_is_recorded_as_alone(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    payloads = _submitted(app, monkeypatch)
    inputs = [{"question": f"q{i}"} for i in range(6)]
    results = app.run_many("qa", inputs, pool="general")
    assert [p["kind"] for p in payloads] == ["runs"]
    assert len(payloads[0]["runs"]) == 6
    assert all(isinstance(r, RunResult) for r in results)
    done = [r for r in results if isinstance(r, RunResult)]
    assert [r.outputs["answer"] for r in done] == [f"answer to q{i}" for i in range(6)]
    alone = app.run("qa", {"question": "q0"}, pool="general")
    app.flush()
    records = [app.executions.get(r.execution_id) for r in done]
    single = app.executions.get(alone.execution_id)
    assert single is not None
    assert len({r.execution_id for r in done}) == 6
    for record in records:
        assert record is not None
        assert record.status == "succeeded"
        assert record.program == "qa"
        assert record.placement is not None
        assert record.placement["target"] == "pool"
        assert record.placement["attempts"] == 1
        assert record.total_tokens == single.total_tokens  # usage crossed back per run
        assert record.trace is not None
        assert single.trace is not None
        assert [s["kind"] for s in record.trace["spans"]] == [s["kind"] for s in single.trace["spans"]]
    assert len({r.placement["worker"] for r in records if r is not None and r.placement}) == 1
    # The pool counts runs, not messages: 6 + 1.
    assert app.pools.get("general").status().completed == 7


def test_a_run_of_a_shard_lasts_what_the_worker_measured(make_app: Callable[..., App]) -> None:
    app = make_app(size=1)
    inputs = [{"question": "a", "seconds": 0.3}, {"question": "b", "seconds": 0.0}]
    first, second = app.run_many("sleepy", inputs, pool="general")
    assert isinstance(first, RunResult)
    assert isinstance(second, RunResult)
    assert first.duration_ms >= 300
    # The second waited 0.3 s behind the first on the worker; that wait is not its own.
    assert second.duration_ms < 150
    app.flush()
    record = app.executions.get(second.execution_id)
    assert record is not None
    assert record.duration_ms is not None
    assert record.duration_ms < 150


def test_bad_runs_of_a_shard_fail_alone(make_app: Callable[..., App]) -> None:
    app = make_app()
    inputs = [{"question": "ok"}, {"wrong": "field"}, {"question": "x" * 5000}, {"question": "fine"}]
    results = app.run_many("qa", inputs, pool="general")
    ok, wrong, big, fine = results
    assert isinstance(ok, RunResult)
    assert ok.outputs["answer"] == "answer to ok"
    assert isinstance(fine, RunResult)
    assert fine.outputs["answer"] == "answer to fine"
    assert isinstance(wrong, ValidationError)
    assert isinstance(big, ValidationError)
    assert "max_input_bytes" in str(big)
    app.flush()
    for failed in (wrong, big):
        record = app.executions.get(getattr(failed, "execution_id", None) or "")
        assert record is not None
        assert record.status == "failed"
        assert record.error is not None
        assert record.error["code"] == "validation_error"


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_worker_lost_mid_shard(make_app: Callable[..., App], idempotent: bool) -> None:
    app = make_app(size=1)
    app.run("qa", {"question": "warm"}, pool="general")
    killed = threading.Event()
    killer = threading.Thread(target=_kill_when_busy, args=(app, killed))
    killer.start()
    inputs = [{"question": f"q{i}", "seconds": 0.3} for i in range(3)]
    results = app.run_many("sleepy", inputs, pool="general", idempotent=idempotent)
    killer.join()
    assert killed.is_set()
    app.flush()
    for result in results:
        if idempotent:  # sent once more, as a shard of their own, to the worker that replaced it
            assert isinstance(result, RunResult)
            record = app.executions.get(result.execution_id)
            assert record is not None
            assert record.status == "succeeded"
            assert record.placement is not None
            assert record.placement["attempts"] == 2
        else:  # every run of the shard fails: its outcomes were to come back together
            assert isinstance(result, WorkerError)
            assert result.code == "worker_lost"
            record = app.executions.get(result.execution_id or "")
            assert record is not None
            assert record.status == "failed"
            assert record.error is not None
            assert record.error["code"] == "worker_lost"
    assert app.run("qa", {"question": "after"}, pool="general").outputs["answer"] == "answer to after"
    status = app.pools.get("general").status()
    assert status.replaced == {"died": 1}
    assert status.healthy


def test_a_batch_on_a_process_pool_goes_in_shards(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    payloads = _submitted(app, monkeypatch)
    inputs = [{"question": f"q{i}"} for i in range(20)] + [{"wrong": "x"}]
    lines = run_batch(app, "qa", inputs, pool="general", shard_size=4)
    assert [line.index for line in lines] == list(range(21))
    assert [line.outputs["answer"] for line in lines[:20] if line.outputs] == [
        f"answer to q{i}" for i in range(20)
    ]
    assert lines[20].status == "failed"
    assert lines[20].error is not None
    assert lines[20].error["code"] == "validation_error"
    assert sorted(len(p["runs"]) for p in payloads) == [1, 4, 4, 4, 4, 4]
    one_by_one = run_batch(app, "qa", inputs[:3], pool="general", shard_size=1)
    assert [line.status for line in one_by_one] == ["succeeded"] * 3
    assert [p.get("kind") for p in payloads[6:]] == [None] * 3  # single runs, as before
    app.flush()
    assert len({line.execution_id for line in lines}) == 21


def test_a_batch_of_fast_runs_grows_its_shards_and_slow_ones_keep_them_small(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    payloads = _submitted(app, monkeypatch)
    lines = run_batch(app, "qa", [{"question": f"q{i}"} for i in range(400)], pool="general")
    assert [line.status for line in lines] == ["succeeded"] * 400
    sizes = [len(p["runs"]) for p in payloads]
    assert sum(sizes) == 400
    assert sizes[:4] == [SHARD_START] * 4  # every feeder starts small: a short batch still uses each worker
    assert max(sizes) == SHARD_SIZE  # fast shards doubled up to the largest
    assert sizes.count(SHARD_SIZE) >= 6

    payloads.clear()
    monkeypatch.setattr("dspex.distributed.batch.SHARD_FAST_S", 0.0)  # no shard is fast enough to grow
    run_batch(app, "qa", [{"question": f"slow {i}"} for i in range(40)], pool="general")
    assert {len(p["runs"]) for p in payloads} == {SHARD_START}


def test_cache_hits_are_answered_in_place(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    app.set_cache("qa", 60)
    first = app.run_many("qa", [{"question": "a"}, {"question": "b"}], pool="general")
    payloads = _submitted(app, monkeypatch)
    again = app.run_many("qa", [{"question": "a"}, {"question": "c"}, {"question": "b"}], pool="general")
    assert [len(p["runs"]) for p in payloads] == [1]  # only "c" went to a worker
    assert all(isinstance(r, RunResult) for r in (*first, *again))
    answers = [r.outputs["answer"] for r in again if isinstance(r, RunResult)]
    assert answers == ["answer to a", "answer to c", "answer to b"]
    assert [r.cache_hit for r in again if isinstance(r, RunResult)] == [True, False, True]


def test_an_async_shard_prepares_on_the_event_loop_unless_it_must_read_the_database(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pool running and the program fresh in memory, ``arun_many`` hops to no thread (it reads
    no row); with a cache TTL it prepares and stores on threads, and the next shard is answered from
    the cache."""
    import asyncio

    app = make_app()
    app.run_many("qa", [{"question": "warm"}], pool="general")  # the pool starts, the version is memoised
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "?"))
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr("dspex.runtime.app.asyncio.to_thread", counted)
    results = asyncio.run(app.arun_many("qa", [{"question": "a"}, {"question": "b"}], pool="general"))
    assert [r.outputs["answer"] for r in results if isinstance(r, RunResult)] == [
        "answer to a",
        "answer to b",
    ]
    assert hops == []

    app.set_cache("qa", 60)
    first = asyncio.run(app.arun_many("qa", [{"question": "a"}, {"question": "b"}], pool="general"))
    assert hops == ["_prepare_shard", "_shard_results"]  # the cache is read, then filled, off the loop
    again = asyncio.run(app.arun_many("qa", [{"question": "b"}, {"question": "a"}], pool="general"))
    assert [r.cache_hit for r in (*first, *again) if isinstance(r, RunResult)] == [False, False, True, True]
    app.flush()
    assert app.executions.count(ExecutionFilter(program="qa")) == 7  # warm-up, then 2 + 2 + 2 runs


def test_misuse_is_a_clear_error(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="general"):
        app.run_many("qa", [{"question": "a"}], pool="nope")
    with pytest.raises(ConfigurationError, match="shard_size must be >= 1"):
        run_batch(app, "qa", [{"question": "a"}], pool="general", shard_size=0)


def test_evaluation_shards_fill_every_worker_as_soon_as_they_are_queued(
    make_app: Callable[..., App],
) -> None:
    """Shards queued at once go two to a worker (``prefetch``) straight away: a worker's thread that was
    woken for a task another worker took, and went back to waiting on its worker, is woken again when
    what is left in the queue becomes its turn, not at its worker's next message."""
    app = make_app(heartbeat_s=5.0)  # no heartbeat wakes a slot's thread during the test
    pool = app.pools.get("general")
    assert isinstance(pool, Pool)
    remote = app.pooled("sleepy", pool="general")
    remote.predict_batch([{"question": "warm"}], 1).result()
    for attempt in range(5):  # the lost wake-up was a race: give it several chances to show
        futures = [remote.predict_batch([{"question": f"s{i}", "seconds": 1.5}], 2) for i in range(4)]
        held: list[int] = []
        deadline = time.monotonic() + 1.0  # well before the first shard ends
        while time.monotonic() < deadline:
            held = sorted(slot.shards for slot in pool._slots)
            if held == [2, 2]:
                break
            time.sleep(0.005)
        assert held == [2, 2], f"attempt {attempt}: shards held per worker {held}, queue {len(pool._pending)}"
        for future in futures:
            assert future.result()["outcome"]["results"][0]["prediction"]["answer"] == "slept 1.5"
