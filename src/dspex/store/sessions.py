"""Sessions: a conversation's state across runs, persisted after every turn.

Table ``sessions`` (see :mod:`dspex.store.schema`): ``program``; ``owner`` (``key:<id>`` for an API key,
``local`` for Python and the CLI); ``variables`` (the session's variable values, recorded with each
run); ``history`` (one ``{"inputs", "outputs", "execution_id"}`` entry per successful turn); ``turns``
(their count, which also versions the row: a turn is saved only on top of the state it read);
``metrics`` (running: turns, failures, tokens, cost, time); ``ttl_s`` and ``expires_at`` (idle expiry:
``updated_at + ttl_s``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dspex.errors import ConfigurationError
from dspex.jsonable import storable
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import sessions

__all__ = ["SessionConflict", "SessionRecord", "SessionRepository"]


class SessionConflict(ConfigurationError):
    """The session changed between reading it and saving a turn (another process ran a turn)."""

    code = "session_conflict"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session row."""

    id: str
    program: str
    owner: str
    variables: dict[str, Any] | None
    history: list[dict[str, Any]]
    turns: int
    metrics: dict[str, Any]
    ttl_s: float
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> SessionRecord:
        return cls(
            id=row["id"],
            program=row["program"],
            owner=row["owner"],
            variables=row["variables"],
            history=list(row["history"] or []),
            turns=int(row["turns"]),
            metrics=dict(row["metrics"] or {}),
            ttl_s=float(row["ttl_s"]),
            created_at=aware(row["created_at"]),
            updated_at=aware(row["updated_at"]),
            expires_at=aware(row["expires_at"]),
        )

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())

    def to_json(self, *, history: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "program": self.program,
            "owner": self.owner,
            "variables": self.variables,
            "turns": self.turns,
            "metrics": self.metrics,
            "ttl_s": self.ttl_s,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }
        if history:
            data["history"] = self.history
        return data


class SessionRepository:
    """Reads and writes the ``sessions`` table. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, program: str, *, owner: str, ttl_s: float, variables: Mapping[str, Any] | None = None
    ) -> SessionRecord:
        now = utcnow()
        row: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "program": program,
            "owner": owner,
            "variables": storable(dict(variables)) if variables else None,
            "history": [],
            "turns": 0,
            "metrics": {"turns": 0, "failed": 0, "total_tokens": 0, "cost_usd": 0.0, "duration_ms": 0.0},
            "ttl_s": ttl_s,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + dt.timedelta(seconds=ttl_s),
        }
        with self.db.write() as connection:
            connection.execute(sa.insert(sessions).values(**row))
        return SessionRecord.from_row(row)  # type: ignore[arg-type]  # a dict reads as a row mapping

    def get(self, session_id: str) -> SessionRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()
        return SessionRecord.from_row(row._mapping) if row is not None else None

    def find(self, *, owner: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Sessions newest-updated first (``owner``'s only when given), expired ones included."""
        query = sa.select(sessions).order_by(sessions.c.updated_at.desc()).limit(limit)
        if owner is not None:
            query = query.where(sessions.c.owner == owner)
        with self.db.read() as connection:
            return [SessionRecord.from_row(r._mapping) for r in connection.execute(query)]

    def save_turn(
        self, record: SessionRecord, turn: Mapping[str, Any] | None, metrics: Mapping[str, Any]
    ) -> SessionRecord:
        """Append ``turn`` (None: a failed turn, metrics only) on top of ``record``; SessionConflict when
        the row moved on since ``record`` was read."""
        now = utcnow()
        history = [*record.history, storable(dict(turn))] if turn is not None else record.history
        turns = record.turns + (1 if turn is not None else 0)
        values = {
            "history": history,
            "turns": turns,
            "metrics": storable(dict(metrics)),
            "updated_at": now,
            "expires_at": now + dt.timedelta(seconds=record.ttl_s),
        }
        with self.db.write() as connection:
            changed = connection.execute(
                sa.update(sessions)
                .where(sessions.c.id == record.id, sessions.c.turns == record.turns)
                .values(**values)
            ).rowcount
        if changed != 1:
            raise SessionConflict(
                f"session {record.id} changed while this turn ran (another process ran a turn, or it was "
                "deleted); read it again and retry"
            )
        return SessionRecord(
            id=record.id,
            program=record.program,
            owner=record.owner,
            variables=record.variables,
            history=history,
            turns=turns,
            metrics=dict(values["metrics"]),
            ttl_s=record.ttl_s,
            created_at=record.created_at,
            updated_at=now,
            expires_at=values["expires_at"],
        )

    def hold(self, session_id: str, holder: str, lease_s: float) -> bool:
        """Take the session for one turn (atomically: free, or its holder's lease expired); False if
        another holder has it."""
        now = utcnow()
        c = sessions.c
        with self.db.write() as connection:
            taken = connection.execute(
                sa.update(sessions)
                .where(
                    c.id == session_id,
                    sa.or_(c.busy_until.is_(None), c.busy_until < now, c.busy_by == holder),
                )
                .values(busy_by=holder, busy_until=now + dt.timedelta(seconds=lease_s))
            ).rowcount
        return bool(taken)

    def release(self, session_id: str, holder: str) -> None:
        """Give the session back (only if ``holder`` still has it)."""
        c = sessions.c
        with self.db.write() as connection:
            connection.execute(
                sa.update(sessions)
                .where(c.id == session_id, c.busy_by == holder)
                .values(busy_by=None, busy_until=None)
            )

    def delete(self, session_id: str) -> bool:
        with self.db.write() as connection:
            return bool(connection.execute(sa.delete(sessions).where(sessions.c.id == session_id)).rowcount)

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete expired sessions; returns how many."""
        with self.db.write() as connection:
            result = connection.execute(sa.delete(sessions).where(sessions.c.expires_at <= (now or utcnow())))
            return int(result.rowcount)
