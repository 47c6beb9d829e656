"""Shards of runs on Ray actors: the guarantees of ``tests/pools/test_shards.py`` (process pools), on a
local Ray cluster (``ray_cluster`` from ``test_ray_pool.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_ray_pool import ray_cluster  # noqa: F401 (a fixture: one local cluster for this module)

from dspex.distributed.batch import run_batch
from dspex.errors import ValidationError, WorkerError
from dspex.pools.ray_pool import RayPool
from dspex.runtime.app import App
from dspex.runtime.run import RunResult
from dspex.settings import Settings


@pytest.fixture(scope="module")
def app(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:  # noqa: F811
    home = tmp_path_factory.mktemp("ray-shards")
    one = {"backend": "ray", "size": 1, "actor_cpus": 0.25, "heartbeat_s": 0.1}
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home}/r.db",
        max_input_bytes=2000,
        pools={
            "cluster": {
                "backend": "ray",
                "size": 2,
                "actor_cpus": 0.5,
                "initializer": "dist_programs:scripted",
            },
            "one": {**one, "initializer": "dist_programs:scripted"},
            "counted": {**one, "max_tasks": 3},
        },
    )
    with App(settings) as app:
        app.programs.register("qa", "dist_programs:build_qa")
        app.programs.register("sleepy", "dist_programs:build_sleepy")
        yield app


def spy_on(pool: RayPool, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every payload ``pool`` is given, in order (the real submit still runs)."""
    payloads: list[dict[str, Any]] = []
    submit = pool.submit

    def spy(payload: dict[str, Any], **kwargs: Any) -> Any:
        payloads.append(payload)
        return submit(payload, **kwargs)

    monkeypatch.setattr(pool, "submit", spy)
    return payloads


def _ray_pool(app: App, name: str) -> RayPool:
    pool = app.pools.get(name)
    assert isinstance(pool, RayPool)
    return pool


def test_a_shard_on_ray_is_one_task_and_each_run_is_recorded_as_alone(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _ray_pool(app, "cluster")
    alone = app.run("qa", {"question": "q0"}, pool="cluster")
    before = pool.status().completed
    payloads = spy_on(pool, monkeypatch)
    results = app.run_many("qa", [{"question": f"q{i}"} for i in range(5)], pool="cluster")
    assert [p["kind"] for p in payloads] == ["runs"]
    assert len(payloads[0]["runs"]) == 5
    done = [r for r in results if isinstance(r, RunResult)]
    assert [r.outputs["answer"] for r in done] == [f"answer to q{i}" for i in range(5)]
    assert pool.status().completed == before + 5  # the pool counts runs, not messages
    app.flush()
    single = app.executions.get(alone.execution_id)
    assert single is not None
    assert single.trace is not None
    records = [app.executions.get(r.execution_id) for r in done]
    assert len({r.execution_id for r in done}) == 5
    for record in records:
        assert record is not None
        assert record.status == "succeeded"
        assert record.placement is not None
        assert record.placement["pool"] == "cluster"
        assert record.placement["attempts"] == 1
        assert record.total_tokens == single.total_tokens
        assert record.trace is not None
        assert [s["kind"] for s in record.trace["spans"]] == [s["kind"] for s in single.trace["spans"]]
    assert len({(r.placement or {})["worker"] for r in records if r is not None}) == 1


def test_a_run_of_a_shard_on_ray_lasts_what_the_actor_measured(app: App) -> None:
    inputs = [{"question": "a", "seconds": 0.3}, {"question": "b", "seconds": 0.0}]
    first, second = app.run_many("sleepy", inputs, pool="one")
    assert isinstance(first, RunResult)
    assert isinstance(second, RunResult)
    assert first.duration_ms >= 300
    assert second.duration_ms < 150  # its 0.3 s wait behind the first is not its own
    assert first.outputs["pid"] == second.outputs["pid"]


def test_bad_runs_of_a_shard_on_ray_fail_alone(app: App) -> None:
    inputs = [{"question": "ok"}, {"wrong": "field"}, {"question": "x" * 5000}, {"question": "fine"}]
    ok, wrong, big, fine = app.run_many("qa", inputs, pool="cluster")
    assert isinstance(ok, RunResult)
    assert ok.outputs["answer"] == "answer to ok"
    assert isinstance(fine, RunResult)
    assert fine.outputs["answer"] == "answer to fine"
    assert isinstance(wrong, ValidationError)
    assert isinstance(big, ValidationError)
    app.flush()
    for failed in (wrong, big):
        record = app.executions.get(getattr(failed, "execution_id", None) or "")
        assert record is not None
        assert record.status == "failed"
        assert (record.error or {})["code"] == "validation_error"


def _kill_when_busy(pool: RayPool, ray: Any, killed: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pool.status().workers[0].state == "busy":
            time.sleep(0.2)  # mid-shard: the first run is under way
            ray.kill(pool.actor(0), no_restart=False)
            killed.set()
            return
        time.sleep(0.01)


@pytest.mark.parametrize("idempotent", [False, True])
def test_an_actor_lost_mid_shard(app: App, ray_cluster: Any, idempotent: bool) -> None:  # noqa: F811
    pool = _ray_pool(app, "one")
    app.run("sleepy", {"question": "warm"}, pool="one")
    died = pool.status().replaced.get("died", 0)
    killed = threading.Event()
    killer = threading.Thread(target=_kill_when_busy, args=(pool, ray_cluster, killed))
    killer.start()
    inputs = [{"question": f"q{i}", "seconds": 0.3} for i in range(3)]
    results = app.run_many("sleepy", inputs, pool="one", idempotent=idempotent)
    killer.join()
    assert killed.is_set()
    app.flush()
    for result in results:
        if idempotent:  # sent once more, as a shard of their own, to the restarted actor
            assert isinstance(result, RunResult)
            record = app.executions.get(result.execution_id)
            assert record is not None
            assert record.status == "succeeded"
            assert (record.placement or {})["attempts"] == 2
        else:  # every run of the shard fails: its outcomes were to come back together
            assert isinstance(result, WorkerError)
            assert result.code == "worker_lost"
            record = app.executions.get(result.execution_id or "")
            assert record is not None
            assert record.status == "failed"
            assert (record.error or {})["code"] == "worker_lost"
    after = app.run("sleepy", {"question": "after"}, pool="one")
    assert after.outputs["answer"] == "slept 0.0"
    assert pool.status().replaced.get("died", 0) == died + 1


def test_a_shards_runs_count_for_max_tasks_recycling(app: App) -> None:
    pool = _ray_pool(app, "counted")
    first = app.run_many("sleepy", [{"question": f"q{i}"} for i in range(3)], pool="counted")
    pids = {r.outputs["pid"] for r in first if isinstance(r, RunResult)}
    assert len(pids) == 1  # one actor ran the 3 runs: max_tasks reached, it is recycled
    deadline = time.monotonic() + 60
    while pool.status().replaced.get("max_tasks", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.status().replaced == {"max_tasks": 1}
    again = app.run("sleepy", {"question": "next"}, pool="counted")
    assert again.outputs["pid"] not in pids


def test_a_batch_on_a_ray_pool_goes_in_shards(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = spy_on(_ray_pool(app, "cluster"), monkeypatch)
    inputs = [{"question": f"b{i}"} for i in range(9)] + [{"wrong": "x"}]
    lines = run_batch(app, "qa", inputs, pool="cluster", shard_size=4)
    assert [line.index for line in lines] == list(range(10))
    assert [line.outputs["answer"] for line in lines[:9] if line.outputs] == [
        f"answer to b{i}" for i in range(9)
    ]
    assert lines[9].status == "failed"
    assert (lines[9].error or {})["code"] == "validation_error"
    assert sorted(len(p["runs"]) for p in payloads) == [2, 4, 4]
    app.flush()
    for line in lines:
        record = app.executions.get(line.execution_id or "")
        assert record is not None
        assert record.status == line.status
