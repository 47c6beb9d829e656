"""``AuditRepository``: who changed which program's versions, and when.

Table ``audit_events`` (migration 0005): one row per register, replace, promote and rollback, from the
API, the CLI or Python. ``actor`` is ``key:<id>`` for an API key, ``local`` otherwise; ``before_version``
and ``after_version`` are the production version before the change and the version the change made
(the registered draft, the promoted or the restored version). ``detail`` is a small JSON object with a
``"v"`` field. Rows are only ever added; retention does not touch them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import audit_events

__all__ = ["AuditAction", "AuditEvent", "AuditRepository"]

AuditAction = Literal["register", "replace", "promote", "rollback"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit row."""

    id: str
    at: dt.datetime
    actor: str
    action: str
    program: str | None
    before_version: str | None
    after_version: str | None
    detail: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "program": self.program,
            "before_version": self.before_version,
            "after_version": self.after_version,
            "detail": self.detail,
        }


class AuditRepository:
    """Appends and lists audit events."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        action: AuditAction,
        program: str,
        *,
        actor: str = "local",
        before: str | None = None,
        after: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        event = AuditEvent(
            str(uuid.uuid4()),
            utcnow(),
            actor,
            action,
            program,
            before,
            after,
            {"v": 1, **detail} if detail else None,
        )
        with self.db.write() as connection:
            connection.execute(sa.insert(audit_events).values(**event.to_json() | {"at": event.at}))
        return event

    def list(self, *, program: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The newest events first, of one program or of all."""
        query = sa.select(audit_events).order_by(audit_events.c.at.desc()).limit(limit)
        if program is not None:
            query = query.where(audit_events.c.program == program)
        with self.db.read() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            AuditEvent(
                r["id"],
                aware(r["at"]),
                r["actor"],
                r["action"],
                r["program"],
                r["before_version"],
                r["after_version"],
                r["detail"],
            )
            for r in rows
        ]
