"""The reward an adaptive program maximises: quality, cost and latency, weighted, in [0, 1].

::

    Reward(quality=0.8, latency=0.2, latency_scale_ms=2000)               # quality from feedback
    Reward(quality=1.0, cost=0.5, cost_scale_usd=0.01, metric="is_json")  # quality from a metric

``reward = (wq * quality + wc * (1 - min(cost / cost_scale, 1)) + wl * (1 - min(latency / latency_scale,
1))) / (wq + wc + wl)``: every term is in [0, 1], so the reward is too, which is what the Beta posteriors
of Thompson sampling and the confidence bounds of UCB expect. A failed run has quality 0 and the cost and
latency it had. Quality comes from ``metric`` (a function of the run's inputs and outputs returning a
number in [0, 1], evaluated when the run ends: a registered name, or a callable given in Python) or, with
no metric, from feedback given later on the run's execution id (``app.feedback(id, score=...)``): the
first score a run gets is its quality; a run never rated has no reward (it counts as served, not as
rewarded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dspex.adapt._settings import from_mapping
from dspex.errors import ConfigurationError

__all__ = ["QualityMetric", "Reward"]

QualityMetric = Callable[[Mapping[str, Any], Mapping[str, Any]], float]


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"reward weight {name!r} is a finite number >= 0, got {value!r}")
    return float(value)


def _scale(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"reward {name!r} is a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Reward:
    """How a run is scored (module docstring). ``metric`` names a function the operator registered
    (``App.tools``); a callable metric is passed to ``app.adapt(..., metric=fn)`` instead."""

    quality: float = 1.0
    cost: float = 0.0
    latency: float = 0.0
    cost_scale_usd: float = 0.01
    latency_scale_ms: float = 5000.0
    metric: str | None = None

    def __post_init__(self) -> None:
        for name in ("quality", "cost", "latency"):
            object.__setattr__(self, name, _weight(name, getattr(self, name)))
        if self.quality + self.cost + self.latency <= 0:
            raise ConfigurationError("a reward needs a weight > 0 on quality, cost or latency")
        object.__setattr__(self, "cost_scale_usd", _scale("cost_scale_usd", self.cost_scale_usd))
        object.__setattr__(self, "latency_scale_ms", _scale("latency_scale_ms", self.latency_scale_ms))
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ConfigurationError(
                f"reward metric is the name of a registered function, got {self.metric!r}"
            )

    def combine(
        self, quality: float | None, cost_usd: float | None, latency_ms: float | None
    ) -> float | None:
        """The reward of a run; None while its quality is unknown (and weighted)."""
        total = self.quality + self.cost + self.latency
        value = 0.0
        if self.quality > 0:
            if quality is None:
                return None
            value += self.quality * min(1.0, max(0.0, float(quality)))
        if self.cost > 0:
            value += self.cost * (1.0 - min(1.0, max(0.0, (cost_usd or 0.0) / self.cost_scale_usd)))
        if self.latency > 0:
            value += self.latency * (1.0 - min(1.0, max(0.0, (latency_ms or 0.0) / self.latency_scale_ms)))
        return value / total

    def to_json(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "cost": self.cost,
            "latency": self.latency,
            "cost_scale_usd": self.cost_scale_usd,
            "latency_scale_ms": self.latency_scale_ms,
            "metric": self.metric,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reward:
        return from_mapping(cls, data, "reward", "a reward is a mapping of weights and scales")


def check_quality(value: Any, metric: str) -> float:
    """A metric's result as a quality in [0, 1]; ``ConfigurationError`` saying what it returned."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(
            f"reward metric {metric!r} returned {value!r}; it must return a number in [0, 1]"
        )
    return float(value)
