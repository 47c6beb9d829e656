"""Variable history: every change of a variable's value, who made it, when, and the score it got.

Table ``variable_changes`` (see :mod:`dspex.store.schema`), append-only. ``scope`` is what the variables
belong to: a program name, or any name a caller picks (an optimization study, an experiment). One row
per variable per change; a change that moves several variables at once (a new configuration) writes one
row each, sharing ``changed_by``, ``changed_at``, ``score`` and ``configuration_id`` (the id of the
configuration the change produced, which is also what program versions and executions store).

``old`` and ``new`` hold ``{"v": 1, "value": <JSON>}``, or SQL NULL when the variable was absent (a
conditional variable that was inactive, or a scope's first value): the wrapper keeps a JSON ``null``
value apart from "no value". ``id`` orders the rows (insertion order); ``changed_at`` is for humans and
time filters. The indexes serve the two reads: one variable's history in a scope, and a scope by time.

::

    repo = VariableHistoryRepository(db)
    repo.append([VariableChangeRecord(scope="qa", variable="temperature", old=None, new=0.7,
                                      old_present=False, changed_by="alice", changed_at=utcnow())])
    repo.find("qa", variable="temperature")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import variable_changes

__all__ = ["VariableChangeRecord", "VariableHistoryRepository", "utcnow"]

_PAYLOAD_VERSION = 1


def _wrap(value: Any, present: bool) -> dict[str, Any] | None:
    return {"v": _PAYLOAD_VERSION, "value": value} if present else None


@dataclass(frozen=True, slots=True)
class VariableChangeRecord:
    """One stored change. ``old_present``/``new_present`` say whether the variable had a value before and
    after (False: absent, for example an inactive conditional). ``id`` is 0 until the row is stored."""

    scope: str
    variable: str
    old: Any
    new: Any
    changed_by: str
    changed_at: dt.datetime
    score: float | None = None
    configuration_id: str | None = None
    old_present: bool = True
    new_present: bool = True
    id: int = 0

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> VariableChangeRecord:
        old, new = row["old"], row["new"]
        return cls(
            id=int(row["id"]),
            scope=row["scope"],
            variable=row["variable"],
            old=old["value"] if old is not None else None,
            new=new["value"] if new is not None else None,
            old_present=old is not None,
            new_present=new is not None,
            changed_by=row["changed_by"],
            changed_at=aware(row["changed_at"]),
            score=row["score"],
            configuration_id=row["configuration_id"],
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "variable": self.variable,
            "old": _wrap(self.old, self.old_present),
            "new": _wrap(self.new, self.new_present),
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "score": self.score,
            "configuration_id": self.configuration_id,
        }


class VariableHistoryRepository:
    """Appends to and reads the ``variable_changes`` table. Thread-safe (each call takes its own connection)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, records: Sequence[VariableChangeRecord]) -> list[VariableChangeRecord]:
        """Store ``records`` in one transaction, in order; returns them with their ids."""
        if not records:
            return []
        stored: list[VariableChangeRecord] = []
        with self.db.write() as connection:
            # One INSERT ... RETURNING per row keeps the ids in order on both databases.
            for record in records:
                new_id = connection.execute(
                    sa.insert(variable_changes).returning(variable_changes.c.id), record.to_row()
                ).scalar_one()
                stored.append(dataclasses.replace(record, id=int(new_id)))
        return stored

    def find(
        self,
        scope: str,
        *,
        variable: str | None = None,
        changed_by: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[VariableChangeRecord]:
        """Changes in ``scope``, oldest first; the keyword filters combine with AND."""
        c = variable_changes.c
        query = sa.select(variable_changes).where(c.scope == scope)
        if variable is not None:
            query = query.where(c.variable == variable)
        if changed_by is not None:
            query = query.where(c.changed_by == changed_by)
        if since is not None:
            query = query.where(c.changed_at >= since)
        if until is not None:
            query = query.where(c.changed_at < until)
        query = query.order_by(c.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as connection:
            return [VariableChangeRecord.from_row(row._mapping) for row in connection.execute(query)]

    def count(self, scope: str, *, variable: str | None = None) -> int:
        """How many changes ``scope`` (or one of its variables) has."""
        c = variable_changes.c
        query = sa.select(sa.func.count()).select_from(variable_changes).where(c.scope == scope)
        if variable is not None:
            query = query.where(c.variable == variable)
        with self.db.read() as connection:
            return int(connection.execute(query).scalar_one())

    def scopes(self) -> list[str]:
        """Every scope with history, sorted."""
        query = sa.select(variable_changes.c.scope).distinct().order_by(variable_changes.c.scope)
        with self.db.read() as connection:
            return [row.scope for row in connection.execute(query)]
