"""The SQLite database, its WAL and SHM, the home directory and the spill file are the owner's only."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import dspy

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store.writer import append_spill
from dspex.testing import ScriptedEngine


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run_once(home: Path) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: "ok"})
    with App(Settings(home=home), lm=engine.lm()) as app:
        app.run(dspy.Predict("question -> answer"), {"question": "secret"}, durability="sync")
        # While the connection is open, the WAL and SHM exist.
        assert _mode(home / "dspex.db-wal") == 0o600
        assert _mode(home / "dspex.db-shm") == 0o600


def test_new_files_are_created_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / ".dspex"
    _run_once(home)
    assert _mode(home) == 0o700
    assert _mode(home / "dspex.db") == 0o600


def test_existing_wide_modes_are_tightened(tmp_path: Path) -> None:
    home = tmp_path / ".dspex"
    _run_once(home)
    home.chmod(0o755)
    for name in ("dspex.db", "dspex.db-wal", "dspex.db-shm"):
        if (home / name).exists():
            (home / name).chmod(0o644)
    _run_once(home)
    assert _mode(home) == 0o700
    assert _mode(home / "dspex.db") == 0o600


def test_the_spill_file_is_owner_only(tmp_path: Path) -> None:
    spill = tmp_path / "new-dir" / "unwritten-executions.jsonl"
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    append_spill(spill, [({"id": "x", "started_at": now}, "test")])
    assert _mode(spill) == 0o600
    assert _mode(spill.parent) == 0o700
