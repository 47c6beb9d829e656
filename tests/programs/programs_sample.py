"""Factories and an engine for the registry tests, imported by bare name like tests/modules' helpers.

``programs_sample:build_qa`` is the import path the tests register; ``SavedEngine`` is a custom DSPy
engine that can be saved (it has ``dump_state``/``load_state``), so a per-predictor LM on it survives a
version round trip.
"""

from __future__ import annotations

from typing import Any

import dspy

from dspex.testing.engine import ScriptedEngine

NOT_CALLABLE = 3
BUILDS = {"qa": 0}  # how many times build_qa ran, to observe the registry's cache


def build_qa() -> dspy.Module:
    BUILDS["qa"] += 1
    return dspy.ChainOfThought("question -> answer")


class Pipeline(dspy.Module):  # type: ignore[misc]  # dspy has no type information: Module is Any
    """Two predictors, so per-predictor config and LMs are told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict("question -> topic")
        self.respond = dspy.Predict("question, topic -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        topic = self.classify(question=question).topic
        return self.respond(question=question, topic=topic)


def build_pipeline() -> dspy.Module:
    return Pipeline()


def build_predict() -> dspy.Module:
    return dspy.Predict("question -> answer")


def not_a_module() -> int:
    return 42


def broken() -> dspy.Module:
    raise RuntimeError("the index is not built")


class SavedEngine:
    """A saveable engine answering ``<prefix><question>``; ``scripted.history`` shows the prompts."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.scripted = ScriptedEngine({"answer": lambda inputs: f"{prefix}{inputs['question']}"})

    def complete(self, request: Any) -> Any:
        return self.scripted.complete(request)

    def close(self) -> None:
        self.scripted.close()

    def dump_state(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> SavedEngine:
        return cls(state["prefix"])


def saved_lm(prefix: str, **kwargs: Any) -> Any:
    """A ``dspy.LM`` on a :class:`SavedEngine`."""
    return dspy.LM("scripted/saved", engine=SavedEngine(prefix), cache=False, **kwargs)
