"""Runs one parallel optimization for the crash test (test_parallel_optimize.py): slow trials, resumable.

Usage: python parallel_worker.py DATABASE_URL OPTIMIZATION_ID N_TRIALS PARALLEL
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.distributed.optimize import ParallelOptimizer
from dspex.optimize import exact_match
from dspex.testing.server import SimServer
from dspex.variables import Variable, VariableSpace, bind


def main() -> None:
    url, optimization_id, n_trials, parallel = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # sim-large answers in 40 ms; 10 examples two at a time: about 0.2 s per trial, two trials at once.
    with SimServer(latency_scale=1.0, task_size=60) as sim:
        optimizer = ParallelOptimizer(
            VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
            [bind.temperature("temperature")],
            exact_match,
            n_trials=n_trials,
            pruning=False,
            lm=sim.lm("sim-large"),
            concurrency=2,
            parallel=parallel,
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
