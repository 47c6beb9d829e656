"""A run's start record waits up to ``hold_running`` for its end: a run that ends within it is written
once; one that goes on is written as running after the wait, with no flush; flush() and close() write
waiting start records at once."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex.store._engine import Database
from dspex.store.executions import ExecutionRepository
from dspex.store.migrate import upgrade
from dspex.store.writer import ExecutionWriter


class _Counting(ExecutionRepository):
    """The real repository, counting the rows each upsert was given, by status."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.rows: list[tuple[str, str]] = []

    def upsert(self, rows: Any) -> None:
        self.rows += [(row["id"], row["status"]) for row in rows]
        super().upsert(rows)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[_Counting]:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    upgrade(db)
    yield _Counting(db)
    db.dispose()


def _row(execution_id: str, status: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": execution_id,
        "program": "qa",
        "status": status,
        "inputs": {"question": execution_id},
        "started_at": now,
        "ended_at": None if status == "running" else now,
        "cache_hit": False,
        "runner": "here:1",
    }


def _status(repo: ExecutionRepository, execution_id: str) -> str | None:
    record = repo.get(execution_id)
    return None if record is None else record.status


def test_a_run_that_ends_within_the_wait_is_written_once(repo: _Counting) -> None:
    writer = ExecutionWriter(repo, linger=0.0, hold_running=5.0)
    try:
        writer.submit(_row("a", "running"))
        time.sleep(0.2)  # the writer drained it (linger 0) and keeps it waiting
        assert repo.rows == []
        writer.submit(_row("a", "succeeded"))
        deadline = time.monotonic() + 5
        while not repo.rows and time.monotonic() < deadline:
            time.sleep(0.01)
        assert repo.rows == [("a", "succeeded")]  # without a flush, and never as running
    finally:
        writer.close()
    assert repo.rows == [("a", "succeeded")]


def test_a_run_still_going_after_the_wait_is_written_as_running_without_a_flush(repo: _Counting) -> None:
    writer = ExecutionWriter(repo, linger=0.0, hold_running=0.3)
    try:
        started = time.monotonic()
        writer.submit(_row("b", "running"))
        while _status(repo, "b") is None and time.monotonic() - started < 5:
            time.sleep(0.01)
        waited = time.monotonic() - started
        assert _status(repo, "b") == "running"
        assert 0.25 <= waited < 3  # after its wait, not at once and not only at a flush
        writer.submit(_row("b", "failed"))
        assert writer.flush()
        assert _status(repo, "b") == "failed"
        assert repo.rows == [("b", "running"), ("b", "failed")]
    finally:
        writer.close()


def test_flush_and_close_write_waiting_start_records_at_once(repo: _Counting) -> None:
    writer = ExecutionWriter(repo, linger=0.0, hold_running=60.0)
    writer.submit(_row("c", "running"))
    assert writer.flush(timeout=5)
    assert _status(repo, "c") == "running"
    writer.submit(_row("d", "running"))
    time.sleep(0.1)
    writer.close(timeout=5)
    assert _status(repo, "d") == "running"
