"""Settings objects of an adaptive program (policy, reward, re-optimization) from their JSON form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from dspex.errors import ConfigurationError

__all__ = ["from_mapping"]

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, what: str, expected: str) -> T:
    """``cls(**data)`` for a dataclass ``cls``: ``data`` must be a mapping whose keys are its fields
    (else a ``ConfigurationError``: ``expected`` says what it should be, or the unknown ``what``
    settings are named with the valid ones)."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{expected}, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(f"unknown {what} setting(s) {unknown}; valid: {sorted(known)}")
    return cls(**dict(data))
