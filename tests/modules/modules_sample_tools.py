"""Importable tools for the module catalog tests (import paths like ``modules_sample_tools:add``)."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


def one_if_good(inputs: dict[str, object], prediction: object) -> float:
    """A reward function: 1.0 when the answer is 'good'."""
    return 1.0 if getattr(prediction, "answer", None) == "good" else 0.0


NOT_CALLABLE = 42
