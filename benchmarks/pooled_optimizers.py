"""DSPy optimizers with their program calls on a process pool (``App.optimize_with(..., pool=)``)
against the same run in process: the result must be the same; the figure is the share of the run's LM
calls that the pool's workers made (candidate evaluations, and the traced calls: bootstrapping, GEPA's
reflective minibatches, SIMBA's trajectories; proposals and reflections stay here).

    python benchmarks/pooled_optimizers.py            # MIPROv2, GEPA, COPRO, bootstrap_rs, SIMBA,
                                                      # bootstrap: 20 train / 30 dev
    python benchmarks/pooled_optimizers.py --quick    # 8 / 10

On the simulated LM server (``sim-medium``, its latency model scaled by ``--latency``), a registered
``chain_of_thought`` program ``question -> answer``, a pool of 2 worker processes using the settings' LM.
Calls made here are counted by a DSPy callback on this process's LM (the proposer's and GEPA's reflections
included); the rest of the run's LM calls (``result.lm_calls``, which counts the workers' calls as their
shards come back) were made on the workers. Times are wall clock on this machine (2 cores: the workers
and this process share them). Each mode runs in a database of its own, so neither reads the other's
evaluation cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from dspy.utils.callback import BaseCallback

QA = {"module": "chain_of_thought", "signature": "question -> answer"}
RUNS: dict[str, dict[str, Any]] = {
    "miprov2": {
        "num_candidates": 4,
        "num_trials": 10,
        "minibatch_size": 8,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
        "num_threads": 4,
    },
    "gepa": {"max_metric_calls": 200, "reflection_minibatch_size": 3, "num_threads": 4},
    "copro": {"breadth": 4, "depth": 2, "num_threads": 4},
    "bootstrap_rs": {"num_candidate_programs": 6, "max_bootstrapped_demos": 2, "num_threads": 4},
    "simba": {"bsize": 8, "max_steps": 3, "num_candidates": 4, "num_threads": 4},
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 2, "max_rounds": 2},
}


class _LocalCalls(BaseCallback):  # type: ignore[misc]
    """Counts the LM calls this process starts (a dspy.LM's, not the store in front of the proposer)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if isinstance(instance, dspy.LM):
            self.calls += 1


def _run(sim: Any, home: Path, optimizer: str, pool: str | None, train: int, dev: int) -> dict[str, Any]:
    from dspex.runtime.app import App
    from dspex.settings import Settings

    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home}/dspex.db",
        lm="openai/sim-medium",
        api_base=sim.url,
        api_key="sim",
        lm_cache=False,
        num_retries=0,
        pools={"general": {"size": 2}},
    )
    task = sim.task
    rows = [
        {**row, "part": "train" if i < train else "dev"} for i, row in enumerate(task.dicts()[: train + dev])
    ]
    with App(settings) as app:
        app.programs.register("qa", QA)
        app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
        if pool is not None:
            app.pools.get(pool)  # started before the clock
        counter = _LocalCalls()
        started = time.perf_counter()
        with dspy.context(callbacks=[counter]):
            result = app.optimize_with(
                "qa", optimizer, dataset="qa-set", options=RUNS[optimizer], seed=1, pool=pool
            )
        elapsed = time.perf_counter() - started
        tasks = app.pools.get(pool).status().completed if pool is not None else 0
    return {
        "score": result.score,
        "version": result.version_id,
        "lm_calls": result.lm_calls,
        "here": counter.calls,
        "tasks": tasks,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 train / 10 dev examples")
    parser.add_argument("--latency", type=float, default=0.0, help="scale of the simulated LM's latency")
    parser.add_argument("--optimizers", default=",".join(RUNS))
    args = parser.parse_args()
    train, dev = (8, 10) if args.quick else (20, 30)
    from dspex.testing.server import SimServer

    with SimServer(latency_scale=args.latency) as sim, tempfile.TemporaryDirectory() as tmp:
        for optimizer in args.optimizers.split(","):
            local = _run(sim, Path(tmp) / f"{optimizer}-local", optimizer, None, train, dev)
            pooled = _run(sim, Path(tmp) / f"{optimizer}-pool", optimizer, "general", train, dev)
            same = local["version"] == pooled["version"] and local["score"] == pooled["score"]
            remote = pooled["lm_calls"] - pooled["here"]
            print(
                f"{optimizer} ({train} train / {dev} dev): in process {local['lm_calls']} LM calls, "
                f"{local['seconds']:.1f} s, score {local['score']:.3f}; on the pool {pooled['lm_calls']} LM calls, "
                f"{remote} of them on the workers ({100 * remote / max(1, pooled['lm_calls']):.0f}%, "
                f"{pooled['tasks']} tasks), {pooled['seconds']:.1f} s, score {pooled['score']:.3f}; "
                f"same version and score: {same}"
            )
            if not same:
                sys.exit(f"{optimizer}: the pooled run differs from the run in process")


if __name__ == "__main__":
    main()
