"""A database that goes away and comes back: the writer holds records and retries (in order, none lost);
a long outage that fills the buffer moves records to the spill file, which the writer replays itself once
the database answers; a late ``running`` record never reopens an ended run.

The outage is a :class:`Database` whose connections fail with the driver error a stopped server gives;
tests/chaos restarts a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dspex.store import Database
from dspex.store._engine import database_unavailable
from dspex.store.executions import ExecutionRepository
from dspex.store.migrate import upgrade
from dspex.store.spill import append_spill, replay, replay_spill
from dspex.store.writer import ExecutionWriter


class _Flaky(Database):
    """A database that can be switched off: every connection attempt fails as a stopped server's does."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()
        self.refused = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.refused += 1
            raise sa.exc.OperationalError(
                "INSERT", {}, ConnectionRefusedError("connection to server failed: Connection refused")
            )

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        self._check()
        with super().write() as connection:
            yield connection

    def write_many(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        self._check()
        super().write_many(statements)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        self._check()
        with super().read() as connection:
            yield connection

    def ping(self) -> None:
        self._check()
        super().ping()


@pytest.fixture
def db(database_url: str) -> Iterator[_Flaky]:
    database = _Flaky(database_url)
    upgrade(database)
    yield database
    database.dispose()


def _row(execution_id: str, status: str = "succeeded") -> dict[str, Any]:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return {
        "id": execution_id,
        "program": "qa",
        "status": status,
        "inputs": {"question": execution_id},
        "outputs": None if status == "running" else {"answer": "a"},
        "started_at": now,
        "ended_at": None if status == "running" else now,
        "cache_hit": False,
        "runner": "here:1",
    }


def _statuses(db: Database) -> dict[str, str]:
    return {r.id: r.status for r in ExecutionRepository(db).find(limit=10_000)}


def test_connection_errors_count_as_an_outage_and_refusals_do_not() -> None:
    refused = sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    assert database_unavailable(refused)
    assert not database_unavailable(sa.exc.IntegrityError("INSERT", {}, ValueError("duplicate key")))
    assert not database_unavailable(ValueError("the database refuses this payload"))


def test_an_outage_holds_the_records_and_writes_them_in_order_when_the_database_is_back(
    db: _Flaky, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    writer = ExecutionWriter(ExecutionRepository(db), linger=0.0, attempts=2, spill_path=spill)
    db.down.set()
    writer.submit(_row("a", "running"))
    writer.submit(_row("b", "running"))
    assert not writer.flush(timeout=0.5)  # held, well past its two attempts: an outage is not a refusal
    writer.submit(_row("a"))  # ends while the database is down, behind its start record
    db.down.clear()
    assert writer.flush(timeout=10)
    assert _statuses(db) == {"a": "succeeded", "b": "running"}
    assert writer.outages == 1
    assert writer.spilled == 0
    assert not spill.exists()
    writer.close()


def test_a_full_buffer_during_an_outage_spills_in_order_then_the_writer_replays_it(
    db: _Flaky, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    # hold_running=0: every start record goes out as it comes, so the order of distinct records shows.
    writer = ExecutionWriter(
        ExecutionRepository(db),
        linger=0.0,
        max_queue=5,
        batch_size=2,
        max_backoff=0.05,
        spill_path=spill,
        hold_running=0.0,
    )
    db.down.set()
    for i in range(12):  # callers are never blocked for long: the overflow goes to the spill file
        writer.submit(_row(f"r{i}", "running"))
    for i in range(12):
        writer.submit(_row(f"r{i}"))
    assert writer.flush(timeout=10)  # everything is written or spilled
    assert writer.spilling
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert lines[0]["reason"] == "the database was unavailable"
    assert [(e["row"]["id"], e["row"]["status"]) for e in lines][:2] == [("r0", "running"), ("r1", "running")]
    db.down.clear()
    writer.submit(_row("after"))
    assert writer.flush(timeout=10)
    assert not writer.spilling
    assert not spill.exists()
    statuses = _statuses(db)
    assert statuses == {**{f"r{i}": "succeeded" for i in range(12)}, "after": "succeeded"}
    assert writer.replayed == writer.spilled > 0
    writer.close()


def test_closing_during_an_outage_spills_what_is_held(db: _Flaky, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    writer = ExecutionWriter(ExecutionRepository(db), linger=10.0, attempts=2, spill_path=spill)
    db.down.set()
    for i in range(3):
        writer.submit(_row(f"r{i}"))
    writer.close(timeout=10)
    assert [json.loads(line)["row"]["id"] for line in spill.read_text().splitlines()] == ["r0", "r1", "r2"]
    db.down.clear()
    assert replay_spill(ExecutionRepository(db), spill) == (3, 0)
    assert _statuses(db) == {"r0": "succeeded", "r1": "succeeded", "r2": "succeeded"}


def test_a_late_running_record_never_reopens_an_ended_run(db: _Flaky) -> None:
    repo = ExecutionRepository(db)
    repo.upsert([_row("a")])
    repo.upsert([_row("a", "running")])
    assert _statuses(db) == {"a": "succeeded"}
    repo.upsert([_row("b", "running")])
    repo.upsert([_row("b", "failed")])
    assert _statuses(db) == {"a": "succeeded", "b": "failed"}


def test_a_replay_keeps_order_and_stops_at_an_outage_keeping_the_untried_lines(
    db: _Flaky, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    rows = [_row("a", "running"), _row("a"), _row("b", "running"), _row("a", "running")]
    append_spill(spill, [(row, "the database was unavailable") for row in rows])
    db.down.set()
    written, kept, stopped = replay(ExecutionRepository(db), spill)
    assert (written, kept) == (0, 4)
    assert stopped is not None
    assert database_unavailable(stopped)
    assert len(spill.read_text().splitlines()) == 4
    db.down.clear()
    assert replay_spill(ExecutionRepository(db), spill) == (4, 0)
    assert _statuses(db) == {"a": "succeeded", "b": "running"}
    assert not spill.exists()
