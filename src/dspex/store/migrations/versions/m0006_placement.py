"""Execution placement (where a run executed: inline, or a pool's worker) and sessions.

``executions.placement`` is JSON: ``{"target": "pool", "pool": "general", "worker": "general-1", "pid":
1234, "attempts": 1, "reason": "..."}``; NULL for runs executed inline in the caller's process.
``executions.session_id`` names the session a run was a turn of; ``sessions`` holds each session's
program, owner, variables, history (one entry per turn), running metrics and idle expiry.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.add_column("executions", sa.Column("placement", JSON, nullable=True))
    op.add_column("executions", sa.Column("session_id", sa.String(36), nullable=True))
    op.create_index("ix_executions_session_id", "executions", ["session_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("variables", JSON, nullable=True),
        sa.Column("history", JSON, nullable=False),
        sa.Column("turns", sa.Integer, nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("ttl_s", sa.Float, nullable=False),
        _when("created_at"),
        _when("updated_at"),
        _when("expires_at"),
        sa.Column("busy_by", sa.String(64), nullable=True),
        sa.Column("busy_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_owner", "sessions", ["owner"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("sessions")
    op.drop_index("ix_executions_session_id", "executions")
    op.drop_column("executions", "session_id")
    op.drop_column("executions", "placement")
