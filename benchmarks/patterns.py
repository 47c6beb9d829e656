"""Reasoning patterns against plain chain of thought, at equal LM-call budgets, on checkable tasks.

Run: ``python benchmarks/patterns.py [--n 60] [--p 0.55] [--seed 0]``.

Three tasks whose answers can be checked (``benchmarks/_patterns_sim.py``): arithmetic word problems
(three operations on a starting count), a Game-of-24 search (four numbers, three steps) and two-hop
questions (the spouse of a film's director). The LM is a simulated solver on DSPex's scripted engine with
a fixed per-call accuracy ``p``: every call, from any module, is an independent draw that is right with
probability ``p`` (answers, critics' verdicts, tree proposals and scores, judges' choices alike), and a
correction call ignores the critique it is given. No pattern gets a smarter LM, so a gain comes only from
validation, search or voting.

For each pattern, plain chain of thought is run at the same budget: ``dspy.ChainOfThought`` called as many
times per question as the pattern used calls on average, keeping its last answer (plain chain of thought
has no way to choose among its samples; choosing is what the patterns add). Printed per task and pattern:
accuracy, LM calls per question, and the gain over chain of thought at that budget, with a 95% interval.
Runs are sequential (``num_threads=1``) so a seed reproduces the figures exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy

from _patterns_sim import TASKS, Task, make_tasks, solver_engine
from dspex.modules import build_module


def patterns(task: Task) -> dict[str, Callable[[], Any]]:
    sig = task.signature
    depth = {"arithmetic": 1, "game24": 3, "multihop": 2}[task.name]
    made: dict[str, Callable[[], Any]] = {
        "consensus x5 (majority)": lambda: build_module(
            "consensus", sig, modules=["chain_of_thought"] * 5, num_threads=1
        ),
        "consensus x5 (judge)": lambda: build_module(
            "consensus", sig, modules=["chain_of_thought"] * 5, method="judge", num_threads=1
        ),
        "self_correcting_cot (LM critic, 2 corrections)": lambda: build_module(
            "self_correcting_cot", sig, validator="critic", max_corrections=2
        ),
        f"tree_of_thoughts (b=3, d={depth}, beam=2, LM scorer)": lambda: build_module(
            "tree_of_thoughts", sig, breadth=3, depth=depth, beam=2, num_threads=1
        ),
    }
    if task.metric is not None:
        made[f"tree_of_thoughts (b=3, d={depth}, beam=2, metric scorer)"] = lambda: build_module(
            "tree_of_thoughts", sig, breadth=3, depth=depth, beam=2, scorer=task.metric, num_threads=1
        )
    if task.check is not None:
        made["self_correcting_cot (Python check, 4 corrections)"] = lambda: build_module(
            "self_correcting_cot", sig, validator=task.check, max_corrections=4
        )
    return made


def evaluate(task: Task, module: Any, p: float, seed: int) -> tuple[float, float]:
    """(accuracy, LM calls per question) of ``module`` on ``task``."""
    engine = solver_engine(task, p, seed)
    right = 0
    with dspy.context(lm=engine.lm()):
        for question in task.items:
            right += task.correct(question, str(module(question=question).answer))
    n = len(task.items)
    return right / n, engine.calls / n


class _CoTAtBudget(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Plain chain of thought spending a budget: ``calls`` samples per question, the last one answers."""

    def __init__(self, signature: str, calls: float) -> None:
        super().__init__()
        self.cot = dspy.ChainOfThought(signature)
        self.calls = calls
        self._spent = 0.0
        self._asked = 0

    def forward(self, question: str) -> Any:
        # Spread a fractional budget exactly: after k questions, round(k * calls) calls in all.
        self._asked += 1
        todo = max(1, round(self._asked * self.calls - self._spent))
        self._spent += todo
        prediction = None
        for _ in range(todo):
            prediction = self.cot(question=question)
        return prediction


def interval(a: float, b: float, n: int) -> float:
    """Half-width of a 95% interval on the difference of two accuracies over n questions (normal approx.)."""
    return 1.96 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="questions per task (at most 300)")
    parser.add_argument("--p", type=float, default=0.55, help="per-call accuracy of the simulated LM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"per-call accuracy p={args.p}, seed={args.seed}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    tasks = make_tasks(args.n, args.seed)
    started = time.perf_counter()
    for name in TASKS:
        task = tasks[name]
        n = len(task.items)
        base, _ = evaluate(task, dspy.ChainOfThought(task.signature), args.p, args.seed)
        print(f"\n{name} ({n} questions): chain_of_thought {base:.3f} at 1.0 calls/question")
        print(f"  {'pattern':<52} {'acc':>6} {'calls':>6} {'CoT@calls':>9} {'gain':>7} {'+-95%':>6}")
        for label, build in patterns(task).items():
            acc, calls = evaluate(task, build(), args.p, args.seed)
            same, _ = evaluate(task, _CoTAtBudget(task.signature, calls), args.p, args.seed + 1)
            gain = acc - same
            print(
                f"  {label:<52} {acc:6.3f} {calls:6.2f} {same:9.3f} {gain:+7.3f} {interval(acc, same, n):6.3f}"
            )
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
