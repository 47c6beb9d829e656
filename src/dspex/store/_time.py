"""Times in the store: always timezone-aware UTC."""

from __future__ import annotations

import datetime as dt
from typing import overload

__all__ = ["aware", "utcnow"]


def utcnow() -> dt.datetime:
    """Now, in UTC."""
    return dt.datetime.now(dt.UTC)


@overload
def aware(value: dt.datetime) -> dt.datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` as UTC-aware: SQLite hands back naive datetimes, and everything dspex stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
