"""Database connections: SQLite tuned for many processes, PostgreSQL for production.

SQLite (the embedded default) gets WAL journaling (readers never block the writer), a 30 s busy timeout,
foreign keys, and ``BEGIN IMMEDIATE`` for write transactions. The last one matters most: a deferred
transaction that reads and then writes cannot wait for the lock (SQLite fails it at once with "database
is locked" to avoid a deadlock), while an immediate one takes the write lock up front and so queues behind
other writers for the busy timeout. Within one process a lock serialises writers, so threads wait on a
mutex instead of polling the file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dspex.errors import ConfigurationError
from dspex.jsonable import dumps

__all__ = ["Database"]

_BUSY_TIMEOUT_MS = 30_000
_WRITE = "dspex_write"


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000}, json_serializer=dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One database: an engine, a write path and a read path. Thread-safe; one per process and URL."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(
                f"invalid database URL {url!r}: {exc}; use sqlite:///path/to/dspex.db or "
                "postgresql+psycopg://user@host:5432/dbname"
            ) from None
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(parsed)
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":  # a bare scheme: pin the driver dspex installs
                parsed = self.url = parsed.set(drivername="postgresql+psycopg")
            if parsed.get_driver_name() != "psycopg":
                raise ConfigurationError(
                    f"PostgreSQL URLs use the psycopg 3 driver: postgresql+psycopg://..., got {url!r}"
                )
            try:
                self.engine = sa.create_engine(parsed, pool_pre_ping=True, json_serializer=dumps)
            except ModuleNotFoundError:
                raise ConfigurationError(
                    "PostgreSQL needs the postgres extra: pip install 'dspex[postgres]'"
                ) from None
        else:
            raise ConfigurationError(
                f"unsupported database {self.dialect!r}; dspex stores on sqlite or postgresql"
            )
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed on exit, rolled back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.engine.connect() as connection:
            connection = connection.execution_options(**{_WRITE: True})
            with connection.begin():
                yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction (a consistent snapshot)."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
