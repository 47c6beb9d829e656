"""A pool of Ray actors: the process pool's interface, records and health, on a local Ray cluster."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspex.errors import WorkerError
from dspex.optimize import Evaluator
from dspex.optimize.metrics import exact_match
from dspex.pools.ray_pool import RayPool
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster (2 CPUs) for these tests: starting one costs seconds. Pools with
    backend = 'ray' join it instead of starting their own. Stopped after this module: its processes
    would otherwise take CPU from the rest of the suite. (Here, not in a conftest.py: tests/server
    imports its conftest by name.)"""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def app(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    home = tmp_path_factory.mktemp("ray")
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home}/r.db",
        pools={
            "cluster": {
                "backend": "ray",
                "size": 2,
                "actor_cpus": 0.5,
                "initializer": "dist_programs:scripted",
            },
            "frozen": {
                "backend": "ray",
                "size": 1,
                "actor_cpus": 0.25,
                "heartbeat_s": 0.1,
                "hung_after_s": 1.0,
            },
            "slow": {
                "backend": "ray",
                "size": 1,
                "actor_cpus": 0.25,
                "task_timeout_s": 1.0,
                "heartbeat_s": 0.1,
            },
            "prompted": {
                "backend": "ray",
                "size": 2,
                "actor_cpus": 0.25,
                "initializer": "dist_programs:prompt_aware",
            },
        },
        routing={"programs": {"routed": "cluster"}},
    )
    with App(settings) as app:
        app.programs.register("qa", "dist_programs:build_qa")
        app.programs.register("routed", "dist_programs:build_qa")
        app.programs.register("sleepy", "dist_programs:build_sleepy")
        app.programs.register("hog", "dist_programs:build_hog")
        yield app


def _devset(n: int) -> list[dspy.Example]:
    # Even examples expect what the scripted LM answers, odd ones do not: the score is 0.5.
    return [
        dspy.Example(question=f"q{i}", answer=f"answer to q{i}" if i % 2 == 0 else "wrong").with_inputs(
            "question"
        )
        for i in range(n)
    ]


def test_a_run_on_ray_is_recorded_by_the_driver_with_its_placement(app: App) -> None:
    result = app.run("qa", {"question": "hi"}, pool="cluster")
    assert result.outputs["answer"] == "answer to hi"
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    placement = record.placement or {}
    assert placement["target"] == "pool"
    assert placement["pool"] == "cluster"
    assert placement["worker"] in ("cluster-0", "cluster-1")
    assert isinstance(placement["pid"], int)
    status = app.pools.get("cluster").status()
    assert isinstance(app.pools.get("cluster"), RayPool)
    assert status.healthy
    assert status.size == 2
    assert all(w.pid for w in status.workers)
    assert status.completed >= 1


def test_the_router_sends_a_program_to_the_ray_pool(app: App) -> None:
    result = app.run("routed", {"question": "r"})
    assert result.outputs["answer"] == "answer to r"
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert (record.placement or {})["reason"] == "[routing] programs.routed"


def test_an_unknown_program_fails_its_run_with_a_terminal_record(app: App) -> None:
    with pytest.raises(Exception, match="nope"):
        app.run("nope", {"question": "x"}, pool="cluster")


def test_a_distributed_evaluation_scores_as_the_local_one_and_reports_progress(app: App) -> None:
    devset = _devset(40)
    seen: list[int] = []
    on_ray = Evaluator(exact_match, concurrency=4, cache=False, progress=lambda d, t, s: seen.append(d)).run(
        app.pooled("qa", pool="cluster"), devset
    )
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    local = Evaluator(exact_match, concurrency=4, cache=False).run(
        app.programs.load("qa"), devset, lm=engine.lm(cache=False)
    )
    assert on_ray.score == local.score == 0.5
    assert [r.prediction for r in on_ray.records] == [r.prediction for r in local.records]
    assert [r.score for r in on_ray.records] == [r.score for r in local.records]
    assert seen == list(range(1, 41))


def test_an_actor_killed_mid_evaluation_loses_nothing(app: App, ray_cluster: Any) -> None:
    pool = app.pools.get("cluster")
    assert isinstance(pool, RayPool)
    devset = [
        dspy.Example(question=f"q{i}", seconds=0.1, answer="slept 0.1").with_inputs("question", "seconds")
        for i in range(24)
    ]
    killed = threading.Event()

    def progress(done: int, total: int, score: float) -> None:
        if done == 2 and not killed.is_set():  # mid-evaluation: shards are on both actors
            killed.set()
            ray_cluster.kill(pool.actor(0), no_restart=False)

    before = pool.status().replaced.get("died", 0)
    result = Evaluator(exact_match, concurrency=4, cache=False, progress=progress).run(
        app.pooled("sleepy", pool="cluster"), devset
    )
    assert killed.is_set()
    assert len(result.records) == 24
    assert result.score == 1.0
    assert all(r.error is None for r in result.records)
    deadline = time.monotonic() + 30  # Ray restarts the actor: the pool is whole again
    while not pool.status().healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.status().healthy
    assert pool.status().replaced.get("died", 0) == before + 1


def test_a_task_over_its_timeout_fails_and_the_actor_is_restarted(app: App) -> None:
    pool = app.pools.get("slow")
    future = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "x", "seconds": 30}})
    with pytest.raises(WorkerError) as caught:
        future.result(timeout=30)
    assert caught.value.code == "task_timeout"
    deadline = time.monotonic() + 30  # Ray restarts the actor; the pool's ping sees the new process
    while not pool.status().healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.status().replaced.get("task_timeout") == 1
    again = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "y"}}).result(timeout=30)
    assert again["outcome"]["status"] == "succeeded"


async def test_a_stream_on_ray_sends_the_tokens_and_leaves_the_record_of_an_inline_stream(app: App) -> None:
    from dspex.runtime.stream import RunFinished, RunStarted, RunStream, StreamEvent, TokenEvent

    async def events(stream: RunStream) -> list[StreamEvent]:
        return [event async for event in stream.events()]

    def tokens(events: list[StreamEvent], field: str) -> list[str]:
        return [e.chunk for e in events if isinstance(e, TokenEvent) and e.field == field]

    on_ray = await events(await RunStream.open(app, "qa", {"question": "streamed?"}, pool="cluster"))
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    inline = await events(
        await RunStream.open(app, "qa", {"question": "streamed?"}, lm=engine.lm(cache=False))
    )
    assert isinstance(on_ray[0], RunStarted)
    assert isinstance(on_ray[-1], RunFinished)
    assert isinstance(inline[-1], RunFinished)
    assert len(tokens(on_ray, "answer")) > 1  # chunks as the actor's LM wrote them, not one piece at the end
    assert tokens(on_ray, "answer") == tokens(inline, "answer")
    assert tokens(on_ray, "reasoning") == tokens(inline, "reasoning")
    assert on_ray[-1].result.outputs == inline[-1].result.outputs
    assert on_ray[-1].result.outputs["answer"] == "answer to streamed?"
    app.flush()
    record = app.executions.get(on_ray[0].execution_id)
    here = app.executions.get(inline[0].execution_id)
    assert record is not None
    assert here is not None
    assert record.status == here.status == "succeeded"
    assert record.outputs == here.outputs
    assert record.total_tokens == here.total_tokens > 0
    placement = record.placement or {}
    assert placement["pool"] == "cluster"
    assert placement["worker"] in ("cluster-0", "cluster-1")
    assert placement["pid"] != os.getpid()
    assert record.trace is not None
    assert here.trace is not None
    assert [(s["kind"], s["name"]) for s in record.trace["spans"]] == [
        (s["kind"], s["name"]) for s in here.trace["spans"]
    ]


async def test_the_service_streams_from_a_ray_actor(app: App) -> None:
    import json

    import httpx

    from dspex.server import ServiceOptions, create_app

    runner = app.keys.create("ray-ci", ["runs:execute"])[1]
    api = create_app(app, options=ServiceOptions(pool="cluster"))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://dspex.test") as client:
        response = await client.post(
            "/v1/programs/qa/runs/stream",
            json={"inputs": {"question": "over http?"}},
            headers={"Authorization": f"Bearer {runner}"},
        )
    assert response.status_code == 200, response.text
    events = []  # (event, data) of each server-sent event
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        if "data" in lines:
            events.append((lines.get("event", "message").strip(), json.loads(lines["data"])))
    assert events[0][0] == "start"
    assert events[-1][0] == "result"
    chunks = [data["chunk"] for kind, data in events if kind == "token" and data["field"] == "answer"]
    assert len(chunks) > 1
    assert "".join(chunks) == "answer to over http?"
    app.flush()
    record = app.executions.get(events[-1][1]["execution_id"])
    assert record is not None
    assert record.status == "succeeded"
    assert (record.placement or {})["pool"] == "cluster"


async def test_a_stream_whose_actor_dies_ends_failed_with_a_terminal_record(
    app: App, ray_cluster: Any
) -> None:
    from dspex.runtime.stream import RunFailed, RunStarted, RunStream

    pool = app.pools.get("cluster")
    assert isinstance(pool, RayPool)
    stream = await RunStream.open(app, "sleepy", {"question": "?", "seconds": 30}, pool="cluster")
    events = stream.events()
    started = await anext(events)
    assert isinstance(started, RunStarted)
    end = asyncio.ensure_future(anext(events))
    for _ in range(500):  # until an actor holds the task
        busy = [i for i, w in enumerate(pool.status().workers) if w.state == "busy"]
        if busy:
            break
        await asyncio.sleep(0.02)
    assert busy
    before = pool.status().replaced.get("died", 0)
    ray_cluster.kill(pool.actor(busy[0]), no_restart=False)
    failed = await asyncio.wait_for(end, 30)
    assert isinstance(failed, RunFailed)
    assert getattr(failed.error, "code", None) == "worker_lost"
    await events.aclose()
    app.flush()
    record = app.executions.get(started.execution_id)
    assert record is not None
    assert record.status == "failed"
    assert (record.error or {})["code"] == "worker_lost"
    deadline = time.monotonic() + 30  # Ray restarts the actor: the pool is whole again
    while not pool.status().healthy and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pool.status().replaced.get("died", 0) == before + 1


async def test_closing_a_stream_on_ray_records_it_cancelled_and_the_late_outcome_is_dropped(app: App) -> None:
    from dspex.runtime.stream import RunStarted, RunStream

    pool = app.pools.get("cluster")
    assert isinstance(pool, RayPool)
    stream = await RunStream.open(app, "sleepy", {"question": "?", "seconds": 1.0}, pool="cluster")
    events = stream.events()
    started = await anext(events)
    assert isinstance(started, RunStarted)
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await events.aclose()
    # As on a process pool, the actor finishes the run (a sync program cannot be interrupted); its
    # outcome, arriving after the cancel, changes nothing: the record stays cancelled.
    deadline = time.monotonic() + 30
    while any(w.state == "busy" for w in pool.status().workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    app.flush()
    record = app.executions.get(started.execution_id)
    assert record is not None
    assert record.status == "cancelled"
    assert app.run("sleepy", {"question": "again"}, pool="cluster").outputs["answer"] == "slept 0.0"


def _recycling_pool(app: App, name: str, **setting: Any) -> RayPool:
    from dspex.settings import PoolSetting

    # actor_cpus=0: the module's pools hold the cluster's 2 CPUs between them
    options = {"backend": "ray", "size": 1, "actor_cpus": 0, "heartbeat_s": 0.1, **setting}
    return RayPool(name, PoolSetting.model_validate(options), app.settings).start()


def _pid(pool: RayPool, program: str, inputs: dict[str, Any]) -> int:
    outcome = pool.submit({"program": {"name": program}, "inputs": inputs}).result(timeout=60)["outcome"]
    assert outcome["status"] == "succeeded", outcome
    return int(outcome["outputs"]["pid"])


def test_actors_are_recycled_after_max_tasks(app: App) -> None:
    with _recycling_pool(app, "counted", max_tasks=3) as pool:
        pids = [_pid(pool, "sleepy", {"question": "q"}) for _ in range(7)]
        assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
        assert pool.status().replaced == {"max_tasks": 2}
        assert pool.status().workers[0].tasks == 1  # counted per process


def test_a_leaking_program_on_ray_is_recycled_and_its_memory_stays_bounded(app: App) -> None:
    with _recycling_pool(app, "probe") as probe:  # an actor's own size, before any leak
        _pid(probe, "sleepy", {"question": "q"})
        base = probe.status().workers[0].rss_mb or 0.0
    assert base > 0
    limit = int(base) + 150
    with _recycling_pool(app, "leaky", max_rss_mb=limit) as pool:
        peak, pids = 0.0, set()
        for _ in range(12):  # 40 MB more per task: without recycling the actor would reach base + 480 MB
            pids.add(_pid(pool, "hog", {"mb": 40}))
            peak = max(peak, pool.status().workers[0].rss_mb or 0.0)
        deadline = time.monotonic() + 60  # a recycle the last task started: until its new process answers
        while not pool.status().healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        status = pool.status()
        assert status.replaced.get("max_rss", 0) >= 2
        assert set(status.replaced) == {"max_rss"}
        # each recycle is a new process, none lost (the last one may have run no task yet)
        assert len(pids) in (status.replaced["max_rss"], status.replaced["max_rss"] + 1)
        assert peak < limit + 40 + 20  # at most one task's leak over the limit before it is recycled
        assert status.size == 1


def test_a_task_over_kill_rss_mb_fails_with_memory_limit_and_its_actor_is_restarted(app: App) -> None:
    with _recycling_pool(app, "probe") as probe:  # an actor's own size, before any leak
        _pid(probe, "sleepy", {"question": "q"})
        base = probe.status().workers[0].rss_mb or 0.0
    limit = int(base) + 100
    with _recycling_pool(app, "capped", kill_rss_mb=limit) as pool:
        first = _pid(pool, "sleepy", {"question": "q"})
        future = pool.submit({"program": {"name": "hog"}, "inputs": {"mb": 300, "hold_s": 5.0}})
        with pytest.raises(WorkerError, match=rf"over the pool's memory limit of {limit} MB") as caught:
            future.result(timeout=60)
        assert caught.value.code == "memory_limit"
        assert _pid(pool, "sleepy", {"question": "q"}) != first  # Ray restarted it; the pool waited for it
        assert pool.status().replaced == {"memory_limit": 1}


def test_an_idle_actor_past_its_ttl_is_recycled(app: App) -> None:
    with _recycling_pool(app, "aging", ttl_s=1.0) as pool:
        first = _pid(pool, "sleepy", {"question": "q"})
        deadline = time.monotonic() + 60
        while pool.status().replaced.get("ttl", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.status().replaced.get("ttl", 0) >= 1
        assert _pid(pool, "sleepy", {"question": "q"}) != first


def test_a_batch_runs_on_the_ray_pool_with_a_record_per_input(app: App) -> None:
    from dspex.distributed.batch import run_batch

    inputs = [{"question": f"b{i}"} for i in range(6)]
    lines = run_batch(app, "qa", inputs, pool="cluster", concurrency=4)
    assert [line.outputs["answer"] for line in lines if line.outputs] == [f"answer to b{i}" for i in range(6)]
    app.flush()
    workers = set()
    for line in lines:
        record = app.executions.get(line.execution_id or "")
        assert record is not None
        assert record.status == "succeeded"
        workers.add((record.placement or {})["worker"])
    assert workers <= {"cluster-0", "cluster-1"}


def test_an_optimization_runs_two_trials_at_once_on_the_ray_actors(
    ray_cluster: Any, sim_lm_server: Any, tmp_path: Path
) -> None:
    from dspex.variables import Variable, VariableSpace, bind

    settings = Settings(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path}/opt.db",
        lm="openai/sim-large",
        api_base=sim_lm_server.url,
        api_key="sim",
        lm_cache=False,
        pools={"trials": {"backend": "ray", "size": 2, "actor_cpus": 0.25}},  # the 2-CPU cluster: 1.75 in all
    )
    with App(settings) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        app.datasets.import_records("qa-set", sim_lm_server.task.dicts()[:12], inputs=["question"])
        result = app.optimize(
            "qa",
            dataset="qa-set",
            space=VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
            bindings=[bind.temperature("temperature")],
            n_trials=6,
            pruning=False,
            pool="trials",
            parallel=2,
        )
        assert result.finished == 6
        trials = app.optimizations.trials(result.id)
        assert [t.number for t in trials] == list(range(6))
        assert all(t.state == "complete" for t in trials)
        assert app.pools.get("trials").status().completed >= 6  # every trial's shards ran on the actors
        spans = sorted((t.started_at, t.finished_at) for t in trials)
        assert any(b[0] < a[1] for a, b in itertools.pairwise(spans) if a[1] is not None)  # overlapped


def test_a_hung_actor_is_killed_and_restarted(app: App) -> None:
    pool = app.pools.get("frozen")
    pid = pool.status().workers[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing: not even a ping
    future = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "x"}})
    with pytest.raises(WorkerError) as caught:
        future.result(timeout=30)
    assert caught.value.code == "worker_lost"
    deadline = time.monotonic() + 30
    while not pool.status().healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    status = pool.status()
    assert status.replaced == {"hung": 1}
    assert status.workers[0].pid != pid
    again = pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "y"}}).result(timeout=30)
    assert again["outcome"]["status"] == "succeeded"


def test_mipro_on_ray_actors_matches_mipro_in_process(app: App) -> None:
    from dist_programs import prompt_aware_engine

    from dspex.distributed.prompts import PooledMIPROv2

    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return bool(example.answer == prediction.answer)

    def examples(start: int, n: int) -> list[dspy.Example]:
        return [
            dspy.Example(question=f"q{i}", answer=f"answer to q{i}").with_inputs("question")
            for i in range(start, start + n)
        ]

    options: dict[str, Any] = {
        "auto": None,
        "num_candidates": 3,
        "num_threads": 4,
        "max_bootstrapped_demos": 1,
        "max_labeled_demos": 1,
        "verbose": False,
    }
    run: dict[str, Any] = {
        "trainset": examples(0, 8),
        "valset": examples(100, 10),
        "num_trials": 6,
        "minibatch_size": 4,
        "minibatch_full_eval_steps": 2,
        "seed": 7,
    }
    lm = prompt_aware_engine().lm(cache=False)
    with dspy.context(lm=lm):
        local = dspy.MIPROv2(metric, prompt_model=lm, task_model=lm, **options).compile(
            app.programs.load("qa"), **run
        )
        on_ray = PooledMIPROv2.from_app(
            app, "qa", pool="prompted", metric=metric, prompt_model=lm, task_model=lm, **options
        ).compile(app.programs.load("qa"), **run)

    def summary(program: Any) -> Any:
        trials = {
            k: {name: value for name, value in v.items() if isinstance(value, int | float | str | bool)}
            for k, v in program.trial_logs.items()
        }
        return program.score, [c["score"] for c in program.candidate_programs], trials, program.dump_state()

    assert summary(on_ray) == summary(local)
    assert len(set(summary(local)[1])) > 1  # the candidates scored apart
    assert app.pools.get("prompted").status().completed > 0  # evaluated on the actors
