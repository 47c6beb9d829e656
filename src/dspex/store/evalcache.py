"""The evaluation cache in the store: evaluations an optimizer paid for, kept across processes.

Table ``evaluation_cache``: one row per (configuration id, example hash), the
:class:`~dspex.optimize.cache.CachedResult` as JSON (``{"v": 1, "prediction", "scores", "feedback",
"duration_ms", "trace"?}``) and when it was written. The configuration id names everything that decides
the prediction (the program's class and saved state, i.e. instructions and demos per predictor, and the
LM with its settings); the example hash is the content hash of the inputs (and labels, for the
evaluator). A row is written once the prediction exists, so a worker killed mid-run loses only the calls
in flight; the next worker finds the rest here. Failed calls are never stored.

It deals in JSON; :class:`dspex.optimize.cache.StoredCache` puts the
:class:`~dspex.optimize.cache.EvalCache` protocol on it, so it serves the
:class:`~dspex.optimize.Evaluator` (and the holistic optimizer) as well as the DSPy optimizer jobs. Rows
never expire by themselves: a configuration's prediction does not go stale; :meth:`purge` drops rows
older than a date, :meth:`clear` the rows of configuration ids with a prefix. ::

    cache = EvaluationCacheRepository(app.db)
    cache.put_many({("cfg", "ex"): {"v": 1, "prediction": {"answer": "4"}, "scores": {}}})
    cache.get_many([("cfg", "ex")])        # {("cfg", "ex"): {"v": 1, "prediction": ...}}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.store._engine import Database
from dspex.store._time import utcnow
from dspex.store.schema import evaluation_cache

__all__ = ["EvaluationCacheRepository"]

Key = tuple[str, str]  # (configuration id, example hash)
_READ_CHUNK = 500  # keys per SELECT: far below SQLite's and PostgreSQL's bound-parameter limits


class EvaluationCacheRepository:
    """Reads and writes ``evaluation_cache``. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get_many(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        """The stored results for ``keys``; unknown keys are absent."""
        c = evaluation_cache.c
        wanted = list(dict.fromkeys(keys))
        found: dict[Key, dict[str, Any]] = {}
        with self.db.read() as connection:
            for start in range(0, len(wanted), _READ_CHUNK):
                chunk = wanted[start : start + _READ_CHUNK]
                rows = connection.execute(
                    sa.select(c.configuration_id, c.example_hash, c.result).where(
                        sa.tuple_(c.configuration_id, c.example_hash).in_(chunk)
                    )
                )
                for configuration_id, example, result in rows:
                    found[(configuration_id, example)] = dict(result)
        return found

    def get(self, key: Key) -> dict[str, Any] | None:
        """One stored result, or None."""
        return self.get_many([key]).get(key)

    def put_many(self, entries: Mapping[Key, Mapping[str, Any]]) -> None:
        """Store (or replace) results, in one transaction."""
        if not entries:
            return
        now = utcnow()
        rows = [
            {"configuration_id": cid, "example_hash": example, "result": dict(result), "created_at": now}
            for (cid, example), result in entries.items()
        ]
        insert = (postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert)(evaluation_cache)
        statement = insert.on_conflict_do_update(
            index_elements=["configuration_id", "example_hash"],
            set_={"result": insert.excluded.result, "created_at": insert.excluded.created_at},
        )
        with self.db.write() as connection:
            connection.execute(statement, rows)

    def count(self, prefix: str | None = None) -> int:
        """Rows stored (whose configuration id starts with ``prefix``)."""
        query = sa.select(sa.func.count()).select_from(evaluation_cache)
        if prefix is not None:
            query = query.where(evaluation_cache.c.configuration_id.startswith(prefix, autoescape=True))
        with self.db.read() as connection:
            return int(connection.execute(query).scalar_one())

    def clear(self, prefix: str | None = None) -> int:
        """Delete every row (whose configuration id starts with ``prefix``); returns how many."""
        statement = sa.delete(evaluation_cache)
        if prefix is not None:
            statement = statement.where(
                evaluation_cache.c.configuration_id.startswith(prefix, autoescape=True)
            )
        with self.db.write() as connection:
            return int(connection.execute(statement).rowcount)

    def purge(self, older_than: dt.datetime) -> int:
        """Delete rows written before ``older_than``; returns how many."""
        with self.db.write() as connection:
            deleted = connection.execute(
                sa.delete(evaluation_cache).where(evaluation_cache.c.created_at < older_than)
            )
            return int(deleted.rowcount)
