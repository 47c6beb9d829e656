"""One optimization job driven by several workers (``submit_optimization(drivers=N)``): two real ``dspex
worker`` processes on SQLite and PostgreSQL share its run with contiguous, unique trials; one worker alone
runs the owner first and the joining job finds nothing left; a cancelled owner calls its joiners off."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import SPACE_DOCUMENT, wait_for

from dspex import Settings
from dspex.distributed.drivers import Driver
from dspex.errors import ConfigurationError
from dspex.jobs import JobContext, Worker, submit_optimization
from dspex.runtime import App
from dspex.store._time import utcnow
from dspex.store.jobs import JobRecord
from dspex.testing.server import SimServer

N_TRIALS = 10


@pytest.fixture
def sim() -> Iterator[SimServer]:
    # About 0.1 s per LM call: a trial (growing minibatches, 8 at a time) takes a few tenths of a second.
    with SimServer(latency=0.1, latency_scale=0.0, task_size=40) as server:
        yield server


def _env(home: Path, database_url: str, sim: SimServer) -> dict[str, str]:
    return {
        **os.environ,
        "DSPEX_HOME": str(home),
        "DSPEX_DATABASE_URL": database_url,
        "DSPEX_LM": "openai/sim-large",
        "DSPEX_API_BASE": sim.url,
        "DSPEX_API_KEY": "sim",
        "DSPEX_LM_CACHE": "false",
        "DSPEX_NUM_RETRIES": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def _app(home: Path, database_url: str, sim: SimServer) -> App:
    app = App(Settings.load(home=home, database_url=database_url))
    app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
    app.datasets.import_records("qa-set", sim.task.dicts()[:10], inputs=["question"])
    return app


def _joiners(app: App, owner: JobRecord) -> list[JobRecord]:
    return [
        j
        for j in app.jobs.list(kind="optimize")
        if j.payload.get("join") and j.payload["optimization_id"] == owner.payload["optimization_id"]
    ]


def test_two_worker_processes_drive_one_optimization_job(
    database_url: str, sim: SimServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with _app(home, database_url, sim) as app:
        owner = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=N_TRIALS, drivers=2
        )
        (joiner,) = _joiners(app, owner)
        assert joiner.id[:16] != owner.id[:16]
        assert app.jobs.get(owner.id) is not None
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dspex.cli",
                    "worker",
                    "--until-idle",
                    "--poll",
                    "0.05",
                    "--lease",
                    "5",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_env(home, database_url, sim),
            )
            for _ in range(2)
        ]
        try:
            logs = [w.communicate(timeout=180)[0].decode() for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.communicate(timeout=30)
        assert [w.returncode for w in workers] == [0, 0], logs
        done_owner, done_joiner = app.jobs.get(owner.id), app.jobs.get(joiner.id)
        assert done_owner is not None
        assert done_joiner is not None
        assert (done_owner.status, done_joiner.status) == ("succeeded", "succeeded"), logs
        trials = app.optimizations.trials(owner.payload["optimization_id"])
        run = app.optimizations.get(owner.payload["optimization_id"])
    assert [t.number for t in trials] == list(range(len(trials)))  # contiguous, none twice
    assert sum(t.state in ("complete", "pruned") for t in trials) == N_TRIALS
    assert not [t for t in trials if t.state == "running"]
    pids = {Driver.parse(t.driver).pid for t in trials if t.driver and Driver.parse(t.driver)}  # type: ignore[union-attr]
    assert pids == {w.pid for w in workers}  # both worker processes ran trials
    assert done_owner.result is not None
    assert done_joiner.result is not None
    assert done_joiner.result["joined"] is True
    assert done_joiner.result["finished"] == N_TRIALS
    assert (run.status, run.result_version_id) == ("succeeded", done_owner.result["version_id"])


def test_one_worker_runs_the_owner_first_and_the_joiner_finds_nothing_left(
    sim: SimServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/one.db"
    with _app(tmp_path / "home", url, sim) as app:
        owner = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=2, drivers=3
        )
        joiners = _joiners(app, owner)
        assert len(joiners) == 2
        assert Worker(app, lease_s=5, poll_s=0.05).run(stop_when_idle=True) == 3
        assert app.jobs.get(owner.id).status == "succeeded"  # type: ignore[union-attr]
        for joiner in joiners:
            done = app.jobs.get(joiner.id)
            assert done is not None
            assert done.status == "succeeded"
            assert done.result is not None
            assert (done.result["joined"], done.result["reason"]) == (False, "the run is succeeded")
        with pytest.raises(ConfigurationError, match="drivers must be a whole number from 1 to 16"):
            submit_optimization(
                app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=2, drivers=17
            )


def test_a_cancelled_owner_calls_its_joiners_off(sim: SimServer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cancel.db"
    with _app(tmp_path / "home", url, sim) as app:
        owner = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=200, drivers=2
        )
        (joiner,) = _joiners(app, owner)
        workers = [Worker(app, lease_s=5, poll_s=0.05) for _ in range(2)]
        threads = [
            threading.Thread(target=w.run, kwargs={"stop_when_idle": True}, daemon=True) for w in workers
        ]
        for thread in threads:
            thread.start()
        run_id = owner.payload["optimization_id"]
        # Both drivers are at work once each has a trial of its own in the run.
        wait_for(
            lambda: len({t.driver for t in app.optimizations.trials(run_id) if t.driver}) == 2,
            timeout=60,
            what="both drivers to run trials",
        )
        app.jobs.cancel(owner.id)
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        done_owner, done_joiner = app.jobs.get(owner.id), app.jobs.get(joiner.id)
        assert done_owner is not None
        assert done_joiner is not None
        assert (done_owner.status, done_joiner.status) == ("cancelled", "cancelled")
        assert app.optimizations.get(run_id).status == "cancelled"
        trials = app.optimizations.trials(run_id)
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not [t for t in trials if t.state == "running"]  # every trial in flight was recorded
    assert sum(t.state in ("complete", "pruned") for t in trials) < 200


def test_a_retried_owner_job_resumes_its_run_with_its_joiners(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/retry.db"
    with _app(tmp_path / "home", url, sim) as app:
        owner = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=24, drivers=2, max_attempts=2
        )
        (joiner,) = _joiners(app, owner)
        run_id = owner.payload["optimization_id"]
        failed_at: list[dt.datetime] = []
        report = JobContext.report

        def failing_once(context: JobContext, progress: Any) -> None:
            # The owner's first attempt fails mid-run (a fault of its own process, e.g. its store writes):
            # its optimize() records the run failed and the job is retried after its backoff.
            drivers = {t.driver for t in app.optimizations.trials(run_id) if t.driver}
            if context.job.id == owner.id and not failed_at and len(drivers) == 2:
                failed_at.append(utcnow())
                raise RuntimeError("the owner's attempt fails here (injected by the test)")
            report(context, progress)

        monkeypatch.setattr(JobContext, "report", failing_once)
        workers = [Worker(app, lease_s=5, poll_s=0.05) for _ in range(2)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        try:
            wait_for(
                lambda: all((j := app.jobs.get(job.id)) is not None and j.done for job in (owner, joiner)),
                timeout=120,
                what="the owner and its joiner to end",
            )
        finally:
            for w in workers:
                w.stop()
            for thread in threads:
                thread.join(60)
        done_owner, done_joiner = app.jobs.get(owner.id), app.jobs.get(joiner.id)
        assert done_owner is not None
        assert done_joiner is not None
        assert failed_at  # the fault happened, with both drivers at work
        assert (done_owner.status, done_owner.attempts) == ("succeeded", 2)
        assert done_joiner.status == "succeeded"  # not cancelled when the first attempt failed
        assert done_joiner.result is not None
        assert done_joiner.result["joined"] is True
        run = app.optimizations.get(run_id)
        trials = app.optimizations.trials(run_id)
    assert run.status == "succeeded"
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in ("complete", "pruned") for t in trials) == 24
    # After the failure two new drivers resumed the run: the retried owner and the joiner that came back
    # (the first joiner may still have claimed a trial before it saw the run fail: it is not new).
    first: dict[str | None, dt.datetime] = {}
    for t in trials:
        first[t.driver] = min(first.get(t.driver, t.started_at), t.started_at)
    assert len({d for d, at in first.items() if at > failed_at[0]}) == 2


def test_a_joiner_that_finds_the_run_ended_as_it_joins_leaves_nothing_to_do(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: a joining job sees the run running, and the run ends before its driver joins it. Here the
    # joiner's look at the run is made stale (as the race leaves it) once the owner has ended the run.
    url = f"sqlite:///{tmp_path}/race.db"
    with _app(tmp_path / "home", url, sim) as app:
        owner = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=2, drivers=2
        )
        (joiner,) = _joiners(app, owner)
        run_id = owner.payload["optimization_id"]
        runs = app.optimizations.runs
        stale: list[str] = []

        def looked_at_before_it_ended(program: str | None = None) -> list[Any]:
            found = runs(program)
            stale.extend(r.status for r in found if r.id == run_id)
            return [dataclasses.replace(r, status="running") if r.id == run_id else r for r in found]

        monkeypatch.setattr(app.optimizations, "runs", looked_at_before_it_ended)
        assert Worker(app, lease_s=5, poll_s=0.05).run(stop_when_idle=True) == 2
        done = app.jobs.get(joiner.id)
        assert stale == ["succeeded"]  # the owner ran first and ended the run
        assert app.optimizations.get(run_id).status == "succeeded"
        assert done is not None
        assert done.status == "succeeded"  # not failed with the join's "nothing to join"
        assert done.result is not None
        assert (done.result["joined"], done.result["reason"]) == (False, "the run is succeeded")
