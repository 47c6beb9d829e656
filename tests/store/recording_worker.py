"""A process that records runs, for the multi-process and crash tests (run as a script).

usage: recording_worker.py DATABASE_URL HOME RUNS [LATENCY_SECONDS]
"""

from __future__ import annotations

import sys

import dspy

from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing.engine import ScriptedEngine


def main() -> None:
    url, home, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    latency = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"][::-1]}, latency=latency)
    program = dspy.Predict("question -> answer")
    with App(Settings.load(database_url=url, home=home), lm=engine.lm("worker")) as app:
        for i in range(runs):
            app.run(program, {"question": f"q{i}"})


if __name__ == "__main__":
    main()
