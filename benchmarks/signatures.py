"""Time dspy.Signature against dspex.signature (cold: cache bypassed; cached) in one process.

Run: python benchmarks/signatures.py [--repeat N]

Prints, per representative string, the median time of each and the ratios dspex/dspy (lower is
better), then a summary with the geometric means of the ratios.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import dspy

from dspex.signatures import signature

SPECS: dict[str, str] = {
    "simple": "question -> answer",
    "multi": "context, question -> reasoning, answer",
    "typed": "question: str, k: int, threshold: float -> answer: str, confident: bool",
    "generics": "docs: list[str], meta: dict[str, list[int]] -> ranked: list[tuple[str, float]]",
    "optional/union": "a: Optional[int], b: int | None, c: Union[str, list[str]] -> d: str | None",
    "literal": "claim, evidence -> verdict: Literal['supported', 'refuted', 'not enough info']",
    "nested": "x: dict[str, list[dict[str, Optional[list[int]]]]] -> y: Tuple[int, Optional[float], list[str]]",
    "dspy types": "image: dspy.Image, history: dspy.History -> answer, calls: dspy.ToolCalls",
    "descriptions": 'question: str "the user question", docs: list[str] "retrieved passages" -> answer "one sentence"',
}


def _dspy_spec(spec: str) -> str:
    # DSPy has no description syntax: time it on the same fields without the descriptions.
    return (
        spec.replace(' "the user question"', "")
        .replace(' "retrieved passages"', "")
        .replace(' "one sentence"', "")
    )


def median_seconds(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """Median over ``repeat`` runs of the mean time of ``number`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per measurement (median taken)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    print(f"{'spec':<15} {'dspy':>10} {'cold':>10} {'cached':>10} {'cold/dspy':>10} {'cached/dspy':>12}")
    cold_ratios, cached_ratios = [], []
    for label, spec in SPECS.items():
        plain = _dspy_spec(spec)
        dspy.Signature(plain, custom_types={})  # warm imports and pydantic internals for both
        signature(spec, cache=False)
        signature(spec)
        t_dspy = median_seconds(lambda plain=plain: dspy.Signature(plain, custom_types={}), args.repeat, 40)
        t_cold = median_seconds(lambda spec=spec: signature(spec, cache=False), args.repeat, 40)
        t_cached = median_seconds(lambda spec=spec: signature(spec), args.repeat, 20_000)
        cold_ratios.append(t_cold / t_dspy)
        cached_ratios.append(t_cached / t_dspy)
        print(
            f"{label:<15} {t_dspy * 1e6:>8.1f}us {t_cold * 1e6:>8.1f}us {t_cached * 1e6:>8.2f}us "
            f"{t_cold / t_dspy:>10.3f} {t_cached / t_dspy:>12.5f}"
        )

    def geomean(values: list[float]) -> float:
        return math.exp(sum(math.log(v) for v in values) / len(values))

    print(
        f"summary: {len(SPECS)} specs; dspex cold/dspy geomean {geomean(cold_ratios):.3f} "
        f"(worst {max(cold_ratios):.3f}); dspex cached/dspy geomean {geomean(cached_ratios):.5f} "
        f"(worst {max(cached_ratios):.5f})"
    )


if __name__ == "__main__":
    main()
