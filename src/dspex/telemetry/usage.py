"""Token usage per model, as DSPy's usage tracker (``dspy.settings.usage_tracker``), thread-safe.

DSPy calls ``add_usage(model, usage)`` once per LM call made under the tracker. ``dspy.Parallel``
deep-copies the tracker into each worker thread so that DSPy's own tracker is not shared; this one is
locked and returns itself from ``__deepcopy__``, so the workers' calls count too. A tracker that was
active before (``dspy.track_usage()``) is passed as ``parent`` and still receives every entry. ::

    totals = UsageTotals(prices=prices, parent=dspy.settings.usage_tracker)
    with dspy.context(usage_tracker=totals):
        program(**inputs)
    totals.snapshot()   # {"openai/gpt-4o-mini": {"calls": 2, "prompt_tokens": ..., "cost_usd": ...}}
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dspex.lm.pricing import Prices

__all__ = ["CallUsage", "UsageTotals"]


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One LM call's tokens and cost (None when the model's price is unknown)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None


@dataclass(slots=True)
class _Totals:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = 0.0


class UsageTotals:
    """Per-model totals of LM calls, tokens and cost. See the module docstring."""

    def __init__(self, *, prices: Prices | None = None, parent: Any = None) -> None:
        self.prices = prices
        self.parent = parent
        self._totals: dict[str, _Totals] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> UsageTotals:
        return self

    def add_usage(self, lm: str, usage_entry: Mapping[str, Any]) -> CallUsage:
        """Count one LM call (DSPy's tracker protocol); returns what the call used."""
        return CallUsage(*self.count(lm, usage_entry))

    def count(self, lm: str, usage_entry: Mapping[str, Any]) -> tuple[int, int, int, float | None]:
        """:meth:`add_usage` returning the call's prompt, completion and total tokens and cost as a
        tuple: what a run's recorder reads for every LM call (a frozen dataclass cost ~8,000 instructions
        to build)."""
        if self.parent is not None:
            self.parent.add_usage(lm, dict(usage_entry))
        prompt = int(usage_entry.get("prompt_tokens") or 0)
        completion = int(usage_entry.get("completion_tokens") or 0)
        total = int(usage_entry.get("total_tokens") or prompt + completion)
        cost = self.prices.cost(lm, prompt, completion) if self.prices is not None else None
        with self._lock:
            totals = self._totals.setdefault(lm, _Totals())
            totals.calls += 1
            totals.prompt_tokens += prompt
            totals.completion_tokens += completion
            totals.total_tokens += total
            totals.cost_usd = None if cost is None or totals.cost_usd is None else totals.cost_usd + cost
        return prompt, completion, total, cost

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per model: calls, prompt/completion/total tokens, and cost in USD (None when unknown)."""
        with self._lock:
            return {
                model: {
                    "calls": t.calls,
                    "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                    "total_tokens": t.total_tokens,
                    "cost_usd": t.cost_usd,
                }
                for model, t in self._totals.items()
            }

    def summary(self) -> tuple[dict[str, dict[str, Any]], int, float | None]:
        """:meth:`snapshot`, :attr:`total_tokens` and :attr:`cost_usd` read together (one lock, one pass:
        what a run's end reads)."""
        usage: dict[str, dict[str, Any]] = {}
        total = 0
        cost: float | None = 0.0
        with self._lock:
            for model, t in self._totals.items():
                usage[model] = {
                    "calls": t.calls,
                    "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                    "total_tokens": t.total_tokens,
                    "cost_usd": t.cost_usd,
                }
                total += t.total_tokens
                cost = None if cost is None or t.cost_usd is None else cost + t.cost_usd
        return usage, total, (None if cost is None else float(cost))

    @property
    def calls(self) -> int:
        with self._lock:
            return sum(t.calls for t in self._totals.values())

    @property
    def total_tokens(self) -> int:
        with self._lock:
            return sum(t.total_tokens for t in self._totals.values())

    @property
    def cost_usd(self) -> float | None:
        """The total cost; None when any model's price is unknown (unknown is not zero)."""
        with self._lock:
            costs = [t.cost_usd for t in self._totals.values()]
        if any(c is None for c in costs):
            return None
        return float(sum(c for c in costs if c is not None))
