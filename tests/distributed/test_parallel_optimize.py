"""Parallel trials of the holistic optimizer: contiguous, unique trial numbers, a resumable run."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from optuna.distributions import FloatDistribution, distribution_to_json

from dspex.distributed.optimize import ParallelOptimizer
from dspex.errors import ConfigurationError
from dspex.optimize import exact_match
from dspex.store import open_database
from dspex.store.optimizations import OptimizationRepository
from dspex.testing.server import SimServer
from dspex.variables import Variable, VariableSpace, bind


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(latency_scale=0.2, task_size=40) as server:  # sim-large: about 8 ms a call
        yield server


def _optimizer(sim: SimServer, n_trials: int, parallel: int = 2) -> ParallelOptimizer:
    space = VariableSpace([Variable.float("temperature", 0.0, 1.5)])
    return ParallelOptimizer(
        space,
        [bind.temperature("temperature")],
        exact_match,
        n_trials=n_trials,
        pruning=False,
        lm=sim.lm("sim-large"),
        concurrency=2,
        parallel=parallel,
    )


def test_two_trials_at_once_give_contiguous_unique_trials(sim: SimServer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    result = _optimizer(sim, 8).optimize(
        dspy.Predict("question -> answer"), sim.task.examples()[:6], db=url, optimization_id="par"
    )
    assert result.finished == 8
    numbers = [t.number for t in result.trials]
    assert sorted(numbers) == list(range(8))  # contiguous, none twice
    db = open_database(url)
    try:
        trials = OptimizationRepository(db).trials("par")
    finally:
        db.dispose()
    assert [t.state for t in trials] == ["complete"] * 8
    # The trials overlapped: some trial started before the one before it finished.
    spans = sorted((t.started_at, t.finished_at) for t in trials)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans) if a[1] is not None)


def test_a_killed_driver_resumes_without_losing_or_repeating_trials(sim: SimServer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    program, devset = dspy.Predict("question -> answer"), sim.task.examples()[:6]
    first = _optimizer(sim, 3).optimize(program, devset, db=url, optimization_id="crash")
    assert first.finished == 3
    db = open_database(url)
    try:
        # What a driver killed mid-trial leaves: a trial row still "running".
        distribution = distribution_to_json(FloatDistribution(0.0, 1.5))
        OptimizationRepository(db).start_trial(
            "crash", {"values": {"temperature": 0.5}, "distributions": {"temperature": distribution}}
        )
    finally:
        db.dispose()
    resumed = _optimizer(sim, 7).optimize(program, devset, db=url, optimization_id="crash")
    assert resumed.finished == 7
    db = open_database(url)
    try:
        trials = OptimizationRepository(db).trials("crash")
    finally:
        db.dispose()
    assert [t.number for t in trials] == list(range(8))
    assert trials[3].state == "failed"  # the killed driver's trial: abandoned, not counted
    assert sum(t.state == "complete" for t in trials) == 7


def test_parallel_must_be_a_positive_count(sim: SimServer) -> None:
    with pytest.raises(ConfigurationError, match="parallel must be"):
        _optimizer(sim, 2, parallel=0)


WORKER = Path(__file__).with_name("parallel_worker.py")


def _start(url: str, n_trials: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, "kill9", str(n_trials), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )


def test_a_driver_killed_with_sigkill_resumes_to_exactly_the_requested_trials(database_url: str) -> None:
    n_trials = 10
    db = open_database(database_url)
    repo = OptimizationRepository(db)
    process = _start(database_url, n_trials)
    try:
        deadline, finished = time.monotonic() + 40, 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                finished = repo.count("kill9")
            except Exception:  # the run row may not exist yet
                finished = 0
            if finished >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert finished >= 3, "the driver did not finish three trials in time"
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    before = repo.trials("kill9")
    assert repo.count("kill9") < n_trials

    again = _start(database_url, n_trials)
    out, err = again.communicate(timeout=90)
    assert again.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == f"finished {n_trials}"
    trials = repo.trials("kill9")
    assert [t.number for t in trials] == list(range(len(trials)))  # no number twice, none skipped
    assert sum(t.state in ("complete", "pruned") for t in trials) == n_trials
    assert not [t for t in trials if t.state == "running"]
    by_number = {t.number: t for t in trials}
    for t in before:
        if t.state == "complete":
            assert by_number[t.number].scores == t.scores  # kept as it was
        if t.state == "running":  # cut off by the kill: failed, not counted
            assert by_number[t.number].state == "failed"
    db.dispose()
