"""A factory the CLI tests register by import path (``cli_sample:build_qa``), imported by bare name."""

from __future__ import annotations

import dspy


def build_qa() -> dspy.Module:
    return dspy.ChainOfThought("question -> answer")


def build_typed() -> dspy.Module:
    return dspy.Predict("question: str, k: int, tags: list[str] -> answer")
