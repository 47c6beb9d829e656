"""Security and record integrity: an audit trail of production changes, and recorder leases.

- ``audit_events``: who registered, replaced, promoted or rolled back a program (key id, time, the
  version before and after).
- ``recorders``: each process that records runs holds a lease it renews from its writer thread; a
  ``running`` execution whose recorder's lease has expired is abandoned, on any host, whatever its pid.
  ``executions.recorder_id`` names the recorder of a run.
- ``programs.durability``: ``async`` or ``sync`` per program (``None``: the settings' default).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(36), nullable=False),
        _when("at"),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("program", sa.String(200), nullable=True),
        sa.Column("before_version", sa.String(64), nullable=True),
        sa.Column("after_version", sa.String(64), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_program_at", "audit_events", ["program", "at"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_table(
        "recorders",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        _when("started_at"),
        _when("heartbeat_at"),
        _when("lease_expires_at"),
        _when("closed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recorders"),
    )
    op.create_index("ix_recorders_lease_expires_at", "recorders", ["lease_expires_at"])
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("recorder_id", sa.String(36), nullable=True))
        batch.create_index("ix_executions_status_recorder_id", ["status", "recorder_id"])
    with op.batch_alter_table("programs") as batch:
        batch.add_column(sa.Column("durability", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("programs") as batch:
        batch.drop_column("durability")
    with op.batch_alter_table("executions") as batch:
        batch.drop_index("ix_executions_status_recorder_id")
        batch.drop_column("recorder_id")
    op.drop_index("ix_recorders_lease_expires_at", table_name="recorders")
    op.drop_table("recorders")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_audit_events_program_at", table_name="audit_events")
    op.drop_table("audit_events")
