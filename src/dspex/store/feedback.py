"""Feedback: what someone said about a run after it ended (a score, a label, a comment).

Table ``feedback`` (see :mod:`dspex.store.schema`): one row per piece of feedback, append-only (several
people or systems may rate the same run; nothing here updates or deletes a row). ``execution_id`` is the
full id of an execution that existed when the feedback was given (checked in the same transaction);
``score`` is a number from 0 (worst) to 1 (best), so the quality signals of
:mod:`dspex.telemetry.signals` can average and compare it across programs; ``label`` a short tag such as
``good`` or ``wrong-format`` (at most 200 characters); ``comment`` free text (at most 10,000
characters); ``detail`` any JSON object the caller wants kept with it (at most 16 KiB encoded; carries no
version field of ours, it is the caller's); ``actor`` who gave it (``key:<id>`` for an API key, ``local``
for Python and the CLI, or what the caller passed). At least one of score, label and comment is required.
Feedback is written synchronously: when :meth:`FeedbackRepository.add` returns, the row is committed.

Retention (:meth:`ExecutionRepository.prune <dspex.store.executions.ExecutionRepository.prune>`) deletes
executions, not their feedback; feedback whose execution was pruned stays readable by execution id, and
no longer counts in signals (which join feedback to its run).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dspex.errors import ConfigurationError, FieldIssue, ValidationError
from dspex.jsonable import dumps, storable
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import executions, feedback

__all__ = [
    "MAX_ACTOR",
    "MAX_COMMENT",
    "MAX_DETAIL_BYTES",
    "MAX_LABEL",
    "SCORE_MAX",
    "SCORE_MIN",
    "FeedbackRecord",
    "FeedbackRepository",
    "UnknownExecution",
    "check_feedback",
]

SCORE_MIN = 0.0
SCORE_MAX = 1.0
MAX_LABEL = 200
MAX_COMMENT = 10_000
MAX_DETAIL_BYTES = 16_384
MAX_ACTOR = 200


class UnknownExecution(ConfigurationError):
    """Feedback names an execution the store does not have."""

    code = "unknown_execution"


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One piece of feedback on one execution."""

    id: str
    execution_id: str
    score: float | None
    label: str | None
    comment: str | None
    detail: dict[str, Any] | None
    actor: str
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | sa.RowMapping) -> FeedbackRecord:
        return cls(
            id=row["id"],
            execution_id=row["execution_id"],
            score=row["score"],
            label=row["label"],
            comment=row["comment"],
            detail=row["detail"],
            actor=row["actor"],
            created_at=aware(row["created_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The feedback as JSON (time as ISO 8601)."""
        return {
            "id": self.id,
            "execution_id": self.execution_id,
            "score": self.score,
            "label": self.label,
            "comment": self.comment,
            "detail": self.detail,
            "actor": self.actor,
            "created_at": self.created_at.isoformat(),
        }


def check_feedback(
    *,
    score: float | None,
    label: str | None,
    comment: str | None,
    detail: Mapping[str, Any] | None,
    actor: str,
) -> None:
    """Raise :class:`~dspex.errors.ValidationError` listing every field that is not acceptable feedback.

    >>> check_feedback(score=0.8, label="good", comment=None, detail=None, actor="local")
    """
    issues: list[FieldIssue] = []
    if score is None and label is None and comment is None:
        issues.append(
            FieldIssue("score", "a score, a label or a comment", "no score, label or comment given")
        )
    if score is not None:
        expected = f"a finite number from {SCORE_MIN:g} (worst) to {SCORE_MAX:g} (best)"
        if isinstance(score, bool) or not isinstance(score, int | float):
            issues.append(FieldIssue("score", expected, f"got {type(score).__name__} {score!r}"))
        elif not math.isfinite(score) or not SCORE_MIN <= score <= SCORE_MAX:
            issues.append(FieldIssue("score", expected, f"got {score!r}"))
    for name, value, limit in (("label", label, MAX_LABEL), ("comment", comment, MAX_COMMENT)):
        if value is None:
            continue
        expected = f"text of 1 to {limit:,} characters"
        if not isinstance(value, str):
            issues.append(FieldIssue(name, expected, f"got {type(value).__name__}"))
        elif not value.strip():
            issues.append(FieldIssue(name, expected, "empty (leave it out instead)"))
        elif len(value) > limit:
            issues.append(FieldIssue(name, expected, f"{len(value):,} characters"))
    if detail is not None:
        expected = f"a JSON object of at most {MAX_DETAIL_BYTES:,} bytes"
        if not isinstance(detail, Mapping):
            issues.append(FieldIssue("detail", expected, f"got {type(detail).__name__}"))
        elif len(dumps(dict(detail)).encode()) > MAX_DETAIL_BYTES:
            issues.append(FieldIssue("detail", expected, "too large"))
    if not isinstance(actor, str) or not actor or len(actor) > MAX_ACTOR:
        issues.append(FieldIssue("actor", f"text of 1 to {MAX_ACTOR} characters", f"got {actor!r}"))
    if issues:
        raise ValidationError(
            "invalid feedback: " + "; ".join(str(issue) for issue in issues), issues=tuple(issues)
        )


class FeedbackRepository:
    """Adds and reads feedback. Thread-safe (each call takes its own connection)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        execution_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        detail: Mapping[str, Any] | None = None,
        actor: str = "local",
    ) -> FeedbackRecord:
        """Store feedback on the execution with this full id; committed when it returns.

        Raises ``ValidationError`` for unacceptable values (see :func:`check_feedback`) and
        :class:`UnknownExecution` when no such execution is recorded.
        """
        check_feedback(score=score, label=label, comment=comment, detail=detail, actor=actor)
        row: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "execution_id": execution_id,
            "score": float(score) if score is not None else None,
            "label": label,
            "comment": comment,
            "detail": storable(dict(detail)) if detail is not None else None,
            "actor": actor,
            "created_at": utcnow(),
        }
        with self.db.write() as connection:
            found = connection.execute(
                sa.select(executions.c.id).where(executions.c.id == execution_id)
            ).first()
            if found is None:
                raise UnknownExecution(
                    f"no execution {execution_id!r} to give feedback on; "
                    "dspex executions list (or GET /v1/executions) shows the recorded ones"
                )
            connection.execute(sa.insert(feedback).values(**row))
        return FeedbackRecord.from_row(row)

    def get(self, feedback_id: str) -> FeedbackRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(feedback).where(feedback.c.id == feedback_id)).first()
        return FeedbackRecord.from_row(row._mapping) if row is not None else None

    def for_execution(self, execution_id: str) -> list[FeedbackRecord]:
        """The feedback on one execution (full id), oldest first."""
        query = (
            sa.select(feedback)
            .where(feedback.c.execution_id == execution_id)
            .order_by(feedback.c.created_at, feedback.c.id)
        )
        with self.db.read() as connection:
            return [FeedbackRecord.from_row(row._mapping) for row in connection.execute(query)]

    def for_executions(self, execution_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        """The feedback on each of these executions (full ids), oldest first; ids without any are absent."""
        found: dict[str, list[FeedbackRecord]] = {}
        ids = sorted(set(execution_ids))
        for start in range(0, len(ids), 500):
            query = (
                sa.select(feedback)
                .where(feedback.c.execution_id.in_(ids[start : start + 500]))
                .order_by(feedback.c.created_at, feedback.c.id)
            )
            with self.db.read() as connection:
                for row in connection.execute(query):
                    record = FeedbackRecord.from_row(row._mapping)
                    found.setdefault(record.execution_id, []).append(record)
        return found

    def count(self, execution_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(feedback)
        if execution_id is not None:
            query = query.where(feedback.c.execution_id == execution_id)
        with self.db.read() as connection:
            return int(connection.execute(query).scalar_one())
