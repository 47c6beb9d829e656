"""Strict JSON for stored program data: plain values only, checked with the path of the first offender.

``dspex.jsonable.to_jsonable`` turns anything into JSON by falling back to ``repr`` (right for run
records); a program version must load back exactly, so here a non-JSON value is an error instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from dspex.errors import ConfigurationError, UserError
from dspex.jsonable import canonical_hash

__all__ = ["SECRET_KEYS", "canonical_hash", "check_json"]

# Setting names that carry credentials; credentials come from the environment, never from the store.
# Deeper than any real spec or state, well within Python's recursion limit (a 500-deep spec was a 500).
MAX_DEPTH = 100
SECRET_KEYS = re.compile(r"api[_-]?key|secret|password|credential|authorization|_token$", re.IGNORECASE)


def _configuration_error(message: str, path: str) -> UserError:
    return ConfigurationError(f"{message} at {path}")


def check_json(
    value: Any,
    path: str,
    *,
    error: Callable[[str, str], UserError] = _configuration_error,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """``value`` as plain JSON (tuples become lists), or ``error(message, path)`` raised.

    ``path`` names ``value`` in messages; nested values extend it (``state.predict.demos[0]``).

    >>> check_json({"demos": [("a", 1)]}, "state")
    {'demos': [['a', 1]]}
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if max_depth < 1 and isinstance(value, Mapping | list | tuple):
        raise error(f"nested deeper than {MAX_DEPTH} levels; flatten it", path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"{value} is not a JSON number", path)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise error(f"JSON object keys are strings, got {type(key).__name__} {key!r}", path)
            out[key] = check_json(
                item, f"{path}.{key}" if path else key, error=error, max_depth=max_depth - 1
            )
        return out
    if isinstance(value, list | tuple):
        return [
            check_json(item, f"{path}[{i}]", error=error, max_depth=max_depth - 1)
            for i, item in enumerate(value)
        ]
    raise error(
        f"a {type(value).__module__}.{type(value).__qualname__} is not JSON; versions store JSON only "
        "(no pickle), so convert it to plain values first",
        path,
    )
