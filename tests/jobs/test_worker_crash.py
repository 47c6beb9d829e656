"""Crash test: ``kill -9`` a ``dspex worker`` process in the middle of an optimization job; a second worker
takes the job over when the lease expires and finishes the same run with exactly the requested trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import SPACE_DOCUMENT, wait_for

from dspex import Settings
from dspex.jobs import submit_optimization
from dspex.runtime import App
from dspex.testing.server import SimServer

N_TRIALS = 8
LEASE = "2"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    # About 0.1 s per LM call: a trial (growing minibatches of 2, 4, 8, 10 examples, 8 at a time) takes a
    # few tenths of a second, so the kill lands mid-run.
    with SimServer(latency=0.1, latency_scale=0.0, task_size=40) as server:
        yield server


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dspex.cli",
                "worker",
                "--lease",
                LEASE,
                "--poll",
                "0.1",
                "--max-jobs",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_killed_worker_job_is_taken_over_and_finishes_exactly(
    database_url: str, sim: SimServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
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
    with App(Settings.load(home=home, database_url=database_url)) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        app.datasets.import_records("qa-set", sim.task.dicts()[:10], inputs=["question"])
        job = submit_optimization(
            app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=N_TRIALS
        )
        optimization_id = job.payload["optimization_id"]
        logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]

        first = _start_worker(env, logs[0])
        try:

            def two_done_or_exited() -> bool:
                return first.poll() is not None or app.optimizations.count(optimization_id) >= 2

            wait_for(two_done_or_exited, timeout=40, what="two finished trials", every=0.02)
            assert first.poll() is None, logs[0].read_text()[-3000:]
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            _stop(first)
        taken = app.jobs.get(job.id)
        assert taken is not None
        assert (taken.status, taken.attempts) == ("running", 1)  # its lease has not expired yet
        before = app.optimizations.trials(optimization_id)
        assert sum(t.state in ("complete", "pruned") for t in before) < N_TRIALS
        assert app.optimizations.get(optimization_id).status == "running"

        second = _start_worker(env, logs[1])
        try:
            second.wait(timeout=60)
        finally:
            _stop(second)
        output = logs[1].read_text()
        assert second.returncode == 0, output[-3000:]
        assert f"succeeded {job.id}" in output

        done = app.jobs.get(job.id)
        assert done is not None
        assert (done.status, done.attempts) == ("succeeded", 2)
        assert done.result is not None
        assert (done.result["finished"], done.result["optimization_id"]) == (N_TRIALS, optimization_id)

        trials = app.optimizations.trials(optimization_id)
        finished = [t for t in trials if t.state in ("complete", "pruned")]
        assert len(finished) == N_TRIALS
        assert [t.number for t in trials] == list(range(len(trials)))  # no number used twice, none skipped
        assert not [t for t in trials if t.state == "running"]
        # What finished before the kill is kept as it was; a trial cut off by the kill is failed, not counted.
        by_number = {t.number: t for t in trials}
        for t in before:
            if t.state in ("complete", "pruned"):
                assert (by_number[t.number].state, by_number[t.number].scores) == (t.state, t.scores)
            if t.state == "running":
                assert by_number[t.number].state == "failed"
                assert "stopped before it finished" in (by_number[t.number].error or "")
        # Within each worker the configurations are distinct (a float temperature does not repeat), so no
        # trial ran twice under two numbers. Across the kill they may repeat: the resumed study re-seeds
        # its sampler, whose random start-up draws then match the first worker's (the optimizer's resume
        # test does not check configurations either).
        resumed_from = max(t.number for t in before) + 1
        for segment in (
            [t for t in finished if t.number < resumed_from],
            [t for t in finished if t.number >= resumed_from],
        ):
            ids = [t.configuration_id for t in segment]
            assert len(ids) == len(set(ids))
        run = app.optimizations.get(optimization_id)
        assert (run.status, run.result_version_id) == ("succeeded", done.result["version_id"])
        version = app.programs.version(done.result["version_id"])
        assert version.variables == done.result["best"]["configuration"]
        assert app.programs.build(version) is not None


def test_sigterm_stops_the_worker_gracefully_and_gives_the_job_back(sim: SimServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    database_url = f"sqlite:///{tmp_path / 'dspex.db'}"
    env = {
        **os.environ,
        "DSPEX_HOME": str(home),
        "DSPEX_DATABASE_URL": database_url,
        "DSPEX_LM": "openai/sim-large",
        "DSPEX_API_BASE": sim.url,
        "DSPEX_API_KEY": "sim",
        "DSPEX_LM_CACHE": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    with App(Settings.load(home=home, database_url=database_url)) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        app.datasets.import_records("qa-set", sim.task.dicts()[:10], inputs=["question"])
        job = submit_optimization(app, program="qa", dataset="qa-set", space=SPACE_DOCUMENT, n_trials=50)
        optimization_id = job.payload["optimization_id"]
        log = tmp_path / "worker.log"
        worker = _start_worker(env, log)
        try:

            def one_done_or_exited() -> bool:
                return worker.poll() is not None or app.optimizations.count(optimization_id) >= 1

            wait_for(one_done_or_exited, timeout=40, what="a finished trial", every=0.02)
            assert worker.poll() is None, log.read_text()[-3000:]
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        finally:
            _stop(worker)
        output = log.read_text()
        assert worker.returncode == 0, output[-3000:]
        assert "SIGTERM: stopping" in output
        assert f"released  {job.id}" in output
        released = app.jobs.get(job.id)
        assert released is not None
        assert (released.status, released.attempts, released.lease_owner) == ("queued", 0, None)
        assert app.optimizations.get(optimization_id).status == "running"
        assert not app.optimizations.trials(optimization_id, states=["running"])
        assert app.optimizations.count(optimization_id) < 50
