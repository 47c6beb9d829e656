"""The holistic optimizer against an exhaustive grid, on a task whose optimum is known exactly.

Run: ``python benchmarks/variable_search.py [--devset 100] [--trials 120] [--seed 0] [--skip-evaluation]``.

The simulated LM server answers right with a probability that is a formula of the model, the temperature,
whether the program reasons (ChainOfThought) and how many demos the prompt carries
(:mod:`dspex.testing.simtask`), so the best configuration of the grid and its expected accuracy are known
without running it. The space: model (3) x temperature (0.0..1.5 by 0.1) x module (predict,
chain_of_thought) x demos (0..8) = 864 configurations; the exhaustive grid costs 864 x devset LM calls.

Printed: the expected accuracy of the configuration the optimizer found against the true best (goal: within
2%), the LM calls it used against the grid's (goal: at most 30%), and then the evaluation engine's
throughput against ``dspy.Evaluate`` at concurrency 8 on a 50 ms simulated LM (``benchmarks/evaluation.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
import optuna

from dspex.optimize import exact_match
from dspex.optimize.search import HolisticOptimizer
from dspex.testing.server import SimServer
from dspex.testing.simtask import DEFAULT_TEMPERATURES, expected_accuracy, optimum
from dspex.variables import Variable, VariableSpace, bind

MODELS = ("sim-small", "sim-medium", "sim-large")


def build_space() -> VariableSpace:
    return VariableSpace(
        [
            Variable.model("model", [f"openai/{m}" for m in MODELS]),
            Variable.float("temperature", 0.0, 1.5, step=0.1),
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.int("demos", 0, 8),
        ]
    )


def bindings() -> list[object]:
    return [
        bind.model("model"),
        bind.temperature("temperature"),
        bind.module_type("module", at=""),
        bind.demos("demos"),
    ]


def build_program(train: list[dspy.Example]) -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.demos = list(train[:8])
    return program


def search(devset_size: int, trials: int, seed: int) -> bool:
    with SimServer(latency_scale=0.0, task_size=devset_size + 50) as sim:
        examples = sim.task.examples()
        train, devset = examples[:50], examples[50 : 50 + devset_size]
        lms = {f"openai/{m}": sim.lm(m) for m in MODELS}
        space = build_space()
        grid = space.grid(points_per_float=16, points_per_int=9)
        grid_calls = len(grid) * len(devset)
        truth = optimum(models=MODELS, temperatures=DEFAULT_TEMPERATURES, demos=range(9))
        optimizer = HolisticOptimizer(
            space, bindings(), exact_match, n_trials=trials, seed=seed, lms=lms, concurrency=16
        )
        started = time.perf_counter()
        result = optimizer.optimize(build_program(train), devset)
        elapsed = time.perf_counter() - started
    best = result.best_configuration
    found = expected_accuracy(
        best["model"], best["temperature"], best["module"] == "chain_of_thought", best["demos"]
    )
    ratio = result.lm_calls / grid_calls
    gap = (truth.accuracy - found) / truth.accuracy
    states = {s: sum(t.state == s for t in result.trials) for s in ("complete", "pruned", "failed")}
    print(f"space: {len(grid)} configurations x {len(devset)} examples = {grid_calls} LM calls for the grid")
    print(
        f"true best: {truth.model} t={truth.temperature} reasoning={truth.reasoning} demos={truth.demos} "
        f"expected accuracy {truth.accuracy:.3f}"
    )
    print(f"found:     {best.to_json()} expected accuracy {found:.3f} (measured {result.best.scores})")
    print(f"trials: {states}, {elapsed:.1f} s")
    within = gap <= 0.02
    cheap = ratio <= 0.30
    print(f"quality gap {gap:.2%} (goal <= 2%): {'PASS' if within else 'FAIL'}")
    print(
        f"LM calls {result.lm_calls} / grid {grid_calls} = {ratio:.1%} (goal <= 30%): {'PASS' if cheap else 'FAIL'}"
    )
    return within and cheap


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devset", type=int, default=100)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-evaluation", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    ok = search(args.devset, args.trials, args.seed)
    if not args.skip_evaluation:
        print("\nevaluation engine vs dspy.Evaluate (concurrency 8, 50 ms simulated LM):", flush=True)
        script = Path(__file__).with_name("evaluation.py")
        cmd = [sys.executable, str(script), "--examples", "200", "--latency", "0.05", "--rounds", "1"]
        subprocess.run([*cmd, "--concurrency", "8"], check=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
