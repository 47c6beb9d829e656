"""Runs one optimization for the crash test (tests/optimize/test_resume.py): slow trials, resumable.

Usage: python resume_worker.py DATABASE_URL OPTIMIZATION_ID N_TRIALS [plain|pruned]

``pruned``: successive halving from minibatches of 2 (2, 4, 8, 10 examples), so the run starts with a
bracket of four trials open together.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.optimize import exact_match
from dspex.optimize.search import HolisticOptimizer, Pruning
from dspex.testing.server import SimServer
from dspex.variables import Variable, VariableSpace, bind


def main() -> None:
    url, optimization_id, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "plain"
    if mode not in ("plain", "pruned"):
        raise SystemExit(f"mode must be plain or pruned, got {mode!r}")
    # sim-large answers in 40 ms; 10 examples two at a time: about 0.2 s per trial. No cache between
    # processes, and a float temperature makes repeats unlikely, so every trial calls the LM.
    with SimServer(latency_scale=1.0, task_size=60) as sim:
        space = VariableSpace([Variable.float("temperature", 0.0, 1.5)])
        optimizer = HolisticOptimizer(
            space,
            [bind.temperature("temperature")],
            exact_match,
            n_trials=n_trials,
            pruning=Pruning(min_examples=2, growth=2) if mode == "pruned" else False,
            lm=sim.lm("sim-large"),
            concurrency=2,
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
