"""Per-call cost of running through DSPex with full recording, against bare DSPy, in one process.

Run: ``python benchmarks/recording_overhead.py [--calls 1000] [--rounds 5] [--latency 0]``.

Every row runs the same ``dspy.ChainOfThought("question -> answer")`` on the scripted engine:
- ``bare DSPy``: ``program(question=...)`` under one ``dspy.context(lm=...)`` (DSPy's defaults);
- ``DSPy + no-op callback``: the same with a ``BaseCallback`` that does nothing: the floor any
  recording through DSPy's callback hooks pays (DSPy binds arguments and picks a handler per event);
- ``DSPex, no record``: ``App.run`` (input validation, per-run context, resilience, usage and cost)
  writing nothing: an App with ``record=False`` keeps no span tree;
- ``DSPex, record``: ``App.run`` writing every run to SQLite: inputs, outputs, usage, cost and the span
  tree at the default ``lean`` trace level (module, LM with messages, model, tokens and cost), taken by
  :mod:`dspex.telemetry.instrument`, not DSPy's callbacks. The timed span ends after the final flush, so
  the background writer's work (JSON, SQL) is charged to DSPex. This is the row the targets speak of;
- ``DSPex, record, full``: the same at the opt-in ``full`` level (adapter format/parse spans too), in
  its own database;
- ``DSPex, record, sync`` (with ``--sync``): the ``lean`` row with ``durability="sync"``: each run
  returns once its record is committed, one transaction per run.
Each round runs every row's ``--calls`` calls, in blocks of ``--block`` calls (default: all of them, one
block): block after block, every row runs one block, in an order rotated block by block (no row always
follows the same one), each block timed after a full garbage collection. A recorded row's block ends with
the writer's flush, inside its timed span, so a block is charged all the writing its runs caused; smaller
blocks only add flushes (the writer's leftover of each block written at once, without lingering), never
hide work. Per round, each row's time is the sum of its blocks; medians over rounds are reported as wall
time and as process CPU time (all threads), with the range of the wall ratio over rounds (each round's
row against that round's bare DSPy). Small blocks put the rows' calls side by side in time, so a change
of the machine's load or of the sleep's overshoot (``--latency``) hits every row alike; the column ``all
blocks`` is the wall ratio over every block (the row's total time over bare DSPy's) +- the half-width of
its 95% interval, from the blocks paired (each row's block against the bare block next to it: mean
difference +- 1.96 standard errors, over bare's mean).
``cpu`` is the process's CPU time (all threads: the writer's too), ``caller`` the calling thread's alone:
with a slow LM the writer works while the caller waits on the LM, so the caller's CPU is what shows in
wall time.
With ``--latency 0`` the LM costs nothing and the ratios are pure overhead; CPU time is then the steady
measure, since other processes on the machine do not disturb it. ``--latency`` adds a simulated LM
delay (seconds) to compare at something closer to a real provider; there the 5 ms figures are taken with
``--calls 300 --rounds 10 --block 30 --latency 0.005``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from dspy.utils.callback import BaseCallback

from dspex.lm.pricing import Price, Prices
from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


class NoOp(BaseCallback):  # type: ignore[misc]  # DSPy's BaseCallback is untyped
    """Receives every event and does nothing."""


def timed(fn: Callable[[list[str]], None], questions: list[str]) -> tuple[float, float, float]:
    """Wall, process CPU (all threads) and this thread's CPU seconds of ``fn(questions)``, in total."""
    # Each block starts with no garbage of the block before (a full record leaves more than bare DSPy):
    # the collector's passes during a block are then paid for that block's own objects.
    gc.collect()
    wall, cpu, caller = time.perf_counter(), time.process_time(), time.thread_time()
    fn(questions)
    return time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - caller


def paired_interval(row: list[float], bare: list[float]) -> float:
    """Half-width of a 95% interval of ``sum(row) / sum(bare)`` from paired blocks (normal approximation
    on the blocks' differences); nan with fewer than two blocks."""
    if len(row) < 2:
        return math.nan
    differences = [r - b for r, b in zip(row, bare, strict=True)]
    error = statistics.stdev(differences) / math.sqrt(len(differences))
    return 1.96 * error / statistics.mean(bare)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--block", type=int, default=0, help="calls per block (default: --calls)")
    parser.add_argument("--sync", action="store_true", help="add the row of runs with sync durability")
    args = parser.parse_args()
    block = args.block if 0 < args.block < args.calls else args.calls
    engine = ScriptedEngine(
        {"answer": lambda inputs: inputs["question"].upper()}, latency=args.latency, keep_history=1
    )
    lm = engine.lm("bench")
    program = dspy.ChainOfThought("question -> answer")
    questions = [f"question {i}" for i in range(args.calls)]
    noop = NoOp()

    def bare(questions: list[str]) -> None:
        with dspy.context(lm=lm):
            for q in questions:
                program(question=q)

    def bare_noop(questions: list[str]) -> None:
        with dspy.context(lm=lm, callbacks=[noop]):
            for q in questions:
                program(question=q)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(home=Path(tmp), database_url=f"sqlite:///{tmp}/bench.db")
        detailed = Settings.load(home=Path(tmp), database_url=f"sqlite:///{tmp}/full.db", trace="full")
        prices = Prices({"bench": Price(0.5, 1.5)})
        with (
            App(settings, lm=lm, prices=prices) as app,
            App(detailed, lm=lm, prices=prices) as full_app,
            App(settings, lm=lm, record=False) as quiet,
        ):

            def no_record(questions: list[str]) -> None:
                for q in questions:
                    quiet.run(program, {"question": q})

            def recorded(app: App) -> Callable[[list[str]], None]:
                def run(questions: list[str]) -> None:
                    for q in questions:
                        app.run(program, {"question": q})
                    app.flush(timeout=None)

                return run

            def synced(questions: list[str]) -> None:
                for q in questions:
                    app.run(program, {"question": q}, durability="sync")

            rows = {
                "bare DSPy": bare,
                "DSPy + no-op callback": bare_noop,
                "DSPex, no record": no_record,
                f"DSPex, record ({app.trace_level})": recorded(app),
                "DSPex, record, full": recorded(full_app),
            }
            if args.sync:
                rows["DSPex, record, sync"] = synced
            names = list(rows)
            for fn in rows.values():  # warm every path (imports, caches, the database)
                fn(questions)
            blocks = [questions[i : i + block] for i in range(0, args.calls, block)]
            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rows}
            walls: dict[str, list[float]] = {name: [] for name in rows}  # every block's wall time
            turn = 0
            for _ in range(args.rounds):
                totals = dict.fromkeys(rows, (0.0, 0.0, 0.0))
                for chunk in blocks:
                    for name in names[turn % len(names) :] + names[: turn % len(names)]:
                        wall, cpu, caller = timed(rows[name], chunk)
                        walls[name].append(wall)
                        before = totals[name]
                        totals[name] = (before[0] + wall, before[1] + cpu, before[2] + caller)
                    turn += 1
                for name, (wall, cpu, caller) in totals.items():
                    samples[name].append((wall / args.calls, cpu / args.calls, caller / args.calls))
            app.flush(timeout=None)
            written = app.executions.count() + full_app.executions.count()
    wall0 = statistics.median(s[0] for s in samples["bare DSPy"])
    cpu0 = statistics.median(s[1] for s in samples["bare DSPy"])
    print(
        f"ChainOfThought on the scripted LM (latency {args.latency * 1000:.0f} ms); {args.calls} calls x "
        f"{args.rounds} rounds, blocks of {block}"
    )
    caller0 = statistics.median(s[2] for s in samples["bare DSPy"])
    print(
        f"{'':24} {'wall us':>9} {'ratio':>7} {'(rounds)':>13} {'all blocks':>13} {'cpu us':>9} {'ratio':>7}"
        f" {'caller us':>9} {'ratio':>7}"
    )
    for name, values in samples.items():
        wall = statistics.median(s[0] for s in values)
        cpu = statistics.median(s[1] for s in values)
        caller = statistics.median(s[2] for s in values)
        each = [v[0] / b[0] for v, b in zip(values, samples["bare DSPy"], strict=True)]
        spread = f"{min(each):.3f}-{max(each):.3f}"
        pooled = sum(walls[name]) / sum(walls["bare DSPy"])
        interval = f"{pooled:.3f}+-{paired_interval(walls[name], walls['bare DSPy']):.3f}"
        print(
            f"{name:24} {wall * 1e6:9.1f} {wall / wall0:7.3f} {spread:>13} {interval:>13}"
            f" {cpu * 1e6:9.1f} {cpu / cpu0:7.3f} {caller * 1e6:9.1f} {caller / caller0:7.3f}"
        )
    print(
        f"records written: {written}; targets: DSPex, record <= 1.25 (0 ms) and <= 1.02 (5 ms, wall); "
        "no record <= 1.05"
    )


if __name__ == "__main__":
    main()
