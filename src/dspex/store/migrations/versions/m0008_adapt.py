"""Adaptive programs: the arms a bandit serves, its event log, and which arm served each run.

``executions.adaptation`` is JSON, NULL for runs no adaptive program served: ``{"v": 1, "adaptive":
"qa-live", "arm": "3f2a...", "reason": "exploit"|"explore"|"guardrail"|"frozen", "context": "...",
"policy": "thompson"}``. ``adaptive_programs`` holds one row per adaptive program (its program, space,
policy and reward settings as JSON, its status and a frozen arm); ``adaptive_arms`` its candidate
configurations (active or retired by a guardrail); ``adaptive_events`` is append-only (serves, rewards,
resets, retirements, re-optimizations), so processes sharing one policy never overwrite each other's
observations; ``key`` makes an event idempotent (one reward per execution, one arm per job).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.add_column("executions", sa.Column("adaptation", JSON, nullable=True))
    op.create_table(
        "adaptive_programs",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("frozen_arm", sa.String(64), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.CheckConstraint("status IN ('active', 'frozen', 'stopped')", name="ck_adaptive_programs_status"),
        sa.PrimaryKeyConstraint("name", name="pk_adaptive_programs"),
    )
    op.create_table(
        "adaptive_arms",
        sa.Column("adaptive", sa.String(200), nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("configuration", JSON, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("retired_reason", sa.Text, nullable=True),
        _when("added_at"),
        _when("retired_at", nullable=True),
        sa.CheckConstraint("status IN ('active', 'retired')", name="ck_adaptive_arms_status"),
        sa.ForeignKeyConstraint(
            ["adaptive"],
            ["adaptive_programs.name"],
            name="fk_adaptive_arms_adaptive_adaptive_programs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("adaptive", "arm", name="pk_adaptive_arms"),
    )
    op.create_table(
        "adaptive_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("adaptive", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("arm", sa.String(64), nullable=True),
        sa.Column("execution_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("context", sa.String(200), nullable=True),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("quality", sa.Float, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("failed", sa.Boolean, nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("key", sa.String(200), nullable=True),
        _when("at"),
        sa.PrimaryKeyConstraint("id", name="pk_adaptive_events"),
    )
    op.create_index("ix_adaptive_events_adaptive_id", "adaptive_events", ["adaptive", "id"])
    op.create_index("ix_adaptive_events_execution_id", "adaptive_events", ["execution_id"])
    op.create_index("uq_adaptive_events_adaptive_key", "adaptive_events", ["adaptive", "key"], unique=True)


def downgrade() -> None:
    op.drop_table("adaptive_events")
    op.drop_table("adaptive_arms")
    op.drop_table("adaptive_programs")
    op.drop_column("executions", "adaptation")
