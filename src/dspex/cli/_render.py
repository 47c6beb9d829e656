"""Shared pieces of the command groups: opening the App, error exits, JSON output, parsing and formats.

Exit codes, the same for every command: 0 success; 1 a run failed (``RunError``: the program or the LM);
2 the caller must change something (``UserError``: bad arguments, specs, settings or input data, and
click's own usage errors). Anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from dspex.errors import ConfigurationError, RunError, UserError

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = [
    "EXIT_RUN_FAILED",
    "EXIT_USER_ERROR",
    "console",
    "emit_json",
    "errors",
    "fmt_cost",
    "fmt_ms",
    "fmt_time",
    "json_object",
    "key_values",
    "open_app",
    "parse_age_days",
    "parse_fractions",
    "parse_names",
    "parse_when",
    "short",
    "text",
]

EXIT_RUN_FAILED = 1
EXIT_USER_ERROR = 2

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def console() -> Console:
    """A stdout console; off a terminal rich assumes 80 columns, which folds the tables, so use more."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 120))
    return out


def _fail(message: str, code: int) -> typer.Exit:
    # stderr, plain text: the message is user data (it may hold '[...]'), never rich markup.
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn dspex's own errors into one ``error: ...`` line on stderr and the documented exit code."""
    try:
        yield
    except UserError as exc:
        raise _fail(_with_execution(exc), EXIT_USER_ERROR) from None
    except RunError as exc:
        raise _fail(_with_execution(exc), EXIT_RUN_FAILED) from None


def _with_execution(exc: Exception) -> str:
    # A failed run is still recorded; its id lets the user open the record right away.
    execution_id = getattr(exc, "execution_id", None)
    return f"{exc} (execution {execution_id})" if execution_id else str(exc)


@contextlib.contextmanager
def open_app() -> Iterator[App]:
    """``App(Settings.load())`` for one command, closed (records flushed) before any error exit."""
    from dspex.runtime.app import App
    from dspex.settings import Settings

    with errors(), App(Settings.load()) as app:
        yield app


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout, with no rich markup or wrapping, for ``| jq``."""
    from dspex.jsonable import to_jsonable

    typer.echo(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False))


# -- formats ---------------------------------------------------------------------------------------------


def text(value: Any) -> str:
    """A value as escaped table text: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return escape(value)
    from dspex.jsonable import to_jsonable

    return escape(json.dumps(to_jsonable(value), ensure_ascii=False))


def short(identifier: str | None, length: int = 12) -> str:
    """The leading characters of a content hash, as the registry and datasets accept them back."""
    return identifier[:length] if identifier else "-"


def fmt_time(value: dt.datetime | None) -> str:
    """A stored time, in UTC to the second (the CLI reads naive ISO times as UTC too)."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def fmt_cost(value: float | None) -> str:
    # None means "some call had no known price": show it as unknown, not as free.
    return "-" if value is None else f"{value:.6f}"


# -- parsing ----------------------------------------------------------------------------------------------


def parse_age_days(value: str, option: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a bare number of days, as days."""
    match = _AGE.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"{option} takes a positive duration such as 30d, 12h, 90m or 2w (a bare number means days), "
            f"got {value!r}"
        )
    number, unit = float(match.group(1)), match.group(2) or "d"
    return number * _UNITS[unit] / _UNITS["d"]


def parse_when(value: str | None, option: str, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """A relative age (``1h``, ``30m``, ``2d``: that long ago) or an ISO 8601 time; naive times are UTC."""
    if value is None:
        return None
    if _AGE.match(value):
        days = parse_age_days(value, option)
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigurationError(
            f"{option} takes an ISO 8601 time (2026-01-31, 2026-01-31T09:30:00Z) or an age such as 1h, "
            f"30m or 2d, got {value!r}"
        ) from None
    # The store keeps UTC; SQLite compares the stored text, so the bound must be UTC as well.
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def parse_names(value: str | None, option: str) -> list[str] | None:
    """A comma-separated list of field names (``a,b``); None when the option was not given."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")]
    if not all(names):
        raise ConfigurationError(f"{option} takes comma-separated field names such as a,b; got {value!r}")
    return names


def parse_fractions(value: str, option: str) -> dict[str, float]:
    """``train=0.8,dev=0.2`` as a mapping (the datasets module checks the fractions themselves)."""
    fractions: dict[str, float] = {}
    for part in value.split(","):
        name, sep, number = part.partition("=")
        try:
            fraction = float(number)
        except ValueError:
            fraction = math.nan
        if not sep or not name.strip() or math.isnan(fraction):
            raise ConfigurationError(
                f"{option} takes split=fraction pairs such as train=0.8,dev=0.2; got {value!r}"
            )
        fractions[name.strip()] = fraction
    return fractions


def key_values(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON (``3``, ``[1, 2]``, ``true``) is that JSON value."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{option} takes key=value, got {pair!r}")
        result[key.strip()] = _json_or_text(raw)
    return result


def _json_or_text(raw: str) -> Any:
    def refuse(name: str) -> Any:  # NaN and Infinity are not JSON; keep them as the text typed
        raise ValueError(name)

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return raw


def json_object(raw: str, option: str) -> dict[str, Any]:
    """A JSON object given inline, as ``@path`` (a file) or ``-`` (stdin)."""
    source = "stdin" if raw == "-" else raw[1:] if raw.startswith("@") else None
    if raw == "-":
        raw = typer.get_text_stream("stdin").read()
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ConfigurationError(f"{option}: cannot read {raw[1:]!r}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        where = f" in {source}" if source else ""
        raise ConfigurationError(
            f'{option} must be a JSON object such as \'{{"question": "..."}}\'; invalid JSON{where}: {exc}'
        ) from None
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{option} must be a JSON object (field names to values), got a JSON {_JSON_TYPES[type(data)]}"
        )
    return dict(data)
