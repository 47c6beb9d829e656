"""Which driver runs a trial, and until when its lease holds: several driver processes share one
optimization.

``optimization_trials.driver`` names the process running the trial (``host/pid/place/nonce``, see
:mod:`dspex.distributed.drivers`); ``lease_expires_at`` is renewed by that process while the trial runs.
A ``running`` trial whose lease has passed (or, on the same machine, whose process is gone) is marked
``failed`` by whichever driver claims the next trial, so its work is redone under a new number. NULL in
both for trials written by a single driver, or before this revision.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("optimization_trials", sa.Column("driver", sa.String(200), nullable=True))
    op.add_column(
        "optimization_trials", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("optimization_trials") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("driver")
