"""Recorders: the processes that record runs, each holding a lease it renews while it lives.

Table ``recorders`` (see :mod:`dspex.store.schema`): one row per execution writer (so per App and
process): ``id`` (a UUID, written into ``executions.recorder_id`` of every run it records), ``host`` and
``pid`` (for people reading the table; liveness never relies on them), ``started_at``, ``heartbeat_at``
(its last renewal), ``lease_expires_at`` (heartbeat + lease) and ``closed_at`` (set by a clean close).
The writer thread renews the lease every ``lease_s / 3`` seconds (one small UPDATE). A ``running``
execution whose recorder is closed, or whose lease has expired, can never be finished by anyone: it is
marked ``abandoned`` (:meth:`dspex.store.executions.ExecutionRepository.mark_abandoned`), on any host and
whatever process now holds that host name and pid. That is what a pid check cannot tell: a zombie, or a
restarted container that reuses both. Rows of closed recorders are kept (small) as the history of who
recorded; :meth:`RecorderRepository.prune` deletes old ones.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import recorders

__all__ = ["RecorderRecord", "RecorderRepository"]


@dataclass(frozen=True, slots=True)
class RecorderRecord:
    """One recorder row."""

    id: str
    host: str
    pid: int
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    lease_expires_at: dt.datetime
    closed_at: dt.datetime | None

    def live(self, now: dt.datetime | None = None) -> bool:
        """Open and within its lease."""
        return self.closed_at is None and self.lease_expires_at > (now or utcnow())


class RecorderRepository:
    """Reads and writes the ``recorders`` table. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, lease_s: float) -> str:
        """A new recorder for this process with a lease of ``lease_s`` seconds; returns its id."""
        now = utcnow()
        recorder_id = str(uuid.uuid4())
        with self.db.write() as connection:
            connection.execute(
                sa.insert(recorders).values(
                    id=recorder_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    closed_at=None,
                )
            )
        return recorder_id

    def renew(self, recorder_id: str, lease_s: float) -> bool:
        """Extend the lease; False when the recorder is closed or gone (its runs may be abandoned)."""
        now = utcnow()
        with self.db.write() as connection:
            result = connection.execute(
                sa.update(recorders)
                .where(recorders.c.id == recorder_id, recorders.c.closed_at.is_(None))
                .values(heartbeat_at=now, lease_expires_at=now + dt.timedelta(seconds=lease_s))
            )
        return bool(result.rowcount)

    def close(self, recorder_id: str) -> None:
        """Mark the recorder closed: its runs still ``running`` are abandoned by the next sweep."""
        now = utcnow()
        with self.db.write() as connection:
            connection.execute(
                sa.update(recorders)
                .where(recorders.c.id == recorder_id, recorders.c.closed_at.is_(None))
                .values(closed_at=now, lease_expires_at=now)
            )

    def get(self, recorder_id: str) -> RecorderRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(recorders).where(recorders.c.id == recorder_id)).first()
        if row is None:
            return None
        return RecorderRecord(
            id=row.id,
            host=row.host,
            pid=row.pid,
            started_at=aware(row.started_at),
            heartbeat_at=aware(row.heartbeat_at),
            lease_expires_at=aware(row.lease_expires_at),
            closed_at=aware(row.closed_at) if row.closed_at is not None else None,
        )

    def prune(self, older_than: dt.datetime) -> int:
        """Delete recorders closed or expired before ``older_than``; returns how many."""
        c = recorders.c
        with self.db.write() as connection:
            result = connection.execute(
                sa.delete(recorders).where(sa.or_(c.closed_at < older_than, c.lease_expires_at < older_than))
            )
        return int(result.rowcount)
