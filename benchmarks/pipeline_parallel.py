"""Wall time of concurrent pipeline steps against one step alone, in one process.

Run: ``python benchmarks/pipeline_parallel.py [--rounds 15] [--latency 0.1]``.

Every step is a ``dspy.Predict("question -> answer")`` on the scripted engine with a simulated LM call of
``--latency`` seconds (its async engine waits with ``asyncio.sleep``, so concurrent calls overlap):
- ``one branch (bare)``: one branch's module alone, ``await predict.acall(...)``, no pipeline (the
  baseline, so the ratios include all of the pipeline's own overhead);
- ``one branch``: the same branch as a one-step pipeline;
- ``parallel(3)``: ``parallel(a, b, c)`` with three such branches;
- ``3 independent steps``: a plain ``Pipeline([a, b, c])`` whose steps share no fields, so they run
  concurrently by dependency order.
Rounds alternate the rows; medians are printed with the ratio to the baseline (target: <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.pipeline import Pipeline, parallel, step
from dspex.testing import ScriptedEngine

TARGET = 1.2


def branch(name: str) -> object:
    return step(dspy.Predict("question -> answer"), name=name, outputs={"answer": name})


async def timed(program: dspy.Module) -> float:
    started = time.perf_counter()
    result = await program.acall(question="How far is the moon?")
    elapsed = time.perf_counter() - started
    assert result.toDict(), "the pipeline produced nothing"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}, latency=args.latency)
    rows: dict[str, Callable[[], dspy.Module]] = {
        "one branch (bare)": lambda: dspy.Predict("question -> answer"),
        "one branch": lambda: Pipeline([branch("a")]),
        "parallel(3)": lambda: Pipeline([parallel(branch("a"), branch("b"), branch("c"))]),
        "3 independent steps": lambda: Pipeline([branch("a"), branch("b"), branch("c")]),
    }
    programs = {label: make() for label, make in rows.items()}

    async def run() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {label: [] for label in programs}
        with dspy.context(lm=engine.lm()):
            for program in programs.values():  # warm-up: imports, adapters, first-call caches
                await timed(program)
            for _ in range(args.rounds):
                for label, program in programs.items():
                    times[label].append(await timed(program))
        return times

    times = asyncio.run(run())
    baseline = statistics.median(times["one branch (bare)"])
    print(f"{args.rounds} rounds, simulated LM call {args.latency * 1000:.0f} ms, medians:")
    for label, samples in times.items():
        median = statistics.median(samples)
        ratio = median / baseline
        verdict = (
            "" if label.startswith("one branch") else f"  ({'ok' if ratio <= TARGET else 'OVER'} <= {TARGET})"
        )
        print(f"  {label:<22} {median * 1000:7.1f} ms   ratio {ratio:.3f}{verdict}")


if __name__ == "__main__":
    main()
