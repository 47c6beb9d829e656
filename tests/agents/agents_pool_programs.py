"""Programs for the pooled consensus test, imported by name in the pool's worker processes."""

from __future__ import annotations

import os

import dspy


class Fixed(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Answers a fixed value, with the worker's pid: no LM needed to test where members ran."""

    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer=self.value, pid=os.getpid())


def build_four() -> Fixed:
    return Fixed("4")


def build_five() -> Fixed:
    return Fixed("5")
