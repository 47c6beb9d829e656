"""The SQLite write path's binding shortcuts give exactly what SQLAlchemy and sqlite3 would."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from dspex.store._engine import Database
from dspex.store.executions import _sqlite_datetime


def test_datetimes_are_formatted_as_sqlalchemy_formats_them() -> None:
    process = sqlite.DATETIME().bind_processor(sqlite.dialect())
    fast = _sqlite_datetime(process)
    rng = random.Random(7)
    zones = [None, dt.UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))]
    for _ in range(5000):
        value = dt.datetime(
            rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
            rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999_999)]),
            tzinfo=rng.choice(zones),
        )  # fmt: skip
        assert fast(value) == process(value)
    # One second's cached text, with each value's own microseconds.
    for micro in (0, 5, 999, 1000, 123_456, 999_999):
        value = dt.datetime(2026, 12, 4, 19, 30, 1, micro, tzinfo=dt.UTC)
        assert fast(value) == process(value)
    assert fast(dt.date(2026, 12, 4)) == process(dt.date(2026, 12, 4)) == "2026-12-04 00:00:00.000000"
    assert fast(None) is None


def test_none_binds_as_null_through_the_registered_adapter(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
        with db.write() as connection:
            connection.exec_driver_sql("CREATE TABLE t (a TEXT, b INTEGER)")
            connection.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (None, 1))
        with db.read() as connection:
            rows = connection.execute(sa.text("SELECT a IS NULL, typeof(a), b FROM t")).all()
        assert [tuple(r) for r in rows] == [(1, "null", 1)]
    finally:
        db.dispose()
