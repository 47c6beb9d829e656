"""Initial schema: programs and versions, executions, datasets.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "programs",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("source", JSON, nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_programs"),
    )
    op.create_table(
        "program_versions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("dspy_version", sa.String(32), nullable=False),
        sa.Column("variables", JSON, nullable=True),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        _when("created_at"),
        _when("promoted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_program_versions"),
        sa.ForeignKeyConstraint(
            ["program"], ["programs.name"], ondelete="CASCADE", name="fk_program_versions_program_programs"
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'optimizing', 'production', 'archived')", name="ck_program_versions_status"
        ),
    )
    op.create_index("ix_program_versions_program_created_at", "program_versions", ["program", "created_at"])
    op.create_index(
        "uq_program_versions_one_production",
        "program_versions",
        ["program"],
        unique=True,
        sqlite_where=sa.text("status = 'production'"),
        postgresql_where=sa.text("status = 'production'"),
    )
    op.create_table(
        "executions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("program", sa.String(200), nullable=True),
        sa.Column("version_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("outputs", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        _when("started_at"),
        _when("ended_at", nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("usage", JSON, nullable=True),
        sa.Column("total_tokens", sa.Integer, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=True),
        sa.Column("variables", JSON, nullable=True),
        sa.Column("trace", JSON, nullable=True),
        sa.Column("cache_hit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("runner", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'cancelled', 'abandoned')",
            name="ck_executions_status",
        ),
    )
    op.create_index("ix_executions_started_at", "executions", ["started_at"])
    op.create_index(
        "ix_executions_program_version_id_started_at", "executions", ["program", "version_id", "started_at"]
    )
    op.create_index("ix_executions_status_runner", "executions", ["status", "runner"])
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_datasets"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("input_fields", JSON, nullable=False),
        sa.Column("label_fields", JSON, nullable=False),
        sa.Column("splits", JSON, nullable=False),
        sa.Column("stats", JSON, nullable=False),
        sa.Column("example_count", sa.Integer, nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_versions"),
        sa.ForeignKeyConstraint(
            ["dataset"], ["datasets.name"], ondelete="CASCADE", name="fk_dataset_versions_dataset_datasets"
        ),
    )
    op.create_index("ix_dataset_versions_dataset_created_at", "dataset_versions", ["dataset", "created_at"])
    op.create_table(
        "dataset_examples",
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("example_hash", sa.String(64), nullable=False),
        sa.Column("split", sa.String(64), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.PrimaryKeyConstraint("version_id", "position", name="pk_dataset_examples"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            ondelete="CASCADE",
            name="fk_dataset_examples_version_id_dataset_versions",
        ),
    )


def downgrade() -> None:
    for table in (
        "dataset_examples",
        "dataset_versions",
        "datasets",
        "executions",
        "program_versions",
        "programs",
    ):
        op.drop_table(table)
