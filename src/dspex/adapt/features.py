"""Input features that make a contextual policy: a run's context is built from declared input fields.

::

    Feature("topic")                                   # the field's value (text, first 40 characters)
    Feature("question", kind="length", bounds=[80, 400])   # short / medium / long: "<80", "80-400", ">=400"

A context is ``"topic=geography|question=<80"``; an adaptive program keeps statistics per arm and
context (:mod:`dspex.adapt.policy`). At most ``MAX_CONTEXTS`` distinct contexts are tracked per process;
later new ones share the context ``"other"``, so a free-text field cannot grow the state without bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dspex.errors import ConfigurationError

__all__ = ["MAX_CONTEXTS", "Feature", "context_of"]

MAX_CONTEXTS = 64
_VALUE_CHARS = 40

FeatureKind = Literal["value", "length"]


@dataclass(frozen=True, slots=True)
class Feature:
    """One declared input feature (module docstring)."""

    field: str
    kind: FeatureKind = "value"
    bounds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field.isidentifier():
            raise ConfigurationError(f"a feature names an input field (an identifier), got {self.field!r}")
        if self.kind not in ("value", "length"):
            raise ConfigurationError(f"feature kind is 'value' or 'length', got {self.kind!r}")
        bounds = tuple(self.bounds)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in bounds) or list(
            bounds
        ) != sorted(set(bounds)):
            raise ConfigurationError(f"feature bounds are increasing whole numbers >= 0, got {list(bounds)}")
        if self.kind == "length" and not bounds:
            raise ConfigurationError(f"a length feature of {self.field!r} needs bounds, e.g. [80, 400]")
        if len(bounds) > 16:
            raise ConfigurationError("a feature has at most 16 bounds")
        object.__setattr__(self, "bounds", bounds)

    def bucket(self, inputs: Mapping[str, Any]) -> str:
        value = inputs.get(self.field)
        if self.kind == "value":
            if value is None:
                return "-"
            return str(value)[:_VALUE_CHARS].replace("|", "/")
        size = len(value) if isinstance(value, str | list | tuple | dict) else len(str(value or ""))
        low = None
        for bound in self.bounds:
            if size < bound:
                return f"<{bound}" if low is None else f"{low}-{bound}"
            low = bound
        return f">={low}"

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "kind": self.kind, "bounds": list(self.bounds)}

    @classmethod
    def from_json(cls, data: Any) -> Feature:
        if isinstance(data, str):
            return cls(data)
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a feature is a field name or {{field, kind, bounds}}, got {data!r}")
        unknown = sorted(set(data) - {"field", "kind", "bounds"})
        if unknown:
            raise ConfigurationError(f"unknown feature setting(s) {unknown}; valid: field, kind, bounds")
        bounds = data.get("bounds", ())
        if not isinstance(bounds, list | tuple):
            raise ConfigurationError(f"feature bounds are a list of whole numbers, got {bounds!r}")
        return cls(str(data.get("field", "")), data.get("kind", "value"), tuple(bounds))


def context_of(features: Sequence[Feature], inputs: Mapping[str, Any]) -> str | None:
    """The context string of a run's inputs, or None without features."""
    if not features:
        return None
    return "|".join(f"{f.field}={f.bucket(inputs)}" for f in features)[:200]
