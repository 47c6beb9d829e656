"""A process that runs one program, prints the execution id the moment the call returns, then waits to be
killed (run as a script by the durability tests).

usage: durable_worker.py DATABASE_URL HOME DURABILITY

The writer's linger is raised to 30 s, so with ``async`` durability the record is certainly still in
memory when the parent kills this process; ``sync`` must not depend on it.
"""

from __future__ import annotations

import sys
import threading

import dspy

from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing.engine import ScriptedEngine


def main() -> None:
    url, home, durability = sys.argv[1], sys.argv[2], sys.argv[3]
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"][::-1]})
    app = App(Settings.load(database_url=url, home=home), lm=engine.lm("worker"))
    app._open().writer.linger = 30.0  # a wide "behind the call" window, so async is observably behind
    result = app.run(dspy.Predict("question -> answer"), {"question": "abc"}, durability=durability)  # type: ignore[arg-type]  # from argv, checked by App.run
    print(result.execution_id, flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
