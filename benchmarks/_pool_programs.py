"""Programs and the worker initializer of ``benchmarks/pools.py`` (workers import them by name)."""

from __future__ import annotations

import os
from typing import Any

import dspy

_LEAKED: list[bytes] = []


def scripted() -> None:
    """Pool initializer: the worker's LM is a scripted engine that answers instantly."""
    from dspex.testing import ScriptedEngine

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    engine = ScriptedEngine({"answer": lambda inputs: str(inputs["question"]).upper()}, keep_history=1)
    dspy.configure(lm=engine.lm("bench", cache=False))  # process start-up: where configure belongs


def scripted_50ms() -> None:
    """Pool initializer: the scripted engine with 50 ms of simulated latency per call."""
    dspy.configure(lm=scripted_lm(latency=0.05))


def scripted_lm(latency: float = 0.0) -> Any:
    from dspex.testing import ScriptedEngine

    engine = ScriptedEngine(
        {"answer": lambda inputs: str(inputs["question"]).upper()}, keep_history=1, latency=latency
    )
    return engine.lm("bench", cache=False)


class NoOp(dspy.Module):
    """Does nothing: what is left of a run is the dispatch and the record."""

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer="")


class Leak(dspy.Module):
    """Keeps 50 MB more alive on every call."""

    def forward(self, question: str) -> dspy.Prediction:
        _LEAKED.append(os.urandom(50 * 1024 * 1024))
        return dspy.Prediction(answer=str(len(_LEAKED)))


class Hog(dspy.Module):
    """Allocates ``mb`` megabytes and holds them ``hold_s`` seconds: memory pressure on a worker."""

    def forward(self, mb: int, hold_s: float = 0.0) -> dspy.Prediction:
        import time

        held = b"x" * (mb * 1024 * 1024)  # touched, so it is resident
        time.sleep(hold_s)
        return dspy.Prediction(held_mb=len(held) // (1024 * 1024))


def build_hog() -> Hog:
    return Hog()


def build_noop() -> NoOp:
    return NoOp()


def build_cot() -> Any:
    return dspy.ChainOfThought("question -> answer")


def build_leak() -> Leak:
    return Leak()
