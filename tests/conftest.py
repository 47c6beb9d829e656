"""Every test gets its own home directory and offline-safe process settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DSPEX_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for name in ("DSPEX_LM", "DSPEX_API_BASE", "DSPEX_API_KEY", "DSPEX_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    # The price map DSPy consults would otherwise try a 5 s remote fetch on the first call.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return home


def _postgres_url(base: str, schema: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file always; PostgreSQL when DSPEX_TEST_POSTGRES_URL is set.

    Each PostgreSQL test gets its own schema, dropped afterwards, so tests never see each other's rows.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dspex.db'}"
        return
    base = os.environ.get("DSPEX_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set DSPEX_TEST_POSTGRES_URL to run storage tests on PostgreSQL")
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield _postgres_url(base, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def settings_sim(sim_lm_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The session's simulated LM server, configured as the settings LM (``DSPEX_LM`` and friends).

    Uncached and without retries, so every run makes exactly one request the test can count.
    """
    monkeypatch.setenv("DSPEX_LM", "openai/sim-medium")
    monkeypatch.setenv("DSPEX_API_BASE", sim_lm_server.url)
    monkeypatch.setenv("DSPEX_API_KEY", "sim")
    monkeypatch.setenv("DSPEX_LM_CACHE", "false")
    monkeypatch.setenv("DSPEX_NUM_RETRIES", "0")
    return sim_lm_server


# Fixtures that start a Ray cluster: their tests run on one pytest-xdist worker (``--dist loadgroup``), so
# that two local clusters never share the machine's two cores.
_RAY_FIXTURES = frozenset({"ray_cluster", "ray_head"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _RAY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("ray"))
