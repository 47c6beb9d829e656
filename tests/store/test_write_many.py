"""``Database.write_many``: driver-level statements in one write transaction, straight to the driver on a
SQLite file (a connection the database keeps), through SQLAlchemy elsewhere, with SQLAlchemy's errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dspex.store import Database
from dspex.store._engine import database_unavailable, describe_error


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    with database.write() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield database
    database.dispose()


def _insert(db: Database) -> str:
    """The driver's INSERT for ``items`` in the driver's own parameter style."""
    mark = "?" if db.dialect == "sqlite" else "%s"
    return f"INSERT INTO items (id, name) VALUES ({mark}, {mark})"


def _names(db: Database) -> dict[int, str]:
    with db.read() as connection:
        return dict(connection.exec_driver_sql("SELECT id, name FROM items").all())  # type: ignore[arg-type]


def test_statements_run_for_every_parameter_set_in_one_transaction(db: Database) -> None:
    insert = _insert(db)
    db.write_many([(insert, [(1, "a"), (2, "b")]), (insert, [(3, "c")])])
    db.write_many([(insert, [(4, "d")])])
    assert _names(db) == {1: "a", 2: "b", 3: "c", 4: "d"}


def test_a_failing_statement_rolls_back_the_whole_transaction(db: Database) -> None:
    insert = _insert(db)
    db.write_many([(insert, [(1, "kept")])])
    with pytest.raises(sa.exc.IntegrityError) as raised:
        # The first statement goes in, the second repeats a key: neither may stay.
        db.write_many([(insert, [(2, "secret input")]), (insert, [(1, "again")])])
    assert not database_unavailable(raised.value)  # a refusal, not an outage: the writer blames the rows
    assert "secret input" not in str(raised.value)  # parameters hold runs' inputs: never in the message
    assert "UNIQUE" in describe_error(raised.value) or "duplicate" in describe_error(raised.value)
    assert _names(db) == {1: "kept"}
    db.write_many([(insert, [(2, "after")])])  # the connection is usable after the failure
    assert _names(db) == {1: "kept", 2: "after"}


def test_sqlite_keeps_one_connection_with_the_engines_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'kept.db'}")
    with db.write() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(1, "a")])])
    kept = db._connection()
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(2, "b")])])
    assert db._connection() is kept
    assert kept.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert kept.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert kept.execute("PRAGMA busy_timeout").fetchone() == (30000,)
    db.dispose()  # closes it; the next write opens another
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(3, "c")])])
    assert db._connection() is not kept
    assert _names(db) == {1: "a", 2: "b", 3: "c"}
    db.dispose()


def test_an_in_memory_sqlite_database_goes_through_sqlalchemy() -> None:
    db = Database("sqlite://")
    with db.write() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(1, "a"), (2, "b")])])
    assert _names(db) == {1: "a", 2: "b"}
    assert db._raw is None  # a connection kept aside would be another, empty, in-memory database
    db.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'forked.db'}")
    with db.write() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(1, "parent")])])
    parents = db._connection()
    held = db._raw  # the pool's record of the parent's connection
    pid = os.fork()
    if pid == 0:  # the child: writes on a connection of its own, never the parent's
        code = 1
        try:
            db.dispose()  # before any write here: the parent's connection is set aside, not closed
            code = 2 if db._forked != [held] or held.dbapi_connection is None else 0
            db.write_many([("INSERT INTO items VALUES (?, ?)", [(2, "child")])])
            code = code or (0 if db._connection() is not parents else 3)
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    db.write_many([("INSERT INTO items VALUES (?, ?)", [(3, "parent again")])])
    assert db._connection() is parents
    assert _names(db) == {1: "parent", 2: "child", 3: "parent again"}
    db.dispose()
