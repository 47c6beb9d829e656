"""Instructions per call of each recording level, for callgrind: wall times on a shared VM swing 10%.

Run one mode at two call counts under callgrind and take the slope, so that start-up cancels out::

    for n in 100 300; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.MODE.$n \\
            .venv/bin/python benchmarks/recording_instructions.py MODE $n
    done
    # per call: (summary of cg.MODE.300 - summary of cg.MODE.100) / 200   (grep '^summary' cg.MODE.*)

MODE is ``bare`` (the ChainOfThought of ``recording_overhead.py`` under one ``dspy.context``),
``norecord`` (``App.run`` with ``record=False``), or a trace level recorded to SQLite: ``off``, ``lean``,
``full``. ``PYTHONHASHSEED=0`` keeps dict probe lengths, and so the counts, the same from one process to
the next. The execution writer takes one batch per flush instead of lingering 50 ms: under valgrind a run
is about 50 times slower, and timed batching would make the count depend on how many runs a batch held.
One batch per flush makes the writer's cost per run slightly lower than in a real process (batches of
about 80 runs there), never higher. For the same reason the recorder's lease is not renewed during the
count (a few SQL statements every 20 s in a real process).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.lm.pricing import Price, Prices
from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine

WARM = 50  # calls before the counted ones (imports, caches, the database)


def main() -> None:
    mode, calls = sys.argv[1], int(sys.argv[2])
    if mode not in ("bare", "norecord", "off", "lean", "full"):
        raise SystemExit(f"mode is one of bare, norecord, off, lean, full; got {mode!r}")
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}, keep_history=1)
    lm = engine.lm("bench")
    program = dspy.ChainOfThought("question -> answer")
    questions = [f"question {i}" for i in range(WARM + calls)]
    if mode == "bare":
        with dspy.context(lm=lm):
            for q in questions:
                program(question=q)
        return
    with tempfile.TemporaryDirectory() as tmp:
        level = "off" if mode == "norecord" else mode
        settings = Settings.load(home=Path(tmp), database_url=f"sqlite:///{tmp}/bench.db", trace=level)
        prices = Prices({"bench": Price(0.5, 1.5)})
        with App(settings, lm=lm, prices=prices, record=mode != "norecord") as app:
            writer = app._open().writer  # the benchmark's own look inside: batching fixed, see above
            writer.linger = writer.hold_running = 1e6
            # The recorder lease is renewed (and dead recorders' runs swept) every 20 s of wall time: under
            # valgrind that is every few hundred runs, and how many depends on the machine's load.
            writer._next_renew = time.monotonic() + 1e6
            for q in questions[:WARM]:
                app.run(program, {"question": q})
            app.flush(timeout=None)
            for q in questions[WARM:]:
                app.run(program, {"question": q})
            app.flush(timeout=None)


if __name__ == "__main__":
    main()
