"""Telemetry: the OpenTelemetry trace of each run, and feedback on runs.

``executions.trace_id`` is the W3C trace id (32 hex digits) of the OpenTelemetry trace a run belongs to
(its own, or the caller's when a ``traceparent`` came with the request); NULL when the run was not
traced. ``feedback`` holds scores, labels and comments given on a run after it ended (by API key or
locally), which quality signals count.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("executions", sa.Column("trace_id", sa.String(32), nullable=True))
    op.create_index("ix_executions_trace_id", "executions", ["trace_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_execution_id", "feedback", ["execution_id"])
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("ix_executions_trace_id", "executions")
    op.drop_column("executions", "trace_id")
