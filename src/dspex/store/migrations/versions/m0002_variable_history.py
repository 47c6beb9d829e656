"""Variable history: one row per change of a variable's value.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "variable_changes",
        # BIGINT identity on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("variable", sa.String(200), nullable=False),
        sa.Column("old", JSON, nullable=True),
        sa.Column("new", JSON, nullable=True),
        sa.Column("changed_by", sa.String(200), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("configuration_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_variable_changes"),
    )
    op.create_index("ix_variable_changes_scope_variable_id", "variable_changes", ["scope", "variable", "id"])
    op.create_index("ix_variable_changes_scope_changed_at", "variable_changes", ["scope", "changed_at"])


def downgrade() -> None:
    op.drop_table("variable_changes")
