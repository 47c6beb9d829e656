"""The service: durable jobs, API keys, the program-level cache, and a cache TTL per program.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        _when("run_after"),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        _when("lease_expires_at", nullable=True),
        _when("heartbeat_at", nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("progress", JSON, nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_by", sa.String(200), nullable=True),
        _when("created_at"),
        _when("started_at", nullable=True),
        _when("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_jobs_status"
        ),
    )
    op.create_index("ix_jobs_status_run_after", "jobs", ["status", "run_after"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", JSON, nullable=False),
        sa.Column("programs", JSON, nullable=True),
        _when("created_at"),
        _when("revoked_at", nullable=True),
        _when("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_table(
        "program_cache",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("outputs", JSON, nullable=False),
        sa.Column("execution_id", sa.String(36), nullable=True),
        _when("created_at"),
        _when("expires_at"),
        sa.PrimaryKeyConstraint("key", name="pk_program_cache"),
    )
    op.create_index("ix_program_cache_expires_at", "program_cache", ["expires_at"])
    op.create_index("ix_program_cache_program", "program_cache", ["program"])
    op.add_column("programs", sa.Column("cache_ttl_s", sa.Integer, nullable=True))
    # A cancelled optimization job leaves its run "cancelled" (it can be resumed by id).
    with op.batch_alter_table("optimizations") as batch:
        batch.drop_constraint("ck_optimizations_status", type_="check")
        batch.create_check_constraint(
            "ck_optimizations_status", "status IN ('running', 'succeeded', 'failed', 'cancelled')"
        )


def downgrade() -> None:
    with op.batch_alter_table("optimizations") as batch:
        batch.drop_constraint("ck_optimizations_status", type_="check")
        batch.create_check_constraint(
            "ck_optimizations_status", "status IN ('running', 'succeeded', 'failed')"
        )
    with op.batch_alter_table("programs") as batch:
        batch.drop_column("cache_ttl_s")
    op.drop_table("program_cache")
    op.drop_table("api_keys")
    op.drop_table("jobs")
