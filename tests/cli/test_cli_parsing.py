"""The option parsers shared by the command groups: ages, times, key=value pairs, JSON objects."""

from __future__ import annotations

import datetime as dt

import pytest

from dspex.cli._render import json_object, key_values, parse_age_days, parse_fractions, parse_when
from dspex.errors import ConfigurationError

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "days"),
    [("30d", 30.0), ("12h", 0.5), ("90m", 90 / 1440), ("45s", 45 / 86400), ("2w", 14.0), ("1.5", 1.5)],
)
def test_ages(text: str, days: float) -> None:
    assert parse_age_days(text, "--older-than") == pytest.approx(days)


@pytest.mark.parametrize("text", ["0d", "-1d", "3y", "d", "", "1 day"])
def test_bad_ages(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--older-than takes a positive duration"):
        parse_age_days(text, "--older-than")


def test_times_are_relative_or_iso_and_always_utc() -> None:
    assert parse_when("1h", "--since", now=NOW) == NOW - dt.timedelta(hours=1)
    assert parse_when("2026-01-31", "--since") == dt.datetime(2026, 1, 31, tzinfo=dt.UTC)
    local = parse_when("2026-01-31T09:30:00+02:00", "--since")
    assert local == dt.datetime(2026, 1, 31, 7, 30, tzinfo=dt.UTC)
    assert local is not None
    assert local.utcoffset() == dt.timedelta(0)  # SQLite compares text: the bound must be UTC
    assert parse_when(None, "--since") is None


def test_key_values_parse_json_when_they_can() -> None:
    parsed = key_values(["k=3", "x=1.5", "t=true", "l=[1, 2]", "s=hello", "e=", "n=NaN", "q=a=b"], "-i")
    assert parsed == {"k": 3, "x": 1.5, "t": True, "l": [1, 2], "s": "hello", "e": "", "n": "NaN", "q": "a=b"}
    with pytest.raises(ConfigurationError, match="-i takes key=value"):
        key_values(["=3"], "-i")


def test_json_objects_and_fractions() -> None:
    assert json_object('{"a": [1]}', "--input") == {"a": [1]}
    with pytest.raises(ConfigurationError, match="got a JSON string"):
        json_object('"text"', "--input")
    assert parse_fractions("train=0.8, dev=0.2", "--split") == {"train": 0.8, "dev": 0.2}
    with pytest.raises(ConfigurationError, match="split=fraction pairs"):
        parse_fractions("train=lots", "--split")
