"""The program-level cache: stored outputs for (program version, variable configuration, inputs).

Table ``program_cache``: one row per key, the SHA-256 of the canonical JSON of the program name, the
version id, the variable configuration and the inputs (:func:`cache_key`). ``expires_at`` is set from
the program's TTL when the row is written; an expired row is never served and :meth:`purge` deletes
them. ``execution_id`` names the run whose outputs these are. Every process that shares the database
shares the cache.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.jsonable import canonical_hash
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import program_cache

__all__ = ["CacheEntry", "ProgramCacheRepository", "cache_key"]


def cache_key(
    program: str, version_id: str, variables: Mapping[str, Any] | None, inputs: Mapping[str, Any]
) -> str:
    """The cache key of one run: equal for equal program version, configuration and inputs."""
    return canonical_hash(
        {
            "program": program,
            "version": version_id,
            "variables": dict(variables or {}),
            "inputs": dict(inputs),
        }
    )


class CacheEntry:
    """A cached result: the outputs, the run they came from, and when the entry expires."""

    __slots__ = ("execution_id", "expires_at", "outputs")

    def __init__(self, outputs: dict[str, Any], execution_id: str | None, expires_at: dt.datetime) -> None:
        self.outputs = outputs
        self.execution_id = execution_id
        self.expires_at = expires_at


class ProgramCacheRepository:
    """Reads and writes ``program_cache``. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str, *, now: dt.datetime | None = None) -> CacheEntry | None:
        """The live entry for ``key``, or None (absent or expired)."""
        now = now or utcnow()
        c = program_cache.c
        with self.db.read() as connection:
            row = connection.execute(
                sa.select(c.outputs, c.execution_id, c.expires_at).where(c.key == key, c.expires_at > now)
            ).first()
        if row is None:
            return None
        return CacheEntry(row[0], row[1], aware(row[2]))

    def put(
        self,
        key: str,
        *,
        program: str,
        version_id: str,
        outputs: Mapping[str, Any],
        ttl_s: float,
        execution_id: str | None,
    ) -> None:
        """Store (or replace) the entry for ``key``, live for ``ttl_s`` seconds."""
        now = utcnow()
        values = {
            "key": key,
            "program": program,
            "version_id": version_id,
            "outputs": dict(outputs),
            "execution_id": execution_id,
            "created_at": now,
            "expires_at": now + dt.timedelta(seconds=ttl_s),
        }
        insert = (postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert)(program_cache)
        statement = insert.values(**values).on_conflict_do_update(
            index_elements=["key"], set_={k: v for k, v in values.items() if k != "key"}
        )
        with self.db.write() as connection:
            connection.execute(statement)

    def clear(self, program: str | None = None) -> int:
        """Delete every entry (of ``program``); returns how many."""
        statement = sa.delete(program_cache)
        if program is not None:
            statement = statement.where(program_cache.c.program == program)
        with self.db.write() as connection:
            return int(connection.execute(statement).rowcount)

    def purge(self, *, now: dt.datetime | None = None) -> int:
        """Delete expired entries; returns how many."""
        with self.db.write() as connection:
            deleted = connection.execute(
                sa.delete(program_cache).where(program_cache.c.expires_at <= (now or utcnow()))
            )
            return int(deleted.rowcount)

    def count(self, program: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(program_cache)
        if program is not None:
            query = query.where(program_cache.c.program == program)
        with self.db.read() as connection:
            return int(connection.execute(query).scalar_one())
