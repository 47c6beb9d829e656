"""Programs and actor initializers of the distributed tests (imported by name on the Ray actors)."""

from __future__ import annotations

import os
import time
from typing import Any

import dspy

_HOG: list[bytes] = []


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


class Hog(dspy.Module):
    """Keeps ``mb`` more megabytes alive on every call (a leak), answering with its process's pid."""

    def forward(self, mb: int, hold_s: float = 0.0) -> dspy.Prediction:
        _HOG.append(os.urandom(mb * 1024 * 1024))
        time.sleep(hold_s)
        return dspy.Prediction(held_mb=len(_HOG) * mb, pid=os.getpid())


def build_hog() -> Hog:
    return Hog()


def build_qa() -> Any:
    return dspy.ChainOfThought("question -> answer")


def build_sleepy() -> Sleepy:
    return Sleepy()


def prompt_aware_engine() -> Any:
    """A scripted engine whose answers depend on the prompt (as ``tests/pools/pool_programs.PromptAware``):
    the answer to ``q<i>`` is right with demos and ``i % 3``, or with "carefully" in the instructions and
    an even ``i``; proposed instructions say "carefully" or not by a hash of the proposer's inputs."""
    import zlib

    from dspex.testing import ScriptedEngine

    class Engine(ScriptedEngine):
        def _value(self, name: str, prompt: Any) -> Any:
            if name == "answer":
                question = str(prompt.inputs.get("question", ""))
                i = int(question[1:]) if question[1:].isdigit() else 0
                right = (prompt.demos > 0 and i % 3 != 0) or (
                    "carefully" in prompt.instructions.lower() and i % 2 == 0
                )
                return f"answer to {question}" if right else "wrong"
            if name in ("proposed_instruction", "new_instruction", "improved_instruction"):  # proposers, GEPA
                seed = zlib.crc32(repr(sorted(prompt.inputs.items())).encode())
                return "Answer carefully." if seed % 2 else "Answer the question."
            return super()._value(name, prompt)

    return Engine({})


def prompt_aware() -> None:
    """An actor initializer: the actor's LM is :func:`prompt_aware_engine`."""
    dspy.configure(
        lm=prompt_aware_engine().lm(cache=False)
    )  # process start-up: the one place configure belongs
