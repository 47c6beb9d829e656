"""Runs one driver of a parallel optimization for the crash and shared-run tests (test_parallel_optimize.py,
test_shared_optimization.py): slow trials, resumable.

Usage: python parallel_worker.py DATABASE_URL OPTIMIZATION_ID N_TRIALS PARALLEL [own|join] [LATENCY_SCALE]

``join``: wait for the run to exist (its owner creates it), then add trials to it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.distributed.optimize import ParallelOptimizer
from dspex.errors import ConfigurationError
from dspex.optimize import exact_match
from dspex.store import open_database
from dspex.store.optimizations import OptimizationRepository
from dspex.testing.server import SimServer
from dspex.variables import Variable, VariableSpace, bind


def _wait_for_run(url: str, optimization_id: str) -> None:
    import time

    db = open_database(url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                OptimizationRepository(db).get(optimization_id)
                return
            except ConfigurationError:
                time.sleep(0.02)
    finally:
        db.dispose()
    raise SystemExit(f"optimization {optimization_id} did not appear")


def main() -> None:
    url, optimization_id, n_trials, parallel = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    join = len(sys.argv) > 5 and sys.argv[5] == "join"
    scale = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
    if join:
        _wait_for_run(url, optimization_id)
    # sim-large answers in 40 ms (times the scale); 10 examples two at a time: about 0.2 s per trial.
    with SimServer(latency_scale=scale, task_size=60) as sim:
        optimizer = ParallelOptimizer(
            VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
            [bind.temperature("temperature")],
            exact_match,
            n_trials=n_trials,
            pruning=False,
            lm=sim.lm("sim-large"),
            concurrency=2,
            parallel=parallel,
            join=join,
            lease_s=5.0,
            poll_s=0.05,
        )
        result = optimizer.optimize(
            dspy.Predict("question -> answer"),
            sim.task.examples()[:10],
            db=url,
            optimization_id=optimization_id,
        )
    print(f"finished {result.finished}")


if __name__ == "__main__":
    main()
