"""A partial index of the runs that did not succeed, by status and start: the dashboard's and the API's
"failed runs" listings and counts read it instead of every row.

Only ``failed``, ``cancelled`` and ``abandoned`` rows enter it (a few percent of runs in a healthy
service), so a run that succeeds pays nothing for it, and a running row does not enter and leave it.
Queries spell the same condition as a literal (see ``ExecutionFilter.where``) so planners can use it.

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0010"
branch_labels = None
depends_on = None

CONDITION = "status IN ('failed', 'cancelled', 'abandoned')"


def upgrade() -> None:
    where = sa.text(CONDITION)
    op.create_index(
        "ix_executions_unsuccessful_started_at",
        "executions",
        ["status", "started_at"],
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_executions_unsuccessful_started_at", table_name="executions")
