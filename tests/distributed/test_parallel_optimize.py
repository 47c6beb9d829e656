"""Parallel trials of the holistic optimizer: contiguous, unique trial numbers, a resumable run."""

from __future__ import annotations

import itertools
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
