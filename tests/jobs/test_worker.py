"""The worker with a real App on SQLite and PostgreSQL and the simulated LM: evaluations and
optimizations end to end, cancellation, graceful stop and resume, failures retried or not, lost leases."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from jobs_support import SPACE_DOCUMENT, wait_for

from dspex import Settings
from dspex.errors import ConfigurationError
from dspex.jobs import JobContext, Worker, WorkerEvent, submit_evaluation, submit_optimization
from dspex.runtime import App
from dspex.store.jobs import JobRecord
from dspex.store.schema import jobs
from dspex.testing.server import SimServer

DEV = 12  # dev examples: more than the evaluator's max_errors (10), so an LM outage aborts an evaluation


@pytest.fixture
def app(settings_sim: SimServer, database_url: str, tmp_path: Path) -> Iterator[App]:
    with App(Settings.load(home=tmp_path / "home", database_url=database_url)) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        rows = [
            {**row, "part": "train" if i < 4 else "dev"}
            for i, row in enumerate(settings_sim.task.dicts()[: 4 + DEV])
        ]
        app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
        yield app


def _worker(app: App, events: list[WorkerEvent] | None = None, **kwargs: Any) -> Worker:
    options: dict[str, Any] = {"lease_s": 3.0, "poll_s": 0.05, **kwargs}
    return Worker(app, on_event=events.append if events is not None else None, **options)


def _job(app: App, job_id: str) -> JobRecord:
    job = app.jobs.get(job_id)
    assert job is not None
    return job


def _in_thread(worker: Worker, **kwargs: Any) -> tuple[threading.Thread, list[int]]:
    processed: list[int] = []
    thread = threading.Thread(target=lambda: processed.append(worker.run(**kwargs)), daemon=True)
    thread.start()
    return thread, processed


# -- evaluate ------------------------------------------------------------------------------------------------


def test_evaluation_job_runs_to_a_result(app: App, settings_sim: SimServer) -> None:
    job = submit_evaluation(app, program="qa", dataset="qa-set", metric="f1")
    events: list[WorkerEvent] = []
    assert _worker(app, events).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert (done.status, done.attempts, done.error) == ("succeeded", 1, None)
    result = done.result
    assert result is not None
    assert (result["n"], result["total"], result["errors"], result["metric"]) == (DEV, DEV, 0, "f1")
    assert 0.0 < result["score"] <= 1.0
    assert result["scores"]["f1"] == result["score"]
    assert result["lm_calls"] == DEV == settings_sim.stats().total_requests
    assert result["usage"]["openai/sim-medium"]["calls"] == DEV
    assert result["version_id"] == app.programs.resolve("qa").id
    assert done.progress is not None
    assert (done.progress["done"], done.progress["total"]) == (DEV, DEV)
    assert result["placement"] == {"target": "inline", "reason": "no [routing] rules"}
    assert [(e.kind, e.outcome) for e in events] == [("start", None), ("end", "succeeded")]


def test_a_worker_with_a_pool_runs_evaluation_examples_on_it(app: App, settings_sim: SimServer) -> None:
    job = submit_evaluation(app, program="qa", dataset="qa-set", metric="f1")
    assert _worker(app, pool="general").run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result is not None
    assert (result["n"], result["errors"]) == (DEV, 0)
    # The examples ran in the pool's processes, and their LM calls still count in the job's result.
    assert result["lm_calls"] == DEV == settings_sim.stats().total_requests
    assert result["usage"]["openai/sim-medium"]["calls"] == DEV
    assert app.pools.get("general").status().completed >= 1
    assert result["placement"] == {
        "target": "pool",
        "pool": "general",
        "reason": "the worker's own pool (dspex worker --pool)",
    }
    with pytest.raises(ConfigurationError, match="unknown pool 'gpu'"):
        _worker(app, pool="gpu")


def _routed(database_url: str, tmp_path: Path, routing: dict[str, Any]) -> App:
    """Another App on the test's store (a job worker's process) with ``[routing]`` rules."""
    return App(Settings.load(home=tmp_path / "home", database_url=database_url, routing=routing))


def test_jobs_run_where_the_routing_rules_send_their_program(
    app: App, settings_sim: SimServer, database_url: str, tmp_path: Path
) -> None:
    """A worker without a pool of its own: the router places each job's examples by the program's rule,
    and the result says where and why."""
    evaluation = submit_evaluation(app, program="qa", dataset="qa-set", metric="f1")
    configured = submit_evaluation(
        app, program="qa", dataset="qa-set", variables={"temperature": 0.7}, space=SPACE_DOCUMENT
    )
    optimization = submit_optimization(
        app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=3, seed=3
    )
    on_pool = {"target": "pool", "pool": "general", "reason": "[routing] programs.qa"}
    with _routed(database_url, tmp_path, {"programs": {"qa": "general"}}) as routed:
        assert _worker(routed, kinds=["evaluate"]).run(stop_when_idle=True) == 2
        result = _job(app, evaluation.id).result
        assert result is not None
        assert (result["n"], result["errors"], result["placement"]) == (DEV, 0, on_pool)
        assert result["lm_calls"] == DEV
        assert settings_sim.stats().total_requests == 2 * DEV  # both evaluations' examples, counted
        assert routed.pools.get("general").status().completed >= 2
        # A configured evaluation runs on the pool too: its workers applied the temperature.
        result = _job(app, configured.id).result
        assert result is not None
        assert (result["variables"], result["placement"]) == ({"temperature": 0.7}, on_pool)
        assert {r.temperature for r in settings_sim.requests()[DEV:]} == {0.7}
        assert _worker(routed, kinds=["optimize"]).run(stop_when_idle=True) == 1
        result = _job(app, optimization.id).result
        assert result is not None
        assert (result["finished"], result["placement"]) == (3, on_pool)
    with _routed(database_url, tmp_path, {"default": "inline", "programs": {"other": "general"}}) as routed:
        again = submit_evaluation(app, program="qa", dataset="qa-set")
        assert _worker(routed).run(stop_when_idle=True) == 1
        result = _job(app, again.id).result
        assert result is not None
        assert result["placement"] == {"target": "inline", "reason": "[routing] default"}
        assert routed.pools.started() == []  # nothing was sent to a pool


def test_evaluation_job_applies_variables_through_the_space(app: App) -> None:
    job = submit_evaluation(
        app,
        program="qa",
        dataset="qa-set",
        split="train",
        variables={"temperature": 0.7},
        space=SPACE_DOCUMENT,
    )
    assert _worker(app).run(max_jobs=1) == 1
    result = _job(app, job.id).result
    assert result is not None
    assert (result["variables"], result["n"], result["split"]) == ({"temperature": 0.7}, 4, "train")


# -- optimize ------------------------------------------------------------------------------------------------


def test_app_optimize_places_its_trials_by_the_routing_rules(
    app: App, settings_sim: SimServer, database_url: str, tmp_path: Path
) -> None:
    from dspex.variables.spacefile import space_from_document

    space, bindings = space_from_document(SPACE_DOCUMENT)
    with _routed(database_url, tmp_path, {"programs": {"qa": "general"}}) as routed:
        result = routed.optimize("qa", dataset="qa-set", space=space, bindings=bindings, n_trials=2, seed=1)
        assert result.finished == 2
        # Every trial's examples ran on the pool the rule names, their LM calls counted exactly.
        assert routed.pools.get("general").status().completed >= 2
        assert result.lm_calls == settings_sim.stats().total_requests > 0


def test_optimization_job_runs_to_a_saved_version(app: App) -> None:
    job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=3, seed=3)
    assert _worker(app).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    result = done.result
    assert result is not None
    optimization_id = job.payload["optimization_id"]
    assert (result["optimization_id"], result["finished"], result["n_trials"]) == (optimization_id, 3, 3)
    assert result["lm_calls"] > 0
    assert set(result["best"]) == {"trial", "configuration", "scores"}
    assert "temperature" in result["best"]["configuration"]
    run = app.optimizations.get(optimization_id)
    assert (run.status, run.result_version_id) == ("succeeded", result["version_id"])
    version = app.programs.version(result["version_id"])
    assert version.status == "optimizing"
    assert app.programs.build(version) is not None
    assert done.progress is not None
    assert (done.progress["finished"], done.progress["n_trials"]) == (3, 3)


def test_an_optimization_job_evaluates_its_trials_on_the_pool(app: App, settings_sim: SimServer) -> None:
    job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=3, seed=3)
    assert _worker(app, pool="general").run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result is not None
    assert result["finished"] == 3
    # Every trial's examples ran in the pool's processes (the worker applied each temperature there),
    # and their LM calls are counted exactly.
    assert result["lm_calls"] == settings_sim.stats().total_requests > 0
    temperatures = {r.temperature for r in settings_sim.requests()}
    assert len(temperatures) == 3
    assert app.pools.get("general").status().completed >= 3


@pytest.mark.sim_lm(latency=0.02)
def test_cancelling_a_running_optimization_ends_job_and_run_cancelled(app: App) -> None:
    job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=60)
    events: list[WorkerEvent] = []
    worker = _worker(app, events, lease_s=1.5)
    thread, processed = _in_thread(worker, max_jobs=1)
    try:
        wait_for(
            lambda: (_job(app, job.id).progress or {}).get("finished", 0) >= 1,
            timeout=30,
            what="a finished trial",
        )
        assert app.jobs.cancel(job.id).status == "running"  # seen at the next heartbeat
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert processed == [1]
    done = _job(app, job.id)
    assert done.status == "cancelled"
    optimization_id = job.payload["optimization_id"]
    finished = app.optimizations.count(optimization_id)
    assert 1 <= finished < 60
    assert done.result == {"optimization_id": optimization_id, "finished": finished, "n_trials": 60}
    run = app.optimizations.get(optimization_id)
    assert run.status == "cancelled"
    assert not app.optimizations.trials(optimization_id, states=["running"])  # no trial left half done
    assert events[-1].outcome == "cancelled"


@pytest.mark.sim_lm(latency=0.02)
def test_stop_releases_the_job_and_the_next_worker_resumes_it(app: App) -> None:
    job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=5)
    optimization_id = job.payload["optimization_id"]
    events: list[WorkerEvent] = []
    first = _worker(app, events)
    thread, processed = _in_thread(first)
    try:
        wait_for(lambda: app.optimizations.count(optimization_id) >= 1, timeout=30, what="a finished trial")
        first.stop()
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert processed == [1]
    assert events[-1].outcome == "released"
    released = _job(app, job.id)
    assert (released.status, released.attempts, released.lease_owner) == ("queued", 0, None)
    kept = app.optimizations.count(optimization_id)
    assert kept < 5
    assert app.optimizations.get(optimization_id).status == "running"  # to be resumed, not failed

    assert _worker(app).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    trials = app.optimizations.trials(optimization_id)
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in ("complete", "pruned") for t in trials) == 5
    assert app.optimizations.get(optimization_id).status == "succeeded"


# -- failures ------------------------------------------------------------------------------------------------


def test_user_error_fails_the_job_without_retry_and_is_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    job = submit_evaluation(app, program="qa", dataset="qa-set")
    with app.jobs.db.write() as connection:  # the pinned version disappears (e.g. a restored database)
        payload = {**job.payload, "version_id": "f" * 64}
        connection.execute(sa.update(jobs).where(jobs.c.id == job.id).values(payload=payload))
    with caplog.at_level(logging.ERROR, logger="dspex.jobs"):
        assert _worker(app).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert (done.status, done.attempts) == ("failed", 1)
    assert done.error is not None
    assert (done.error["type"], done.error["code"], done.error["retryable"]) == (
        "ConfigurationError",
        "configuration_error",
        False,
    )
    assert f"unknown version '{'f' * 64}' of program 'qa'; versions:" in done.error["message"]
    assert "traceback" not in done.error  # dspex's own errors say what to do; no traceback needed
    assert any(job.id in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.sim_lm(error_rate=1.0)
def test_run_failure_is_retried_after_a_backoff(app: App) -> None:
    job = submit_evaluation(app, program="qa", dataset="qa-set", max_attempts=2)
    before = dt.datetime.now(dt.UTC)
    events: list[WorkerEvent] = []
    assert _worker(app, events).run(stop_when_idle=True) == 1  # the retry is not due yet
    again = _job(app, job.id)
    assert (again.status, again.attempts) == ("queued", 1)
    assert again.run_after > before + dt.timedelta(seconds=1.5)  # backoff_seconds(1) == 2
    assert again.error is not None
    assert (again.error["type"], again.error["code"], again.error["retryable"]) == (
        "EvaluationAborted",
        "evaluation_aborted",
        True,
    )
    assert again.error["cause"]["type"]  # the first example's failure, chained
    assert [a["attempt"] for a in again.error["attempts"]] == [1]
    assert events[-1].outcome == "retry"


def test_unexpected_exception_is_recorded_with_its_traceback(app: App) -> None:
    def broken(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
        raise RuntimeError("handler bug")

    job = app.jobs.enqueue("broken", {}, max_attempts=1)
    assert Worker(app, handlers={"broken": broken}, poll_s=0.05).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert done.status == "failed"
    assert done.error is not None
    assert (done.error["type"], done.error["message"], done.error["retryable"]) == (
        "RuntimeError",
        "handler bug",
        True,
    )
    assert "raise RuntimeError" in done.error["traceback"]


def test_lost_lease_stops_the_handler_and_writes_nothing(app: App) -> None:
    started = threading.Event()
    seen: list[str | None] = []

    def waits(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
        started.set()
        context.stop_event.wait(timeout=20)
        seen.append(context.stop_reason)
        context.check()
        return {"finished": True}

    job = app.jobs.enqueue("wait", {})
    events: list[WorkerEvent] = []
    worker = Worker(
        app, handlers={"wait": waits}, lease_s=1.0, heartbeat_s=0.1, poll_s=0.05, on_event=events.append
    )
    thread, processed = _in_thread(worker, max_jobs=1)
    try:
        assert started.wait(timeout=20)
        with app.jobs.db.write() as connection:  # another worker took it over (this one stalled)
            connection.execute(
                sa.update(jobs).where(jobs.c.id == job.id).values(lease_owner="thief", attempts=2)
            )
    finally:
        thread.join(timeout=20)
    assert processed == [1]
    assert seen == ["lost"]
    assert events[-1].outcome == "lost"
    after = _job(app, job.id)
    assert (after.status, after.lease_owner, after.result, after.error) == ("running", "thief", None, None)


def test_worker_options_are_checked(app: App) -> None:
    with pytest.raises(ConfigurationError, match="job kind 'optimise'; did you mean 'optimize'"):
        Worker(app, kinds=["optimise"])
    with pytest.raises(ConfigurationError, match="heartbeat_s"):
        Worker(app, lease_s=1.0, heartbeat_s=1.0)
    with pytest.raises(ConfigurationError, match="lease_s"):
        Worker(app, lease_s=0)
    worker = Worker(app, kinds=["evaluate"])
    assert worker.kinds == ("evaluate",)
    assert worker.heartbeat_s == pytest.approx(10.0)
    assert worker.worker_id.count(":") == 2
    worker.stop()
    assert worker.run() == 0  # a stopped worker claims nothing


def test_a_parallel_optimization_job_finishes_with_contiguous_unique_trials(app: App) -> None:
    job = submit_optimization(
        app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=6, seed=4, parallel=3
    )
    assert job.payload["parallel"] == 3  # stored with the job's spec
    assert _worker(app).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert done.status == "succeeded", done.error
    assert done.result is not None
    assert (done.result["finished"], done.result["parallel"]) == (6, 3)
    trials = app.optimizations.trials(job.payload["optimization_id"])
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in ("complete", "pruned") for t in trials) == 6
    assert not [t for t in trials if t.state == "running"]


@pytest.mark.parametrize("parallel", [0, 65, True, 2.0])
def test_parallel_is_a_bounded_count(app: App, parallel: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"parallel must be a whole number from 1 to 64"):
        submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=2, parallel=parallel
        )
    assert app.jobs.list() == []


def test_a_payload_with_a_bad_parallel_fails_the_job_without_retry(app: App) -> None:
    job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=2)
    with app.jobs.db.write() as connection:  # a payload written by something other than submit_optimization
        connection.execute(
            sa.update(jobs).where(jobs.c.id == job.id).values(payload={**job.payload, "parallel": 500})
        )
    assert _worker(app).run(stop_when_idle=True) == 1
    done = _job(app, job.id)
    assert (done.status, done.attempts) == ("failed", 1)
    assert done.error is not None
    assert "payload field 'parallel' must be a whole number from 1 to 64" in str(done.error)
