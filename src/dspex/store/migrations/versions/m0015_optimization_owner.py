"""The owner of a shared optimization run, and until when its lease holds: one owner per run.

``optimizations.owner`` names the driver process that owns the run (``host/pid/place/nonce``, see
:mod:`dspex.distributed.drivers`): the one that saves its version and records its result. It is taken in
one write transaction (:meth:`~dspex.store.optimizations.OptimizationRepository.claim_owner`), renewed
while the owner lives (``owner_lease_expires_at``) and cleared when it ends; a second owner of a run whose
owner is alive gets a clear error (it should join instead). NULL in both for runs of a single driver, or
before this revision.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04

Migrations are append-only: never edit one that has been released; add a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("optimizations", sa.Column("owner", sa.String(200), nullable=True))
    op.add_column(
        "optimizations", sa.Column("owner_lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("optimizations") as batch:
        batch.drop_column("owner_lease_expires_at")
        batch.drop_column("owner")
