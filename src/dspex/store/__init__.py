"""Persistence: SQLAlchemy 2 Core on SQLite (the embedded default) or PostgreSQL, migrated by Alembic.

Nothing above this package writes SQL; it goes through the repositories here. ::

    db = open_database("sqlite:///.dspex/dspex.db")   # migrated to the current schema
"""

from __future__ import annotations

from dspex.store._engine import Database
from dspex.store.migrate import HEAD, upgrade

__all__ = ["HEAD", "Database", "open_database"]


def open_database(url: str) -> Database:
    """Open the database at ``url`` and bring its schema up to date."""
    db = Database(url)
    upgrade(db)
    return db
