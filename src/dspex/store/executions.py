"""Executions: one row per run of a program, from start to a terminal status.

Table ``executions`` (see :mod:`dspex.store.schema`). A row is written when a run starts (``running``)
and rewritten when it ends; both writes are upserts keyed by the run's id, so a run that starts and ends
within one batch of the background writer costs a single insert; a late ``running`` write never replaces
an ended row (records replayed after a database outage can arrive out of order). ``program`` and
``version_id`` are nullable because ad-hoc modules (not registered) are recorded too. ``usage`` is per model
(``{"openai/gpt-4o-mini": {"prompt_tokens", "completion_tokens", "total_tokens", "calls", "cost_usd"}}``);
``total_tokens`` and ``cost_usd`` are denormalised totals so filters and stats need no JSON functions.
``trace`` holds the span tree (``{"v": 1, "spans": [...]}``) and may be dropped by retention while the
summary row stays. ``runner`` is ``host:pid`` of the process that ran it, ``recorder_id`` the recorder
(:mod:`dspex.store.recorders`) whose writer records it. A ``running`` row whose recorder is closed or
whose lease expired is marked ``abandoned`` by any process (at open and by each writer's periodic
sweep), whatever now runs under that host and pid. Rows written before recorders existed (no
``recorder_id``) keep the older rule: abandoned when no process with that pid lives on this host.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
import socket
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.errors import ConfigurationError
from dspex.jsonable import EncodedJSON, dumps, storable
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import JSON, UNSUCCESSFUL, executions, feedback, recorders

__all__ = [
    "ExecutionFilter",
    "ExecutionRecord",
    "ExecutionRepository",
    "ExecutionStatus",
    "VersionStats",
    "current_runner",
    "utcnow",
]

ExecutionStatus = Literal["running", "succeeded", "failed", "cancelled", "abandoned"]
TERMINAL: tuple[ExecutionStatus, ...] = ("succeeded", "failed", "cancelled", "abandoned")
_COLUMNS = tuple(c.name for c in executions.columns)
_SUMMARY_COLUMNS = tuple(c for c in executions.columns if c.name != "trace")
_JSON_COLUMNS = ("inputs", "outputs", "error", "usage", "variables", "trace", "placement", "adaptation")
_JSON_SET = frozenset(c.name for c in executions.columns if c.type is JSON)  # the columns bound as JSON text


_runner: str | None = None


def current_runner() -> str:
    """This process as recorded in ``runner``: ``host:pid`` (recomputed in a forked child).

    Read once per process, not per run: ``os.getpid`` is a system call on every call (glibc no longer
    caches it), which cost 4-5 us per recorded run where system calls are slow (sandboxed kernels).
    """
    global _runner
    runner = _runner
    if runner is None:
        runner = _runner = f"{socket.gethostname()}:{os.getpid()}"
    return runner


def _forget_runner() -> None:
    global _runner
    _runner = None


os.register_at_fork(after_in_child=_forget_runner)


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One execution row. ``trace`` is None when not requested or dropped by retention."""

    id: str
    program: str | None
    version_id: str | None
    status: ExecutionStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    duration_ms: float | None
    usage: dict[str, Any] | None
    total_tokens: int | None
    cost_usd: float | None
    variables: dict[str, Any] | None
    trace: dict[str, Any] | None
    cache_hit: bool
    runner: str
    recorder_id: str | None = None
    placement: dict[str, Any] | None = None  # where it ran: {"target": "pool", "pool", "worker", "pid", ...}
    session_id: str | None = None  # the session this run was a turn of
    trace_id: str | None = None  # the OpenTelemetry trace the run belongs to (32 hex digits)
    adaptation: dict[str, Any] | None = None  # the adaptive program's arm that served it, and why

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ExecutionRecord:
        data: dict[str, Any] = {name: row.get(name) for name in _COLUMNS}
        data["started_at"] = aware(data["started_at"])
        data["ended_at"] = aware(data["ended_at"])
        data["cache_hit"] = bool(data["cache_hit"])
        # Rows written before the store normalised its JSON may hold integers beyond 64 bits (SQLite):
        # reading them normalised keeps listings and the API working for every caller.
        for name in _JSON_COLUMNS:
            if data[name] is not None:
                data[name] = storable(data[name])
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (times as ISO 8601)."""
        data = {name: getattr(self, name) for name in _COLUMNS}
        for key in ("started_at", "ended_at"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return data


def _called(model: str) -> sa.ColumnElement[bool]:
    """The runs whose usage has ``model`` as a key. Usage is ``{model: {tokens...}}``: in its text a model
    is its JSON string followed by an object, ``"m":{`` as SQLite keeps the encoder's compact JSON and
    ``"m": {`` as PostgreSQL prints JSONB, where a token count's name is followed by a number. A text
    match works on both databases without one dialect's JSON functions (it reads every row it filters)."""
    key = _escape_like(orjson.dumps(model).decode())
    text = sa.cast(executions.c.usage, sa.Text)
    return sa.or_(
        text.like(f"%{key}:{{%", escape="\\"),
        text.like(f"%{key}: {{%", escape="\\"),
    )


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions to list; every field is optional and they combine with AND."""

    program: str | None = None
    version_id: str | None = None
    status: ExecutionStatus | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_cost_usd: float | None = None
    max_cost_usd: float | None = None
    min_duration_ms: float | None = None
    max_duration_ms: float | None = None
    cache_hit: bool | None = None
    id_prefix: str | None = None  # executions whose id starts with this (a search box)
    model: str | None = None  # executions that called this model (a key of their usage)

    def where(self) -> list[sa.ColumnElement[bool]]:
        c = executions.c
        checks: list[tuple[Any, Callable[[Any], sa.ColumnElement[bool]]]] = [
            (self.program, lambda v: c.program == v),
            (self.version_id, lambda v: c.version_id == v),
            (self.status, lambda v: c.status == v),
            (self.since, lambda v: c.started_at >= v),
            (self.until, lambda v: c.started_at < v),
            (self.min_cost_usd, lambda v: c.cost_usd >= v),
            (self.max_cost_usd, lambda v: c.cost_usd <= v),
            (self.min_duration_ms, lambda v: c.duration_ms >= v),
            (self.max_duration_ms, lambda v: c.duration_ms <= v),
            (self.cache_hit, lambda v: c.cache_hit == v),
            (self.id_prefix, lambda v: c.id.like(_escape_like(v) + "%", escape="\\")),
            (self.model, _called),
        ]
        conditions = [make(value) for value, make in checks if value is not None]
        if self.status in ("failed", "cancelled", "abandoned"):
            # The partial index's own condition, spelled as a literal: planners use a partial index only
            # when the query visibly implies its condition.
            conditions.append(sa.literal_column(UNSUCCESSFUL))
        return conditions


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Aggregates of one program version's executions."""

    program: str | None
    version_id: str | None
    count: int
    succeeded: int
    failed: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    total_tokens: int
    cost_usd: float | None


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


# 'running' as a literal, not a bound parameter: the sweep's partial indexes (status = 'running') are
# usable only when the query's condition visibly implies theirs.
_RUNNING: sa.ColumnElement[str] = sa.literal_column("'running'")


def _bound(name: str, value: Any, process: Any = None) -> Any:
    """A column's value as the upsert binds it: JSON columns as JSON text (None: SQL NULL), others
    through ``process`` (their type's bind processor) when one is given."""
    if value is None:
        return None
    if name in _JSON_SET:
        return value.text if type(value) is EncodedJSON else dumps(value)
    return value if process is None else process(value)


# Rows per multi-row SQLite upsert statement. A batch's full chunks of 16 rows go that way (one
# sqlite3_step, so one GIL hand-over, per 16 rows: 27% fewer instructions per row than one statement a
# row, measured with callgrind on batches of 85); the rest, and batches of fewer rows (a writer at a few
# runs a second), go one row per statement: multi-row statements of other sizes measured slower there.
_SQLITE_ROWS = 16


_THREE_DIGITS = tuple(f"{i:03d}" for i in range(1000))


def _sqlite_datetime(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's SQLite datetime bind processor, with a ``datetime`` formatted at a quarter of its
    cost: SQLAlchemy's storage format (``YYYY-MM-DD HH:MM:SS.ffffff``) is built from the text of the
    value's second, cached (the rows of a batch start and end within a few seconds), and its microseconds
    from a table. Formatting a datetime with ``%`` (SQLAlchemy) or ``isoformat`` costs 14-19K instructions
    (callgrind), and an execution row has two. Anything else (a ``date``, a subclass) goes to SQLAlchemy's
    processor. A UTC offset is dropped, as SQLAlchemy drops it."""
    datetime_type = dt.datetime
    seconds: dict[tuple[int, ...], str] = {}
    digits = _THREE_DIGITS

    def fast(value: Any) -> Any:
        if type(value) is not datetime_type:
            return process(value)
        second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
        text = seconds.get(second)
        if text is None:
            if len(seconds) >= 4096:
                seconds.clear()
            text = seconds[second] = value.isoformat(" ", "seconds")[:19] + "."
        micro = value.microsecond
        return text + digits[micro // 1000] + digits[micro % 1000]

    return fast


class _SqlitePlan:
    """The SQLite upsert compiled once, and a row's positional parameters built from it.

    Per positional parameter: the column it takes (JSON columns bound as JSON text, others through their
    type's bind processor: SQLAlchemy's datetime format) or the literal it binds ('running' in the
    statement's WHERE). The row's values are read in one C-level pass (``operator.itemgetter`` over the
    row laid on the columns' defaults, None); only the JSON columns and those with a bind processor are
    then converted. Per column in Python, this was the writer thread's largest cost, and the writer holds
    the GIL the runs' threads wait for.
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        names: list[str] = []
        self._json: list[int] = []  # positions bound as JSON text
        self._processed: list[tuple[int, Any]] = []  # positions bound through their type's processor
        self._defaults: dict[str, Any] = {}
        for position, param in enumerate(compiled.positiontup or ()):
            if param.startswith("p_"):
                column = executions.c[param[2:]]
                names.append(column.name)
                self._defaults[column.name] = None
                if column.name in _JSON_SET:
                    self._json.append(position)
                else:
                    process = column.type.dialect_impl(dialect).bind_processor(dialect)
                    if process is not None and isinstance(column.type, sa.DateTime):
                        process = _sqlite_datetime(process)
                    if process is not None:
                        self._processed.append((position, process))
            else:  # a literal of the statement itself: read from the defaults under a name no row has
                key = f"\0{param}"
                names.append(key)
                self._defaults[key] = compiled.params[param]
        self._get = operator.itemgetter(*names)

        # Many rows in one statement (``VALUES (...), (...)``): one sqlite3_step, so the writer gives up
        # the GIL once per statement instead of once per row, and waits once for the runs' threads to
        # give it back.
        self._width = sum(1 for name in names if not name.startswith("\0"))  # a row's parameters
        self._row_sql = "(" + ", ".join("?" * self._width) + ")"
        if self.sql.count(self._row_sql) != 1 or any(n.startswith("\0") for n in names[: self._width]):
            raise RuntimeError(
                "the executions upsert is not INSERT ... VALUES (one row) ...: cannot batch it"
            )
        self._many_sql: dict[int, str] = {1: self.sql}

    def values(self, row: Mapping[str, Any]) -> list[Any]:
        """``row``'s positional parameters (the statement's literals last): missing columns bind NULL."""
        values = list(self._get({**self._defaults, **row}))
        for position in self._json:
            value = values[position]
            if value is not None:
                values[position] = value.text if type(value) is EncodedJSON else dumps(value)
        for position, process in self._processed:
            value = values[position]
            if value is not None:
                values[position] = process(value)
        return values

    def many(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        """One statement upserting every row of ``rows`` (distinct ids), and its parameters."""
        sql = self._many_sql.get(len(rows))
        if sql is None:
            sql = self.sql.replace(self._row_sql, ", ".join([self._row_sql] * len(rows)), 1)
            if len(self._many_sql) < 256:
                self._many_sql[len(rows)] = sql
        params: list[Any] = []
        width = self._width
        for row in rows:
            values = self.values(row)
            params += values[:width]
        params += values[width:]  # the statement's own literals, once
        return sql, params


class ExecutionRepository:
    """Reads and writes the ``executions`` table. Thread-safe (each call takes its own connection)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._upsert: Any = None
        self._sqlite: _SqlitePlan | None = None

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows, or replace the ones whose id exists, in one statement (ids must be distinct).

        A row with status ``running`` does not replace a row that has ended (any terminal status).
        """
        if not rows:
            return
        # JSON columns are encoded here (or were, when the run ended: EncodedJSON) by the store's encoder:
        # the statement binds them as text, so SQLAlchemy runs no JSON processor per value of every row.
        if self.db.dialect == "sqlite":
            # SQLite: the same statement, compiled once, executed by the driver with plain tuples. Per
            # row, SQLAlchemy's parameter handling cost more than SQLite's own insert.
            plan = self._sqlite_upsert()
            whole = len(rows) - len(rows) % _SQLITE_ROWS
            chunks = [plan.many(rows[i : i + _SQLITE_ROWS]) for i in range(0, whole, _SQLITE_ROWS)]
            rest = [tuple(plan.values(row)) for row in rows[whole:]]
            statements: list[tuple[str, list[tuple[Any, ...]]]] = []
            if chunks:  # one driver call for every full chunk (one statement text)
                statements.append((chunks[0][0], [tuple(params) for _, params in chunks]))
            if rest:  # the rows of no full chunk, one by one: the one-row statement
                statements.append((plan.sql, rest))
            self.db.write_many(statements)  # straight to the driver: see Database.write_many
            return
        params = [{f"p_{name}": _bound(name, row.get(name)) for name in _COLUMNS} for row in rows]
        with self.db.write() as connection:
            connection.execute(self._upsert_statement(), params)

    def _sqlite_upsert(self) -> _SqlitePlan:
        """The upsert's SQL for SQLite and how a row becomes its positional parameters."""
        found = self._sqlite
        if found is None:
            found = self._sqlite = _SqlitePlan(self._upsert_statement(), self.db.engine.dialect)
        return found

    def _upsert_statement(self) -> Any:
        """The upsert, built once per repository (statements are immutable and reusable)."""
        statement = self._upsert
        if statement is None:
            pg = self.db.dialect == "postgresql"
            values: dict[str, Any] = {}
            for column in executions.columns:
                if column.name in _JSON_SET:  # JSON text: SQLite stores it as is, PostgreSQL casts it
                    text = sa.bindparam(f"p_{column.name}", type_=sa.Text)
                    values[column.name] = sa.cast(text, postgresql.JSONB) if pg else text
                else:
                    values[column.name] = sa.bindparam(f"p_{column.name}", type_=column.type)
            insert = (postgresql.insert if pg else sqlite.insert)(executions).values(values)
            # A "running" row never replaces an ended one: a start record replayed late (from the spill
            # file, after a database outage) must not turn a finished run back into a running, then
            # abandoned, one.
            statement = self._upsert = insert.on_conflict_do_update(
                index_elements=["id"],
                set_={name: insert.excluded[name] for name in _COLUMNS if name != "id"},
                where=sa.or_(executions.c.status == "running", insert.excluded.status != "running"),
            )
        return statement

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """One execution with its trace, by its id or a unique prefix of at least 6 characters; or None.

        An ambiguous prefix raises ``ConfigurationError`` listing the matches.
        """
        c = executions.c
        with self.db.read() as connection:
            row = connection.execute(sa.select(executions).where(c.id == execution_id)).first()
            if row is None and 6 <= len(execution_id) < 36:
                escaped = execution_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                rows = connection.execute(
                    sa.select(executions).where(c.id.like(f"{escaped}%", escape="\\")).limit(3)
                ).all()
                if len(rows) > 1:
                    raise ConfigurationError(
                        f"execution id prefix {execution_id!r} matches several executions "
                        f"({', '.join(r.id for r in rows)}...); give more characters"
                    )
                row = rows[0] if rows else None
        return ExecutionRecord.from_row(row._mapping) if row is not None else None

    def find(
        self,
        where: ExecutionFilter | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        with_trace: bool = False,
        before: tuple[dt.datetime, str] | None = None,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[ExecutionRecord]:
        """Executions matching ``where``, newest first.

        ``before`` / ``after``: a page cursor, the ``(started_at, id)`` of a row: only the rows that come
        after it (older) or before it (newer) in this order. Unlike ``offset``, the database seeks to
        the cursor along the ``started_at`` index, so the 2,000th page costs what the first does.
        """
        c = executions.c
        columns = list(executions.columns) if with_trace else _SUMMARY_COLUMNS
        conditions = list((where or ExecutionFilter()).where())
        if before is not None:
            conditions.append(
                sa.or_(c.started_at < before[0], sa.and_(c.started_at == before[0], c.id > before[1]))
            )
        if after is not None:
            conditions.append(
                sa.or_(c.started_at > after[0], sa.and_(c.started_at == after[0], c.id < after[1]))
            )
        newer_first = (c.started_at.asc(), c.id.desc()) if after is not None else (c.started_at.desc(), c.id)
        query = sa.select(*columns).where(*conditions).order_by(*newer_first).limit(limit).offset(offset)
        with self.db.read() as connection:
            records = [ExecutionRecord.from_row(row._mapping) for row in connection.execute(query)]
        return records[::-1] if after is not None else records

    def refresh_statistics(self) -> None:
        """Let SQLite's planner know the table's shape (``ANALYZE``: it reads the indexes, not the rows;
        about 30 ms per 100,000 runs).

        Without statistics SQLite reads every row of a program to list its newest 50 (it prefers the
        program index over the time index); with them it walks the time index. PostgreSQL's autovacuum
        keeps its own statistics: nothing to do there.
        """
        if self.db.dialect != "sqlite":
            return
        with self.db.write() as connection:
            connection.exec_driver_sql("ANALYZE executions")

    def count(self, where: ExecutionFilter | None = None, *, limit: int | None = None) -> int:
        """How many executions match ``where``; with ``limit``, at most that many (the database stops
        reading there, so a bounded count of an unselective filter stays cheap)."""
        conditions = (where or ExecutionFilter()).where()
        if limit is None:
            query = sa.select(sa.func.count()).select_from(executions).where(*conditions)
        else:
            matching = sa.select(sa.literal(1)).select_from(executions).where(*conditions).limit(limit)
            query = sa.select(sa.func.count()).select_from(matching.subquery())
        with self.db.read() as connection:
            return int(connection.execute(query).scalar_one())

    def started_since(self, since: dt.datetime, program: str | None = None) -> list[dt.datetime]:
        """When each run started at or after ``since`` started (one column, for runs-per-minute charts)."""
        c = executions.c
        query = sa.select(c.started_at).where(c.started_at >= since)
        if program is not None:
            query = query.where(c.program == program)
        with self.db.read() as connection:
            return [aware(value) for value in connection.scalars(query)]

    def stats(self, where: ExecutionFilter | None = None) -> list[VersionStats]:
        """Per (program, version): counts, error rate, latency percentiles, tokens and cost."""
        c = executions.c
        query = (
            sa.select(c.program, c.version_id, c.status, c.duration_ms, c.total_tokens, c.cost_usd)
            .where(*(where or ExecutionFilter()).where())
            .order_by(c.program, c.version_id)
        )
        groups: dict[tuple[str | None, str | None], list[Any]] = {}
        with self.db.read() as connection:
            for row in connection.execute(query):
                groups.setdefault((row.program, row.version_id), []).append(row)
        return [self._summarise(program, version, rows) for (program, version), rows in groups.items()]

    @staticmethod
    def _summarise(program: str | None, version: str | None, rows: list[Any]) -> VersionStats:
        succeeded = sum(1 for r in rows if r.status == "succeeded")
        failed = sum(1 for r in rows if r.status == "failed")
        ended = sum(1 for r in rows if r.status in TERMINAL)
        durations = sorted(r.duration_ms for r in rows if r.duration_ms is not None)
        costs = [r.cost_usd for r in rows if r.status in TERMINAL]
        return VersionStats(
            program=program,
            version_id=version,
            count=len(rows),
            succeeded=succeeded,
            failed=failed,
            error_rate=(failed / ended) if ended else 0.0,
            p50_ms=_percentile(durations, 50),
            p95_ms=_percentile(durations, 95),
            p99_ms=_percentile(durations, 99),
            total_tokens=sum(r.total_tokens or 0 for r in rows),
            cost_usd=None if any(c is None for c in costs) else float(sum(costs)),
        )

    def mark_abandoned(
        self, *, host: str | None = None, is_alive: Callable[[int], bool] | None = None
    ) -> list[str]:
        """Mark ``running`` rows that nobody can finish as ``abandoned``; returns the ids marked.

        A row with a recorder is abandoned when that recorder is closed, gone or past its lease (any
        host). A row without one (written before recorders existed) is abandoned when it ran on
        ``host`` (default: this one) and its pid is not alive; rows of other hosts are left to them.
        """
        host = host or socket.gethostname()
        alive = is_alive or _pid_alive
        c, r = executions.c, recorders.c
        now = utcnow()
        with self.db.read() as connection:
            legacy = connection.execute(
                sa.select(c.id, c.runner, c.started_at).where(
                    c.status == _RUNNING, c.recorder_id.is_(None), c.runner.like(f"{host}:%")
                )
            ).all()
            leased = connection.execute(
                sa.select(c.id, c.runner, c.started_at, c.recorder_id)
                .select_from(executions.outerjoin(recorders, r.id == c.recorder_id))
                .where(
                    c.status == _RUNNING,
                    c.recorder_id.is_not(None),
                    sa.or_(r.id.is_(None), r.closed_at.is_not(None), r.lease_expires_at <= now),
                )
            ).all()
        dead = [
            (
                row.id,
                f"the process that ran it ({row.runner}) ended without recording a result",
                row.started_at,
            )
            for row in legacy
            if not _runner_alive(row.runner, alive)
        ]
        dead += [
            (
                row.id,
                f"its recorder {row.recorder_id} ({row.runner}) closed or stopped renewing its lease "
                "without recording a result",
                row.started_at,
            )
            for row in leased
        ]
        for execution_id, message, started in dead:
            started = aware(started)
            with self.db.write() as connection:
                connection.execute(
                    sa.update(executions)
                    .where(c.id == execution_id, c.status == "running")
                    .values(
                        status="abandoned",
                        ended_at=now,
                        duration_ms=(now - started).total_seconds() * 1000 if started else None,
                        error={
                            "type": "Abandoned",
                            "code": "abandoned",
                            "message": message,
                            "retryable": True,
                        },
                    )
                )
        return [execution_id for execution_id, _, _ in dead]

    def prune(
        self,
        *,
        older_than: dt.datetime | None = None,
        keep_per_program: int | None = None,
        traces_only: bool = False,
    ) -> int:
        """Delete (or, with ``traces_only``, strip the trace of) ended executions past retention, with
        the feedback given on the ones deleted.

        ``older_than`` selects rows started before that time; ``keep_per_program`` keeps the newest N
        of each program. Running rows are never touched. Returns the number of rows affected.
        """
        if older_than is None and keep_per_program is None:
            return 0
        if keep_per_program is not None and keep_per_program < 0:
            raise ValueError("keep_per_program must be >= 0")
        c = executions.c
        doomed: set[str] = set()
        with self.db.read() as connection:
            if older_than is not None:
                doomed.update(
                    connection.scalars(
                        sa.select(c.id).where(c.status.in_(TERMINAL), c.started_at < older_than)
                    )
                )
            if keep_per_program is not None:
                rank = (
                    sa.func.row_number()
                    .over(partition_by=c.program, order_by=(c.started_at.desc(), c.id))
                    .label("rank")
                )
                ranked = sa.select(c.id, rank).where(c.status.in_(TERMINAL)).subquery()
                doomed.update(
                    connection.scalars(sa.select(ranked.c.id).where(ranked.c.rank > keep_per_program))
                )
        if traces_only:
            with self.db.read() as connection:
                doomed = set(
                    connection.scalars(sa.select(c.id).where(c.id.in_(doomed), c.trace.is_not(None)))
                )
        for chunk in _chunks(sorted(doomed), 500):
            with self.db.write() as connection:
                if traces_only:
                    connection.execute(sa.update(executions).where(c.id.in_(chunk)).values(trace=sa.null()))
                else:  # feedback on a run goes with it: retention leaves no orphans behind
                    connection.execute(sa.delete(feedback).where(feedback.c.execution_id.in_(chunk)))
                    connection.execute(sa.delete(executions).where(c.id.in_(chunk)))
        return len(doomed)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _runner_alive(runner: str, alive: Callable[[int], bool]) -> bool:
    _, _, pid = runner.rpartition(":")
    return pid.isdigit() and alive(int(pid))
