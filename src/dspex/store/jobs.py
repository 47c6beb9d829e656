"""Durable jobs: a table queue with leases, heartbeats, retries with backoff and cancellation.

Table ``jobs``: one row per job. A worker *claims* the oldest eligible job (``queued`` and due, or
``running`` with an expired lease: its worker died) in one write transaction: ``SELECT ... FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so many workers claim different jobs without waiting on each other, and
``BEGIN IMMEDIATE`` on SQLite, where the database lock serialises claims. Claiming sets ``lease_owner``
and ``lease_expires_at`` and counts an attempt; the worker renews the lease with :meth:`heartbeat`
while it works. A job whose lease expires is taken up again by another worker (at-least-once delivery),
which is why job handlers resume rather than restart (an optimization keeps its completed trials).

States::

    queued -> running -> succeeded | failed | cancelled
    running -> queued          a retryable failure (attempts left): due again after a backoff
    running -> queued          release(): its worker is shutting down; due at once, the attempt not counted
    running -> running         its worker died: the next claim takes it over (a new attempt)
    queued -> cancelled        cancel() before any worker took it
    running -> cancelled       cancel() sets cancel_requested; the worker sees it at its next
                               heartbeat, stops, and calls finish_cancelled()

Only the lease owner may heartbeat, complete or fail a job: a worker that lost its lease (it stalled past
the lease and another worker claimed the job) learns so from :meth:`heartbeat` returning ``lost`` and
must stop. Errors are JSON ``{"type", "message", "code", "retryable", "attempt"}``; every attempt's error
is kept in ``error["attempts"]``.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from dspex.errors import ConfigurationError
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import JOB_STATUSES, jobs

__all__ = ["HeartbeatResult", "JobRecord", "JobRepository", "JobStatus", "backoff_seconds"]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
HeartbeatResult = Literal["ok", "cancel", "lost"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
_ERRORS_KEPT = 20


def backoff_seconds(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds before retry number ``attempt`` (1-based): 2, 4, 8 ... capped at ``cap``."""
    return float(min(cap, base ** max(1, attempt)))


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job and where it stands."""

    id: str
    kind: str
    payload: dict[str, Any]
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_after: dt.datetime
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> JobRecord:
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=row["payload"],
            status=row["status"],
            priority=int(row["priority"]),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            run_after=aware(row["run_after"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=aware(row["lease_expires_at"]),
            heartbeat_at=aware(row["heartbeat_at"]),
            cancel_requested=bool(row["cancel_requested"]),
            progress=row["progress"],
            result=row["result"],
            error=row["error"],
            created_by=row["created_by"],
            created_at=aware(row["created_at"]),
            started_at=aware(row["started_at"]),
            finished_at=aware(row["finished_at"]),
        )

    @property
    def done(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """The job as JSON (times as ISO 8601)."""

        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "kind": self.kind,
            "payload": self.payload,
            "status": self.status,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_after": iso(self.run_after),
            "lease_owner": self.lease_owner,
            "lease_expires_at": iso(self.lease_expires_at),
            "heartbeat_at": iso(self.heartbeat_at),
            "cancel_requested": self.cancel_requested,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


class JobRepository:
    """Reads and writes ``jobs``. Thread-safe (a connection per call); see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- producers -----------------------------------------------------------------------------------
    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        job_id: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        created_by: str | None = None,
        run_after: dt.datetime | None = None,
    ) -> JobRecord:
        """Add a ``queued`` job; ``priority`` higher runs first, then oldest first."""
        if not kind:
            raise ConfigurationError("a job needs a kind, e.g. 'optimize'")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts}")
        now = utcnow()
        job_id = job_id or uuid.uuid4().hex
        with self.db.write() as connection:
            connection.execute(
                sa.insert(jobs).values(
                    id=job_id,
                    kind=kind,
                    payload=dict(payload),
                    status="queued",
                    priority=priority,
                    attempts=0,
                    max_attempts=max_attempts,
                    run_after=run_after or now,
                    cancel_requested=False,
                    created_by=created_by,
                    created_at=now,
                )
            )
            return _read(connection, job_id)

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return JobRecord.from_row(row._mapping) if row is not None else None

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally of one status and kind."""
        if status is not None and status not in JOB_STATUSES:
            raise ConfigurationError(f"job status is one of {', '.join(JOB_STATUSES)}, got {status!r}")
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(jobs.c.status == status)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        with self.db.read() as connection:
            return [JobRecord.from_row(row._mapping) for row in connection.execute(query)]

    def with_prefix(
        self, prefix: str, *, kind: str | None = None, limit: int = 10
    ) -> builtins.list[JobRecord]:
        """Jobs whose id starts with ``prefix`` (hex only), newest first: a range scan of the primary key."""
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
            return []
        query = (
            sa.select(jobs)
            .where(jobs.c.id >= prefix, jobs.c.id < prefix + "g")  # "g" sorts after every hex digit
            .order_by(jobs.c.created_at.desc())
            .limit(limit)
        )
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        with self.db.read() as connection:
            return [JobRecord.from_row(row._mapping) for row in connection.execute(query)]

    def counts(self) -> dict[str, int]:
        """The number of jobs in each status (every status present, zeros included)."""
        with self.db.read() as connection:
            rows = connection.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))
            found = {status: int(n) for status, n in rows}
        return {status: found.get(status, 0) for status in JOB_STATUSES}

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: a queued one at once, a running one at its worker's next heartbeat.

        Cancelling a finished job is an error that says how it ended."""
        now = utcnow()
        with self.db.write() as connection:
            job = _read(connection, job_id, for_update=True)
            if job.done:
                raise ConfigurationError(f"job {job_id} already ended: {job.status}")
            if job.status == "queued":
                connection.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(status="cancelled", cancel_requested=True, finished_at=now)
                )
            else:
                connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
            return _read(connection, job_id)

    # -- workers -------------------------------------------------------------------------------------
    def claim(
        self, worker: str, *, kinds: Sequence[str] | None = None, lease_s: float = 30.0
    ) -> JobRecord | None:
        """Take the next due job for ``worker`` (see the module docstring), or ``None``.

        A job whose worker died and that has used up its attempts is failed here instead of claimed.
        """
        now = utcnow()
        c = jobs.c
        due = sa.or_(
            sa.and_(c.status == "queued", c.run_after <= now),
            sa.and_(c.status == "running", c.lease_expires_at < now),
        )
        query = (
            sa.select(jobs).where(due).order_by(c.priority.desc(), c.run_after, c.created_at, c.id).limit(1)
        )
        if kinds is not None:
            query = query.where(c.kind.in_(list(kinds)))
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.db.write() as connection:
            while True:
                row = connection.execute(query).first()
                if row is None:
                    return None
                job = JobRecord.from_row(row._mapping)
                if job.status == "running" and (job.attempts >= job.max_attempts or job.cancel_requested):
                    # Its worker died on the last attempt (or while cancelling): end it, look further.
                    ended: JobStatus = "cancelled" if job.cancel_requested else "failed"
                    lost = {
                        "type": "WorkerLost",
                        "message": f"worker {job.lease_owner} stopped heartbeating (lease expired)",
                        "code": "worker_lost",
                        "retryable": True,
                        "attempt": job.attempts,
                    }
                    connection.execute(
                        sa.update(jobs)
                        .where(c.id == job.id)
                        .values(
                            status=ended,
                            lease_owner=None,
                            lease_expires_at=None,
                            finished_at=now,
                            error=_with_attempt(job.error, lost) if ended == "failed" else job.error,
                        )
                    )
                    continue
                connection.execute(
                    sa.update(jobs)
                    .where(c.id == job.id)
                    .values(
                        status="running",
                        attempts=job.attempts + 1,
                        lease_owner=worker,
                        lease_expires_at=now + dt.timedelta(seconds=lease_s),
                        heartbeat_at=now,
                        started_at=job.started_at or now,
                    )
                )
                return _read(connection, job.id)

    def heartbeat(
        self,
        job_id: str,
        worker: str,
        *,
        lease_s: float = 30.0,
        progress: Mapping[str, Any] | None = None,
    ) -> HeartbeatResult:
        """Renew ``worker``'s lease (and record ``progress``): ``ok``, ``cancel`` (stop and call
        :meth:`finish_cancelled`) or ``lost`` (another worker owns the job now, or it ended: stop)."""
        now = utcnow()
        values: dict[str, Any] = {
            "lease_expires_at": now + dt.timedelta(seconds=lease_s),
            "heartbeat_at": now,
        }
        if progress is not None:
            values["progress"] = dict(progress)
        with self.db.write() as connection:
            updated = connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == worker, jobs.c.status == "running")
                .values(**values)
                .returning(jobs.c.cancel_requested)
            ).first()
        if updated is None:
            return "lost"
        return "cancel" if updated[0] else "ok"

    def complete(self, job_id: str, worker: str, result: Mapping[str, Any] | None = None) -> bool:
        """Mark the job succeeded with ``result``; False if ``worker`` no longer holds it."""
        return self._finish(job_id, worker, status="succeeded", result=dict(result or {}))

    def finish_cancelled(self, job_id: str, worker: str, result: Mapping[str, Any] | None = None) -> bool:
        """Mark a job whose cancellation the worker honoured as cancelled."""
        return self._finish(job_id, worker, status="cancelled", result=dict(result) if result else None)

    def fail(
        self,
        job_id: str,
        worker: str,
        error: Mapping[str, Any],
        *,
        retryable: bool,
        backoff_s: float | None = None,
    ) -> JobRecord | None:
        """Record a failed attempt: back to ``queued`` after a backoff when ``retryable`` and attempts
        remain, else ``failed``. Returns the job, or None if ``worker`` no longer holds it."""
        now = utcnow()
        with self.db.write() as connection:
            job = _read(connection, job_id, for_update=True)
            if job.lease_owner != worker or job.status != "running":
                return None
            entry = {**dict(error), "retryable": retryable, "attempt": job.attempts}
            again = retryable and job.attempts < job.max_attempts and not job.cancel_requested
            delay = backoff_s if backoff_s is not None else backoff_seconds(job.attempts)
            values: dict[str, Any] = {
                "error": _with_attempt(job.error, entry),
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if again:
                values.update(status="queued", run_after=now + dt.timedelta(seconds=delay))
            else:
                values.update(status="cancelled" if job.cancel_requested else "failed", finished_at=now)
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            return _read(connection, job_id)

    def release(self, job_id: str, worker: str) -> JobRecord | None:
        """Give a running job back to the queue because its worker is stopping (not because it failed):
        ``queued`` and due at once, the attempt not counted; ``cancelled`` if a cancel was requested.
        Returns the job, or None if ``worker`` no longer holds it."""
        now = utcnow()
        with self.db.write() as connection:
            job = _read(connection, job_id, for_update=True)
            if job.lease_owner != worker or job.status != "running":
                return None
            values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
            if job.cancel_requested:
                values.update(status="cancelled", finished_at=now)
            else:
                values.update(status="queued", run_after=now, attempts=max(0, job.attempts - 1))
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            return _read(connection, job_id)

    def _finish(self, job_id: str, worker: str, *, status: JobStatus, result: dict[str, Any] | None) -> bool:
        with self.db.write() as connection:
            updated = connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == worker, jobs.c.status == "running")
                .values(
                    status=status,
                    result=result,
                    finished_at=utcnow(),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        return updated.rowcount == 1


def _with_attempt(previous: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    attempts = [*(previous or {}).get("attempts", []), dict(entry)][-_ERRORS_KEPT:]
    return {**dict(entry), "attempts": attempts}


def _read(connection: sa.Connection, job_id: str, *, for_update: bool = False) -> JobRecord:
    query = sa.select(jobs).where(jobs.c.id == job_id)
    if for_update:
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        raise ConfigurationError(f"unknown job {job_id!r}; list them with `dspex jobs list`")
    return JobRecord.from_row(row._mapping)
