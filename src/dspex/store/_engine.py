"""Database connections: SQLite tuned for many processes, PostgreSQL for production.

SQLite (the embedded default) gets WAL journaling (readers never block the writer), a 30 s busy timeout,
foreign keys, and ``BEGIN IMMEDIATE`` for write transactions. The last one matters most: a deferred
transaction that reads and then writes cannot wait for the lock (SQLite fails it at once with "database
is locked" to avoid a deadlock), while an immediate one takes the write lock up front and so queues behind
other writers for the busy timeout. Within one process a lock serialises writers, so threads wait on a
mutex instead of polling the file.

A new SQLite database gets 16 KiB pages instead of SQLite's 4 KiB. An execution record with its span tree
is about 2 KB of JSON (a ChainOfThought call's prompt alone is 1 KB), so a 4 KiB page held one row: half
of the file was empty space, and each commit wrote a page per row to the WAL. With 16 KiB pages the
writer's upsert takes 0.73-0.76x the CPU per row (system time included: the WAL's writes) and the file
0.60x the bytes (``benchmarks/sqlite_pages.py``: 20,000 recorded ChainOfThought rows, 38 against 29 us
and 85 against 51 MB; 8 KiB pages are in between). A database created with other pages keeps them
(``PRAGMA page_size`` cannot change in WAL mode; ``VACUUM`` after switching the journal to ``DELETE``
converts one).

The SQLite file holds inputs, outputs and traces, so it is readable by its owner only: created 0600 in
a directory created 0700, and an existing file of ours with wider modes is tightened. SQLite creates
its ``-wal`` and ``-shm`` files with the database file's mode, so they follow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dspex.errors import ConfigurationError
from dspex.jsonable import dumps

if TYPE_CHECKING:
    import sqlite3

SQLITE_PAGE_SIZE = 16384  # bytes per page of a new SQLite database (see the module docstring)

__all__ = [
    "SQLITE_PAGE_SIZE",
    "Database",
    "database_unavailable",
    "describe_error",
    "private_dir",
    "private_file",
]

_BUSY_TIMEOUT_MS = 30_000
logger = logging.getLogger("dspex.store")
_WRITE = "dspex_write"


def private_dir(path: Path) -> None:
    """Create directory ``path`` readable by its owner only (0700), or tighten it if it is ours."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create file ``path`` empty with mode 0600, or tighten an existing file of ours to 0600."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & ~mode:
        path.chmod(mode)


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached (down, restarting, connection lost, locked
    past the busy timeout) rather than that it refused the statement: retrying later can succeed.

    PostgreSQL restarts surface as ``OperationalError`` (connection refused, server closed the connection,
    "the database system is starting up") or as an error whose connection SQLAlchemy invalidated; a
    checkout that waited out the pool is ``sqlalchemy.exc.TimeoutError``.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def describe_error(exc: BaseException) -> str:
    """``exc`` in one line for a log: the driver's message without the SQL and its parameters (which hold
    the inputs and outputs of runs)."""
    cause = exc.orig if isinstance(exc, sa.exc.StatementError) and exc.orig is not None else exc
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"[:500]


def _bind_none_as_is() -> None:
    """Give the sqlite3 module an adapter for None that returns None (``{}.get``, a C call).

    sqlite3 binds int, float and str directly, but sends every other parameter, None included, through
    its adapter lookup: without an adapter for None's type, that lookup asks ``PrepareProtocol`` for an
    ``__adapt__`` it lacks, and the AttributeError it formats and drops cost more than a third of the
    writer thread's binding work on an execution row (about ten NULL columns a row; callgrind). NULL is
    still bound: an adapter that returns None changes nothing else. One already registered is kept."""
    import sqlite3

    key = (type(None), sqlite3.PrepareProtocol)
    if key not in sqlite3.adapters:
        none: Any = {}.get  # {}.get(None) is None
        sqlite3.register_adapter(type(None), none)


def _sqlite_file(url: sa.URL) -> bool:
    """Whether ``url`` names a SQLite database file by path (not in memory, not a ``file:`` URI)."""
    return bool(url.database) and url.database != ":memory:" and not str(url.database).startswith("file:")


def _sqlite_engine(url: sa.URL) -> Engine:
    _bind_none_as_is()
    if _sqlite_file(url):
        assert url.database is not None
        database = Path(url.database)
        if not database.parent.exists():
            private_dir(database.parent)
        private_file(database)
        for suffix in ("-wal", "-shm"):
            sidecar = database.with_name(database.name + suffix)
            if sidecar.exists():
                _tighten(sidecar, 0o600)
    engine = sa.create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000}, json_serializer=dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # Takes effect only on a new, empty database, and must come before WAL is set (see the module
        # docstring); an existing database keeps the page size it was created with.
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
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
        # A SQLite file: write_many() keeps a connection (made on first use, per process). An in-memory
        # database is one per connection, so it goes through the engine's pool.
        self._direct = self.dialect == "sqlite" and _sqlite_file(parsed)
        self._raw: Any = None  # the pool's connection record, held out of the pool
        self._raw_pid = 0
        self._forked: list[Any] = []  # a parent's connections, never used nor closed in a child

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed on exit, rolled back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.engine.connect() as connection:
            connection = connection.execution_options(**{_WRITE: True})
            with connection.begin():
                yield connection

    def write_many(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Run each driver-level ``(sql, parameter tuples)`` for every tuple (``executemany``), all in one
        write transaction; errors are SQLAlchemy's, as :meth:`write` raises them.

        On a SQLite file it goes to the driver directly, on a connection this database keeps for it
        (``BEGIN IMMEDIATE``, the statements, ``COMMIT``, under the same lock as :meth:`write`): through
        SQLAlchemy (a pool checkout, the begin event, a result object per statement, the check-in) one
        transaction cost 680,000 instructions, 400,000 of them in SQLAlchemy, around a one-row upsert
        of 280,000 (callgrind). The execution writer takes this path for every batch: with ``sync``
        durability that is one transaction per run. Elsewhere it is :meth:`write` and ``exec_driver_sql``.
        """
        if not self._direct:
            with self.write() as connection:
                for text, rows in statements:
                    connection.exec_driver_sql(text, list(rows))
            return
        import sqlite3  # here, not at import: SQLAlchemy's dialect imports it once an engine connects

        assert self._write_lock is not None  # every SQLite database has one
        with self._write_lock:
            driver = self._connection()
            sql: str = "BEGIN IMMEDIATE"
            parameters: Sequence[Sequence[Any]] = ()
            try:
                driver.execute(sql)
                for sql, parameters in statements:
                    driver.executemany(sql, parameters)
                sql, parameters = "COMMIT", ()
                driver.execute(sql)
            except sqlite3.Error as exc:
                self._after_failure(driver)
                raise sa.exc.DBAPIError.instance(
                    sql, list(parameters), exc, sqlite3.Error, hide_parameters=True, ismulti=True
                ) from exc
            except BaseException:
                self._after_failure(driver)
                raise

    def _connection(self) -> sqlite3.Connection:
        """The SQLite connection of :meth:`write_many` (under the write lock): the engine's, so it has its
        pragmas; a new one in a forked child, which must not use its parent's."""
        raw = self._kept()
        if raw is None:
            raw = self._raw = self.engine.raw_connection()
            self._raw_pid = os.getpid()
        connection: sqlite3.Connection = raw.dbapi_connection
        return connection

    def _kept(self) -> Any:
        """The connection record this process keeps for :meth:`write_many`, or None (under the write
        lock). One a forked child inherited is its parent's: set aside, never used nor closed here."""
        if self._raw is not None and self._raw_pid != os.getpid():
            self._forked.append(self._raw)
            self._raw = None
        return self._raw

    def _after_failure(self, connection: sqlite3.Connection) -> None:
        """Roll back what a failed :meth:`write_many` began; a connection that cannot is dropped (the next
        call opens another), as SQLAlchemy invalidates one."""
        import sqlite3

        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raw, self._raw = self._raw, None
            logger.warning("dropping the SQLite write connection: its rollback failed: %s", exc)
            try:
                raw.invalidate()
            except Exception as closing:  # the error being handled is the one the caller sees
                logger.warning("closing the dropped SQLite write connection failed: %s", closing)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction (a consistent snapshot)."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def ping(self) -> None:
        """Run ``SELECT 1``; raises what the driver raises when the database cannot be reached."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        """Close every pooled connection (and the one :meth:`write_many` keeps)."""
        with self._write_lock or contextlib.nullcontext():
            raw, self._raw = self._kept(), None
            if raw is not None:
                raw.close()
        self.engine.dispose()
