"""Turn DSPy and Python values into plain JSON values (dicts, lists, strings, numbers, booleans, None).

Stored data is JSON, never pickle: predictions, examples, pydantic models (``dspy.Image``,
``dspy.History``...), dataclasses, sets and tuples are converted; anything else becomes its ``repr``,
marked so a reader knows it was not round-trippable.

What the store can hold: :func:`dumps`, the database engines' JSON serialiser, writes the same JSON on
SQLite and PostgreSQL, so one bad value never fails a write:

- NUL characters become U+FFFD (PostgreSQL text and JSONB cannot hold NUL at all; an escape such as
  ``\\u0000`` would be indistinguishable from the six characters a user typed);
- lone surrogates become U+FFFD (they are not Unicode scalar values: UTF-8, so PostgreSQL and every
  JSON client, cannot encode them);
- NaN and infinities become null (JSON has no spelling for them);
- integers beyond 64 bits are stored exactly, as JSON numbers (both databases hold them), so datasets
  keep them. :func:`storable` additionally turns them into decimal strings (``2**70`` ->
  ``"1180591620717411303424"``): execution records are read through it, because orjson, the API and
  most JSON clients cannot hold such numbers, and a listing must never fail on one.
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

__all__ = [
    "RECORD_KINDS",
    "EncodedJSON",
    "canonical_hash",
    "dumps",
    "encoded",
    "fields_of",
    "storable",
    "to_jsonable",
]

_MAX_DEPTH = 32
_AS_IS = frozenset({str, int, bool, type(None)})  # exact types that are already JSON (not float: NaN)
# Tuples, not ``X | Y``: a union written in a function is built anew on every call (about 2,500
# instructions each), and to_jsonable runs several times per recorded run.
_SCALARS = (str, bool, int)
_ITERABLES = (tuple, set, frozenset)
_SETS = (set, frozenset)
# DSPy classes converted through their fields (dspy.Prediction, dspy.Example), learned on first sight:
# later values of these classes skip the Mapping and sequence checks (an ABC isinstance among them).
RECORD_KINDS: set[type] = set()
_RECORD_KINDS = RECORD_KINDS


class EncodedJSON:
    """JSON text :func:`dumps` already produced, carried as a value: encoded again, it is embedded as is.

    A run's record is encoded when the run ends, so the objects it describes (spans, predictions, LM
    messages) die with the run instead of surviving, until the background writer gets to them, into the
    garbage collector's older generations (whose full passes then cost more than the encoding).
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"EncodedJSON({self.text[:60]!r})"


def encoded(value: Any) -> EncodedJSON | None:
    """``value`` encoded now (None stays None, an :class:`EncodedJSON` stays as it is)."""
    if value is None or type(value) is EncodedJSON:
        return value
    return EncodedJSON(dumps(value))


def _fields(value: Any, to_dict: Any) -> Any:
    """A ``dspy.Example``'s (or ``Prediction``'s) fields. Its own store when it has one: ``toDict`` would
    convert every nested value in Python (a pydantic ``isinstance`` each), which the caller does anyway."""
    store = getattr(value, "_store", None)
    return store if type(store) is dict else to_dict()


def fields_of(value: Any) -> Any:
    """``value``, or for a value of :data:`RECORD_KINDS` (a DSPy Prediction or Example) its fields: what
    :func:`dumps` encodes for it. Handing orjson the fields skips its search of the object for dataclass
    attributes, which for a DSPy Example runs its ``__getattr__`` and builds an ``AttributeError``."""
    if type(value) in _RECORD_KINDS:
        return _fields(value, value.toDict)
    return value


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-compatible copy of ``value``.

    >>> to_jsonable({"k": (1, 2.5, float("nan")), "when": datetime.date(2026, 1, 2)})
    {'k': [1, 2.5, None], 'when': '2026-01-02'}
    """
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > _MAX_DEPTH:
        return {"__repr__": "<nested too deep>"}
    depth = _depth + 1
    kind = type(value)
    if kind in _RECORD_KINDS:  # a run's prediction: straight to its fields, without the checks below
        return to_jsonable(_fields(value, value.toDict), depth)
    if kind is EncodedJSON:
        return json.loads(value.text)
    if kind is dict or (kind is not list and isinstance(value, Mapping)):  # exact types skip the ABC check
        # Text, integers, booleans and None are their own JSON: kept without a call each.
        return {
            k if type(k) is str else str(k): v if type(v) in _AS_IS else to_jsonable(v, depth)
            for k, v in value.items()
        }
    if kind is list or isinstance(value, _ITERABLES):
        return [to_jsonable(v, depth) for v in value]
    to_dict = getattr(value, "toDict", None)  # dspy.Prediction, dspy.Example
    if callable(to_dict):
        if kind.__module__.startswith("dspy."):  # DSPy's own: the checks above stay false for the class
            _RECORD_KINDS.add(kind)
        return to_jsonable(_fields(value, to_dict), depth)
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


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson, and so the fast path, encodes as numbers
_REPLACEMENT = "\ufffd"


def _clean_str(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", _REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        text = "".join(_REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def storable(value: Any) -> Any:
    """``value`` (already JSON-shaped, or anything :func:`to_jsonable` takes) as JSON anything holds.

    >>> storable({"n": 2**70, "s": "a\x00b", "x": float("nan")})
    {'n': '1180591620717411303424', 's': 'a\ufffdb', 'x': None}
    """
    return _repaired(value, ints_as_text=True)


def _repaired(value: Any, *, ints_as_text: bool, _depth: int = 0) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value) if ints_as_text and not _INT_MIN <= value <= _INT_MAX else value
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > _MAX_DEPTH:
        return {"__repr__": "<nested too deep>"}
    depth = _depth + 1
    if isinstance(value, Mapping):
        return {
            _clean_str(str(k)): _repaired(v, ints_as_text=ints_as_text, _depth=depth)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_repaired(v, ints_as_text=ints_as_text, _depth=depth) for v in value]
    return _repaired(to_jsonable(value, _depth), ints_as_text=ints_as_text, _depth=_depth)


def _default(value: Any) -> Any:
    # One level only: the encoder recurses into what this returns, far faster than converting the whole
    # value in Python first. orjson handles dataclasses, datetimes, enums and UUIDs itself.
    if type(value) is EncodedJSON:
        return orjson.Fragment(value.text)
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return _fields(value, to_dict)
    if isinstance(value, _SETS):
        return list(value)
    return to_jsonable(value)


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Tried first: with OPT_NON_STR_KEYS orjson takes a slower path for every dict, even when all keys are
# text (a run's span tree: 37K instructions with it, 24K without). A key that is not text makes the
# first try fail, and the value is encoded again with it: the same JSON either way.
_STR_KEYS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    """Serialise ``value`` to a JSON string, converting what JSON cannot hold like :func:`to_jsonable`.

    The fast path is orjson (NaN and infinities become null, non-string keys become strings) with a
    ``default`` hook for DSPy and pydantic objects; values it refuses (integers beyond 64 bits, nesting
    deeper than 254 levels, lone surrogates) and text holding a NUL take the slow path, which repairs
    text and numbers as the module docstring says (integers stay numbers). The database engines use
    this as their JSON serialiser.
    """
    try:
        try:
            data = orjson.dumps(value, default=_default, option=_STR_KEYS)
        except orjson.JSONEncodeError:
            data = orjson.dumps(value, default=_default, option=_OPTIONS)
        text = data.decode()
    except (orjson.JSONEncodeError, TypeError):
        pass
    else:
        # A NUL is escaped as \u0000 by every encoder; a literal backslash before "u0000" is escaped as
        # \\u0000 and also matches, which only costs the slow path the same correct answer.
        if "\\u0000" not in text:
            return text
    repaired = _repaired(value, ints_as_text=False)
    return json.dumps(repaired, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def canonical_hash(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys, no spaces): equal content, equal hash.

    Content ids of program versions, dataset examples and variable configurations all come from here.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
