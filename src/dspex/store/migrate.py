"""Bring a database to the schema this dspex expects, safely when many processes start at once.

The current revision is read with one query; Alembic is imported and run only when the database is
behind. The upgrade runs inside a write transaction that holds the database's write lock (``BEGIN
IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), and re-reads the revision under it, so
concurrent starters migrate exactly once.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dspex.errors import ConfigurationError
from dspex.store._engine import Database

__all__ = ["HEAD", "current_revision", "upgrade"]

HEAD = "0015"
_MIGRATIONS = Path(__file__).parent / "migrations"
_ORDER = (
    "0001",
    "0002",
    "0003",
    "0004",
    "0005",
    "0006",
    "0007",
    "0008",
    "0009",
    "0010",
    "0013",
    "0014",
    "0015",
)
_PG_LOCK_KEY = 0x64737065  # "dspe": one advisory lock id for dspex migrations


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database, or None for an empty one."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _check_known(revision: str | None) -> None:
    if revision is not None and revision not in _ORDER:
        raise ConfigurationError(
            f"the database is at schema revision {revision!r}, which this dspex does not know "
            f"(it knows up to {HEAD!r}); upgrade dspex or point DSPEX_DATABASE_URL at another database"
        )


def upgrade(db: Database) -> None:
    """Migrate ``db`` to :data:`HEAD` if it is behind; a no-op costing one query otherwise."""
    with db.read() as connection:
        revision = current_revision(connection)
    _check_known(revision)
    if revision == HEAD:
        return
    from alembic import command
    from alembic.config import Config

    with db.write() as connection:
        if db.dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        revision = current_revision(connection)
        _check_known(revision)
        if revision == HEAD:
            return
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, HEAD)
