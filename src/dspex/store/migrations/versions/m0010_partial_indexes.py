"""Partial indexes on executions: the sweep's indexes hold only running rows, session and trace ids only
rows that have one.

Every run's record enters each index of ``executions``; four of the seven served rows most runs are not:
the sweep of ``running`` rows (by runner, by recorder) and lookups by session or trace id, which are
NULL unless a run has them. As partial indexes they stay small and a finished run skips them, which
takes about a third off SQLite's cost of storing a record (benchmarks/recording_overhead.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_executions_status_runner", ["status", "runner"], "status = 'running'"),
    ("ix_executions_status_recorder_id", ["status", "recorder_id"], "status = 'running'"),
    ("ix_executions_session_id", ["session_id"], "session_id IS NOT NULL"),
    ("ix_executions_trace_id", ["trace_id"], "trace_id IS NOT NULL"),
)


def upgrade() -> None:
    for name, columns, condition in _INDEXES:
        op.drop_index(name, table_name="executions")
        where = sa.text(condition)
        op.create_index(name, "executions", columns, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, columns, _ in _INDEXES:
        op.drop_index(name, table_name="executions")
        op.create_index(name, "executions", columns)
