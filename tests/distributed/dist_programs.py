"""Programs and actor initializers of the distributed tests (imported by name on the Ray actors)."""

from __future__ import annotations

import os
import time
from typing import Any

import dspy


def scripted() -> None:
    """An actor initializer: its LM is a scripted engine answering ``answer to <question>``."""
    from dspex.testing import ScriptedEngine

    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    dspy.configure(lm=engine.lm(cache=False))  # process start-up: the one place configure belongs


class Sleepy(dspy.Module):
    """Answers after ``seconds`` with the process's pid: for kills and timeouts."""

    def forward(self, question: str, seconds: float = 0.0) -> dspy.Prediction:
        time.sleep(seconds)
        return dspy.Prediction(answer=f"slept {seconds}", pid=os.getpid())


def build_qa() -> Any:
    return dspy.ChainOfThought("question -> answer")


def build_sleepy() -> Sleepy:
    return Sleepy()
