"""Optimizations: one row per optimization run, one per trial.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "optimizations",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("program", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("space", JSON, nullable=False),
        sa.Column("objectives", JSON, nullable=False),
        sa.Column("budget", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("best", JSON, nullable=True),
        sa.Column("pareto", JSON, nullable=True),
        sa.Column("result_version_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_optimizations"),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_optimizations_status"),
    )
    op.create_table(
        "optimization_trials",
        sa.Column("optimization_id", sa.String(200), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("configuration", JSON, nullable=True),
        sa.Column("configuration_id", sa.String(64), nullable=True),
        sa.Column("scores", JSON, nullable=True),
        sa.Column("intermediate", JSON, nullable=False),
        sa.Column("lm_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=True),
        sa.Column("duration_s", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        _when("started_at"),
        _when("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("optimization_id", "number", name="pk_optimization_trials"),
        sa.ForeignKeyConstraint(
            ["optimization_id"],
            ["optimizations.id"],
            ondelete="CASCADE",
            name="fk_optimization_trials_optimization_id_optimizations",
        ),
        sa.CheckConstraint(
            "state IN ('running', 'complete', 'pruned', 'failed')", name="ck_optimization_trials_state"
        ),
    )


def downgrade() -> None:
    op.drop_table("optimization_trials")
    op.drop_table("optimizations")
