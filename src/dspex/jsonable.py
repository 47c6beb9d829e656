"""Turn DSPy and Python values into plain JSON values (dicts, lists, strings, numbers, booleans, None).

Stored data is JSON, never pickle: predictions, examples, pydantic models (``dspy.Image``,
``dspy.History``...), dataclasses, sets and tuples are converted; anything else becomes its ``repr``,
marked so a reader knows it was not round-trippable.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["canonical_hash", "dumps", "to_jsonable"]

_MAX_DEPTH = 32


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-compatible copy of ``value``.

    >>> to_jsonable({"k": (1, 2.5, float("nan")), "when": datetime.date(2026, 1, 2)})
    {'k': [1, 2.5, None], 'when': '2026-01-02'}
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > _MAX_DEPTH:
        return {"__repr__": "<nested too deep>"}
    depth = _depth + 1
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, depth) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, depth) for v in value]
    to_dict = getattr(value, "toDict", None)  # dspy.Prediction, dspy.Example
    if callable(to_dict):
        return to_jsonable(to_dict(), depth)
    dump = getattr(value, "model_dump", None)  # pydantic models, incl. dspy.Image / dspy.History
    if callable(dump):
        try:
            return to_jsonable(dump(mode="json"), depth)
        except Exception:  # a model whose fields cannot be dumped still gets recorded, as its repr
            return {"__repr__": repr(value)[:2000]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, depth)
    if isinstance(value, bytes):
        return {"__bytes__": len(value)}
    return {"__repr__": repr(value)[:2000]}


def _default(value: Any) -> Any:
    # One level only: the encoder recurses into what this returns, far faster than converting the whole
    # value in Python first. orjson handles dataclasses, datetimes, enums and UUIDs itself.
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, set | frozenset):
        return list(value)
    return to_jsonable(value)


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    """Serialise ``value`` to a JSON string, converting what JSON cannot hold like :func:`to_jsonable`.

    The fast path is orjson (NaN and infinities become null, non-string keys become strings) with a
    ``default`` hook for DSPy and pydantic objects; values it refuses (integers beyond 64 bits, nesting
    deeper than 254 levels) take the slow path through :func:`to_jsonable`. The database engines use
    this as their JSON serialiser.
    """
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(to_jsonable(value), allow_nan=False, separators=(",", ":"))


def canonical_hash(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys, no spaces): equal content, equal hash.

    Content ids of program versions, dataset examples and variable configurations all come from here.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
