"""Pool initializers of the telemetry tests (imported by name in the workers)."""

from __future__ import annotations

import dspy


def scripted() -> None:
    """A pool initializer: the worker's LM is a scripted engine answering ``answer to <question>``."""
    from dspex.testing import ScriptedEngine

    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    dspy.configure(lm=engine.lm("worker", cache=False))  # process start-up: the one place configure belongs
