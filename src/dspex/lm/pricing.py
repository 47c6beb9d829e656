"""Cost of LM calls in USD, offline: explicit prices first, then the price data DSPy bundles.

DSPy 3.4 ships a snapshot of provider prices (``dspy.clients.model_metadata``); with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` it never goes to the network for them. Models DSPy does not
know (self-hosted, simulated) are priced from a :class:`Prices` table the caller provides. Unknown
prices give ``None``, never zero.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Price", "Prices"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million input and output tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


_UNKNOWN: Any = object()  # not looked up yet (None: looked up, no price known)


@dataclass(slots=True)
class Prices:
    """A price table keyed by model (``provider/model`` or bare model name), with DSPy's as fallback."""

    table: Mapping[str, Price] = field(default_factory=dict)
    use_dspy_metadata: bool = True
    _found: dict[str, Price | None] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or None when nobody knows it. Cached per model."""
        # Read without the lock (one dict lookup is atomic; this runs per LM call); filled under it.
        cached = self._found.get(model, _UNKNOWN)
        if cached is not _UNKNOWN:
            known: Price | None = cached
            return known
        found = self.table.get(model) or self.table.get(model.rsplit("/", 1)[-1])
        if found is None and self.use_dspy_metadata:
            found = _dspy_price(model)
        with self._lock:
            self._found[model] = found
        return found

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """Cost in USD of one call, or None when the model's price is unknown."""
        price = self.price(model)
        return None if price is None else price.cost(input_tokens, output_tokens)


def _dspy_price(model: str) -> Price | None:
    provider, _, name = model.partition("/")
    if not name:
        return None
    try:
        from dspy.clients.model_metadata import model_info, rate
    except ImportError:  # a DSPy without the bundled snapshot: prices come from the table only
        return None
    info: Any = model_info(provider, name)
    if not info:
        return None
    per_input, per_output = rate(info, "input_cost_per_token"), rate(info, "output_cost_per_token")
    if per_input is None or per_output is None:
        return None
    return Price(float(per_input) * 1e6, float(per_output) * 1e6)
