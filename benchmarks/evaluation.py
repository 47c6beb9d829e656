"""Throughput of dspex's evaluation engine against ``dspy.Evaluate`` at the same concurrency, in one process.

Run: ``python benchmarks/evaluation.py [--examples 500] [--latency 0.05] [--rounds 3] [--concurrency 8 32 128]``.

The program is ``dspy.Predict("question -> answer")`` on the scripted engine with a simulated LM call
of ``--latency`` seconds (50 ms by default; the sync engine sleeps in its thread, the async one with
``asyncio.sleep``), over ``--examples`` questions of the bundled simulated task, scored with exact
match. The scripted engine is deterministic and has no HTTP in the way; the simulated
OpenAI-compatible server (``dspex.testing.SimServer(latency_scale=...)``) would add the same HTTP
client cost to both sides. Rows per concurrency N:
- ``dspy.Evaluate``: ``dspy.Evaluate(devset=..., metric=answer_exact_match, num_threads=N)`` (the baseline);
- ``Evaluator``: ``Evaluator(exact_match, concurrency=N, cache=False)``, default ``execution="auto"``
  (a pool of N threads up to N = 64, the event loop above for programs with native async);
- ``Evaluator (async)``: ``execution="async"``: every example awaited with ``Predict.acall`` on one
  event loop (DSPy 3.4's async path costs about twice the CPU of its sync path per call);
- ``Evaluator (custom module)``: the same Predict wrapped in a module without ``aforward`` (the path of
  Refine, BestOfN and most user modules), with the default execution;
- ``Evaluator, warm cache``: a second run of a cached evaluator on the same configuration (no LM call).
Medians over ``--rounds``; the ratio is the baseline's time over the row's (> 1: faster than dspy).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from dspy.evaluate.metrics import answer_exact_match

from dspex.optimize import Evaluator, exact_match
from dspex.testing import ScriptedEngine, load_task


class NoAsync(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Predict behind a module with no aforward, so the evaluator must use threads."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.predict(question=question)


def timed(run: Callable[[], float]) -> float:
    started = time.perf_counter()
    score = run()
    elapsed = time.perf_counter() - started
    assert score > 0.9, f"the scripted LM answers correctly; score {score} means something broke"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()
    logging.getLogger("dspy.evaluate.evaluate").setLevel(logging.WARNING)  # its per-run score line

    task = load_task(size=args.examples)
    devset = task.examples()
    engine = ScriptedEngine(
        {"answer": lambda inputs: task.lookup(inputs["question"]).answer},  # type: ignore[union-attr]
        latency=args.latency,
    )
    lm = engine.lm()
    n = len(devset)
    print(
        f"{n} examples, simulated LM call {args.latency * 1000:.0f} ms, {args.rounds} rounds, medians; "
        f"ideal = examples x latency / concurrency"
    )
    for concurrency in args.concurrency:
        predict = dspy.Predict("question -> answer")
        no_async = NoAsync()
        baseline = dspy.Evaluate(devset=devset, metric=answer_exact_match, num_threads=concurrency)
        ours = Evaluator(exact_match, concurrency=concurrency, cache=False)
        ours_async = Evaluator(exact_match, concurrency=concurrency, cache=False, execution="async")
        cached = Evaluator(exact_match, concurrency=concurrency)

        def run_dspy(baseline: dspy.Evaluate = baseline, predict: dspy.Predict = predict) -> float:
            with dspy.context(lm=lm):
                return float(baseline(predict).score) / 100

        def run_ours(ours: Evaluator = ours, predict: dspy.Predict = predict) -> float:
            return ours.run(predict, devset, lm=lm).score

        def run_async(ours: Evaluator = ours_async, predict: dspy.Predict = predict) -> float:
            return ours.run(predict, devset, lm=lm).score

        def run_custom(ours: Evaluator = ours, no_async: NoAsync = no_async) -> float:
            return ours.run(no_async, devset, lm=lm).score

        rows: dict[str, Callable[[], float]] = {
            "dspy.Evaluate": run_dspy,
            "Evaluator": run_ours,
            "Evaluator (async)": run_async,
            "Evaluator (custom module)": run_custom,
        }
        # Warm-up on a few examples: imports, adapters, thread start-up.
        with dspy.context(lm=lm):
            dspy.Evaluate(devset=devset[:concurrency], metric=answer_exact_match, num_threads=concurrency)(
                predict
            )
        ours.run(predict, devset[:concurrency], lm=lm)
        ours_async.run(predict, devset[:concurrency], lm=lm)
        times: dict[str, list[float]] = {label: [] for label in rows}
        for _ in range(args.rounds):
            for label, run in rows.items():
                times[label].append(timed(run))
        cold = cached.run(predict, devset, lm=lm, configuration_id="bench")
        warm_started = time.perf_counter()
        warm = cached.run(predict, devset, lm=lm, configuration_id="bench")
        warm_time = time.perf_counter() - warm_started
        assert cold.lm_calls == n, cold
        assert warm.lm_calls == 0, warm
        assert warm.cached == n, warm

        ideal = n * args.latency / concurrency
        base = statistics.median(times["dspy.Evaluate"])
        print(f"\nconcurrency {concurrency} (ideal {ideal:.2f} s)")
        print(f"  {'':26} {'wall s':>8} {'examples/s':>11} {'% of ideal':>11} {'vs dspy':>8}")
        for label, samples in times.items():
            median = statistics.median(samples)
            print(
                f"  {label:26} {median:8.3f} {n / median:11.0f} {100 * ideal / median:10.0f}% "
                f"{base / median:7.2f}x"
            )
        print(
            f"  {'Evaluator, warm cache':26} {warm_time:8.3f} {n / warm_time:11.0f} {'':11} {base / warm_time:7.0f}x"
        )


if __name__ == "__main__":
    main()
