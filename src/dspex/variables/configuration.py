"""Configuration: the values a program runs with, as an immutable, hashable mapping with a content id.

A configuration maps variable names to JSON values. It is what program versions and executions store,
and its :attr:`Configuration.id` (SHA-256 of the canonical JSON, the hash program versions use) names it
in both. :meth:`dspex.variables.space.VariableSpace.validate` builds checked ones; the constructor only
checks that the values are JSON. ::

    config = Configuration({"temperature": 0.5, "module": "predict"})
    config.id == Configuration({"module": "predict", "temperature": 0.5}).id   # True
    config.to_json()                                                            # a plain dict
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from dspex.errors import ConfigurationError
from dspex.jsonable import canonical_hash

__all__ = ["Configuration"]


def _freeze(value: Any, path: str) -> Any:
    """An immutable copy of a JSON value (mappings become read-only views, lists tuples)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"configuration value {value} at {path} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ConfigurationError(f"configuration keys are strings, got {key!r} at {path}")
        return MappingProxyType({k: _freeze(v, f"{path}.{k}") for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, f"{path}[{i}]") for i, v in enumerate(value))
    raise ConfigurationError(
        f"configuration value at {path} is a {type(value).__qualname__}, not JSON; "
        "variables hold strings, numbers, booleans, None, lists and mappings"
    )


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Configuration(Mapping[str, Any]):
    """An immutable mapping of variable name to JSON value, hashable, with a stable content id.

    >>> a = Configuration({"temperature": 0.5, "module": "predict"})
    >>> a == Configuration({"module": "predict", "temperature": 0.5}), a.id == Configuration(a).id
    (True, True)
    """

    __slots__ = ("_id", "_values")

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        frozen = _freeze(dict(values or {}), "configuration")
        self._values: Mapping[str, Any] = frozen
        self._id: str | None = None

    @property
    def id(self) -> str:
        """SHA-256 of the canonical JSON (sorted keys): equal content, equal id, whatever the order."""
        if self._id is None:
            # Imported here: dspex.programs pulls in the store; configurations must stay cheap to import.

            self._id = canonical_hash(self.to_json())
        return self._id

    def to_json(self) -> dict[str, Any]:
        """A plain (mutable) JSON copy."""
        thawed: dict[str, Any] = _thaw(self._values)
        return thawed

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Configuration):
            return self.id == other.id
        if isinstance(other, Mapping):
            equal: bool = self.to_json() == _thaw(dict(other))
            return equal
        return NotImplemented

    def __repr__(self) -> str:
        return f"Configuration({self.to_json()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Read-only views do not pickle; configurations cross process boundaries to workers.
        return (Configuration, (self.to_json(),))
