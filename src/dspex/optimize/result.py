"""What an evaluation returns: one record per example and the aggregate, both as JSON.

Scores are means in [0, 1] for the built-in metrics (``dspy.Evaluate`` reports percentages). An
example that failed counts with the failure score (0.0 by default) in every metric, as in
``dspy.Evaluate``; its record says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dspex.errors import ConfigurationError, EvaluationAborted

__all__ = ["EarlyStop", "EvaluationAborted", "EvaluationResult", "ExampleRecord"]

RESULT_VERSION = 1
_EPSILON = 1e-12  # float sums: "cannot reach 0.7" must not fire when the best possible is 0.7 exactly


@dataclass(frozen=True, slots=True)
class EarlyStop:
    """When to stop scheduling examples: the score is bad enough that finishing would waste LM calls.

    - ``stop_if_cannot_reach=x``: stop as soon as the best mean still possible (every unfinished
      example scoring ``max_score``) is below ``x``. That is a certainty, so it applies from the first
      example; an optimizer uses it to prune a configuration that cannot beat the best so far.
    - ``stop_below=x``: stop when the running mean is below ``x`` after at least ``min_examples``
      (a heuristic: the mean of the first examples estimates the rest).

    >>> EarlyStop(stop_if_cannot_reach=0.8)
    >>> EarlyStop(min_examples=20, stop_below=0.3)
    """

    min_examples: int = 10
    stop_below: float | None = None
    stop_if_cannot_reach: float | None = None
    max_score: float = 1.0

    def __post_init__(self) -> None:
        if self.stop_below is None and self.stop_if_cannot_reach is None:
            raise ConfigurationError("EarlyStop needs stop_below=... or stop_if_cannot_reach=... (or both)")
        if self.min_examples < 1:
            raise ConfigurationError(f"EarlyStop min_examples must be >= 1, got {self.min_examples}")

    def reason(self, *, done: int, total: int, score_sum: float) -> str | None:
        """Why to stop now (a sentence), or None to go on."""
        if self.stop_if_cannot_reach is not None:
            best = (score_sum + (total - done) * self.max_score) / total
            if best < self.stop_if_cannot_reach - _EPSILON:
                return (
                    f"cannot reach {self.stop_if_cannot_reach:g}: the best possible mean is {best:.4f} "
                    f"after {done} of {total} examples"
                )
        if self.stop_below is not None and done >= self.min_examples:
            mean = score_sum / done
            if mean < self.stop_below - _EPSILON:
                return f"mean {mean:.4f} is below {self.stop_below:g} after {done} of {total} examples"
        return None


@dataclass(frozen=True, slots=True)
class ExampleRecord:
    """One evaluated example.

    ``inputs`` and ``prediction`` are JSON (``prediction`` is None when the program failed);
    ``error`` is ``{"type", "message", "stage": "program" | "metric"}`` or None; ``feedback`` holds
    the reasons metrics gave (an LM judge's); ``cached`` says the result came from the cache.
    """

    index: int
    example_hash: str
    inputs: dict[str, Any]
    prediction: dict[str, Any] | None
    score: float
    scores: dict[str, float]
    error: dict[str, Any] | None = None
    cached: bool = False
    duration_ms: float = 0.0
    feedback: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON values."""
        data: dict[str, Any] = {
            "index": self.index,
            "example_hash": self.example_hash,
            "inputs": self.inputs,
            "prediction": self.prediction,
            "score": self.score,
            "scores": dict(self.scores),
            "error": self.error,
            "cached": self.cached,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.feedback:
            data["feedback"] = dict(self.feedback)
        return data


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """The outcome of one evaluation.

    ``score`` is the mean of the primary metric over the ``n`` examples evaluated (fewer than
    ``total`` when it stopped early); ``scores`` has every metric's mean. ``lm_calls`` and ``usage``
    (tokens and calls per model) count the LM calls this evaluation made, judge calls included; cached
    examples make none.

    >>> result = await Evaluator(exact_match).arun(program, devset)
    >>> result.score, result.errors, result.records[0].prediction
    """

    score: float
    scores: dict[str, float]
    primary: str
    n: int
    total: int
    errors: int
    cached: int
    records: tuple[ExampleRecord, ...]
    duration_s: float
    configuration_id: str | None = None
    stopped_early: bool = False
    stop_reason: str | None = None
    lm_calls: int = 0
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self, *, records: bool = True) -> dict[str, Any]:
        """The result as plain JSON values (``records=False`` leaves the per-example records out)."""
        data: dict[str, Any] = {
            "v": RESULT_VERSION,
            "configuration_id": self.configuration_id,
            "score": self.score,
            "scores": dict(self.scores),
            "primary": self.primary,
            "n": self.n,
            "total": self.total,
            "errors": self.errors,
            "cached": self.cached,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "duration_s": round(self.duration_s, 6),
            "lm_calls": self.lm_calls,
            "usage": {model: dict(u) for model, u in self.usage.items()},
        }
        if records:
            data["records"] = [r.to_json() for r in self.records]
        return data

    def __repr__(self) -> str:
        early = f", stopped early ({self.stop_reason})" if self.stopped_early else ""
        return (
            f"EvaluationResult(score={self.score:.4f} ({self.primary}), n={self.n}/{self.total}, "
            f"errors={self.errors}, cached={self.cached}{early})"
        )
