"""The evaluation cache: what a program configuration predicted for an example, kept in the store.

``evaluation_cache`` holds one row per (configuration id, example hash): the prediction as JSON, the
metric scores known for it, and for DSPy optimizer runs the trace of predictor calls that made it, so
a run taken up again after its worker died does not pay again for evaluations it already made
(:mod:`dspex.store.evalcache`).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "evaluation_cache",
        sa.Column("configuration_id", sa.String(200), nullable=False),
        sa.Column("example_hash", sa.String(64), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("configuration_id", "example_hash", name="pk_evaluation_cache"),
    )
    op.create_index("ix_evaluation_cache_created_at", "evaluation_cache", ["created_at"])


def downgrade() -> None:
    op.drop_table("evaluation_cache")
