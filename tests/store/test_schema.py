from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dspex import ConfigurationError
from dspex.store._engine import Database
from dspex.store.executions import ExecutionRepository
from dspex.store.migrate import _MIGRATIONS, HEAD, current_revision, upgrade
from dspex.store.schema import metadata


def test_head_constant_matches_the_migration_scripts() -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_migrated_database_matches_the_declared_schema(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    with db.read() as connection:
        assert current_revision(connection) == HEAD
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        columns = {c["name"] for c in sa.inspect(connection).get_columns("executions")}
    assert {"inputs", "outputs", "status", "trace", "usage", "cost_usd", "runner", "version_id"} <= columns
    db.dispose()


def test_upgrade_is_idempotent_and_refuses_unknown_revisions(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    upgrade(db)
    with db.write() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigurationError, match="revision '9999', which this dspex does not know"):
        upgrade(db)
    db.dispose()


def test_bare_postgresql_scheme_uses_psycopg() -> None:
    assert Database("postgresql://postgres@127.0.0.1/test").url.drivername == "postgresql+psycopg"


def test_sqlite_is_tuned(tmp_path: object) -> None:
    db = Database(f"sqlite:///{tmp_path}/tuned.db")
    with db.read() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "page_size")
        }
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "page_size": 16384}
    db.dispose()


def test_an_existing_sqlite_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as old:  # as SQLite creates one by default
        old.execute("PRAGMA page_size = 4096")
        old.execute("PRAGMA journal_mode = WAL")
        old.execute("CREATE TABLE t (x)")
        old.commit()
    db = Database(f"sqlite:///{path}")
    upgrade(db)  # the schema goes in beside what was there, in 4 KiB pages
    with db.read() as connection:
        assert connection.exec_driver_sql("PRAGMA page_size").scalar() == 4096
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert ExecutionRepository(db).count() == 0
    db.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "invalid database URL"),
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://postgres@localhost/test", "psycopg 3 driver"),
    ],
)
def test_bad_urls_say_what_to_use(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Database(url)
