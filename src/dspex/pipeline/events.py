"""Events a pipeline emits while it runs, in order, for progress displays and streaming.

::

    async for event in pipeline.stream(question="..."):
        if isinstance(event, StepFinished):
            print(event.step, f"{event.duration_ms:.0f} ms")
        elif isinstance(event, Finished):
            answer = event.result.answer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "Finished",
    "StepFailed",
    "StepFinished",
    "StepRetried",
    "StepSkipped",
    "StepStarted",
    "Token",
]


@dataclass(frozen=True, slots=True)
class StepStarted:
    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StepFinished:
    step: str
    duration_ms: float
    fields: tuple[str, ...]
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class StepRetried:
    step: str
    attempt: int
    error: dict[str, Any]
    wait_s: float


@dataclass(frozen=True, slots=True)
class StepFailed:
    """A step gave up: ``handled`` when the pipeline carries on (fallback or ``continue_on_error``)."""

    step: str
    error: dict[str, Any]
    handled: bool


@dataclass(frozen=True, slots=True)
class StepSkipped:
    """A step did not run because a field it needs was not produced (an upstream step failed)."""

    step: str
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Token:
    """A chunk of an output field as the LM streams it."""

    step: str
    field: str
    chunk: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended; ``result`` is the pipeline's ``dspy.Prediction`` (with ``errors`` when partial)."""

    result: Any
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)


Event = StepStarted | StepFinished | StepRetried | StepFailed | StepSkipped | Token | Finished
