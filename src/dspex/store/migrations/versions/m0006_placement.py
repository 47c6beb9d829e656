"""Execution placement: where a run executed (inline, or a pool's worker) and why.

``executions.placement`` is JSON: ``{"target": "pool", "pool": "general", "worker": "general-1", "pid":
1234, "attempts": 1, "reason": "..."}``; NULL for runs executed inline in the caller's process.

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


def upgrade() -> None:
    op.add_column("executions", sa.Column("placement", JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "placement")
