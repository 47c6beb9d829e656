"""Outcomes: the lean reads live signals (:mod:`dspex.telemetry.signals`) poll, over ``executions`` and
``feedback``.

Signals need, per run, only its program, version, models, variables, status, duration, tokens and cost,
never its inputs, outputs or trace; and per piece of feedback, its score joined to that run. Both reads are
keyset-paginated in time order (``started_at`` for runs, on its index; ``created_at`` for feedback, on
its index), so a poller reads what is new since its last position, a page at a time, without scanning
the table. Runs still ``running`` at one poll are looked up again by id (primary key) at the next.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dspex.store._engine import Database
from dspex.store._time import aware
from dspex.store.schema import executions, feedback
from dspex.telemetry.signals import RatedRun, RunOutcome

__all__ = ["OutcomeRepository"]

_RUN_COLUMNS = (
    executions.c.id,
    executions.c.program,
    executions.c.version_id,
    executions.c.status,
    executions.c.started_at,
    executions.c.ended_at,
    executions.c.duration_ms,
    executions.c.usage,
    executions.c.total_tokens,
    executions.c.cost_usd,
    executions.c.variables,
    executions.c.cache_hit,
)


def _models(usage: Any) -> tuple[str, ...]:
    # usage is {model: {...}} per the executions module; the models that served the run's LM calls.
    return tuple(sorted(str(model) for model in usage)) if isinstance(usage, dict) else ()


def _outcome(row: sa.RowMapping) -> RunOutcome:
    variables = row["variables"]
    return RunOutcome(
        id=row["id"],
        program=row["program"],
        version_id=row["version_id"],
        status=row["status"],
        started_at=aware(row["started_at"]),
        ended_at=aware(row["ended_at"]),
        duration_ms=row["duration_ms"],
        total_tokens=row["total_tokens"],
        cost_usd=row["cost_usd"],
        models=_models(row["usage"]),
        variables=variables if isinstance(variables, dict) else None,
        cache_hit=bool(row["cache_hit"]),
    )


class OutcomeRepository:
    """Reads runs and scored feedback for signals. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def runs(
        self,
        started_from: dt.datetime,
        *,
        after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[RunOutcome]:
        """Runs started at or after ``started_from`` (and, with ``after``, strictly after that
        ``(started_at, id)`` position), oldest first, at most ``limit``."""
        c = executions.c
        query = sa.select(*_RUN_COLUMNS).where(c.started_at >= started_from)
        if after is not None:
            at, execution_id = after
            query = query.where(sa.or_(c.started_at > at, sa.and_(c.started_at == at, c.id > execution_id)))
        query = query.order_by(c.started_at, c.id).limit(limit)
        with self.db.read() as connection:
            return [_outcome(row._mapping) for row in connection.execute(query)]

    def newest_runs(self, started_from: dt.datetime, *, limit: int) -> list[RunOutcome]:
        """The newest ``limit`` runs started at or after ``started_from``, oldest first (a backfill)."""
        c = executions.c
        query = (
            sa.select(*_RUN_COLUMNS)
            .where(c.started_at >= started_from)
            .order_by(c.started_at.desc(), c.id.desc())
            .limit(limit)
        )
        with self.db.read() as connection:
            rows = [_outcome(row._mapping) for row in connection.execute(query)]
        rows.reverse()
        return rows

    def runs_by_id(self, ids: Sequence[str]) -> list[RunOutcome]:
        """These runs (missing ids are left out), in no particular order."""
        found: list[RunOutcome] = []
        unique = sorted(set(ids))
        for start in range(0, len(unique), 500):
            query = sa.select(*_RUN_COLUMNS).where(executions.c.id.in_(unique[start : start + 500]))
            with self.db.read() as connection:
                found.extend(_outcome(row._mapping) for row in connection.execute(query))
        return found

    def scores(
        self,
        created_from: dt.datetime,
        *,
        after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[RatedRun]:
        """Feedback with a score given at or after ``created_from`` (and strictly after the ``(created_at,
        id)`` position ``after``), joined to its run, oldest first, at most ``limit``. Feedback whose run
        was pruned is left out."""
        f = feedback.c
        query = (
            sa.select(f.id.label("feedback_id"), f.score, f.created_at.label("rated_at"), *_RUN_COLUMNS)
            .select_from(feedback.join(executions, executions.c.id == f.execution_id))
            .where(f.created_at >= created_from, f.score.is_not(None))
        )
        if after is not None:
            at, feedback_id = after
            query = query.where(sa.or_(f.created_at > at, sa.and_(f.created_at == at, f.id > feedback_id)))
        query = query.order_by(f.created_at, f.id).limit(limit)
        with self.db.read() as connection:
            return [
                RatedRun(
                    feedback_id=row.feedback_id,
                    score=float(row.score),
                    created_at=aware(row.rated_at),
                    run=_outcome(row._mapping),
                )
                for row in connection.execute(query)
            ]
