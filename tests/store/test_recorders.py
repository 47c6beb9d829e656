"""Recorders and their leases: a running record of a dead recorder is abandoned on any host, whatever pid
now lives there; a live recorder's runs are left alone."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dspex.store import open_database
from dspex.store.executions import ExecutionRepository, current_runner, utcnow
from dspex.store.recorders import RecorderRepository
from dspex.store.schema import recorders
from dspex.store.writer import ExecutionWriter


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    database = open_database(database_url)
    yield database
    database.dispose()


def _running(execution_id: str, recorder_id: str | None, runner: str) -> dict[str, Any]:
    return {
        "id": execution_id,
        "program": "qa",
        "status": "running",
        "inputs": {},
        "started_at": utcnow() - dt.timedelta(seconds=5),
        "runner": runner,
        "cache_hit": False,
        "recorder_id": recorder_id,
    }


def _expire(db: Any, recorder_id: str) -> None:
    with db.write() as connection:
        connection.execute(
            sa.update(recorders)
            .where(recorders.c.id == recorder_id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def test_an_expired_lease_abandons_even_when_its_host_and_pid_are_alive(db: Any) -> None:
    repo, recs = ExecutionRepository(db), RecorderRepository(db)
    # This very process (alive) under this host: a pid check would keep the run "running" for ever,
    # which is what happens when a restarted container reuses both.
    dead, live = recs.register(lease_s=60), recs.register(lease_s=60)
    _expire(db, dead)
    repo.upsert([_running("orphan", dead, current_runner()), _running("busy", live, current_runner())])
    assert repo.mark_abandoned() == ["orphan"]
    record = repo.get("orphan")
    assert record is not None
    assert record.status == "abandoned"
    assert record.error is not None
    assert dead in record.error["message"]
    assert "lease" in record.error["message"]
    busy = repo.get("busy")
    assert busy is not None
    assert busy.status == "running"


def test_a_closed_or_missing_recorder_abandons_on_any_host(db: Any) -> None:
    repo, recs = ExecutionRepository(db), RecorderRepository(db)
    closed = recs.register(lease_s=60)
    recs.close(closed)
    record = recs.get(closed)
    assert record is not None
    assert not record.live()
    assert not recs.renew(closed, 60)
    repo.upsert(
        [
            _running("closed", closed, "another-host:1"),
            _running("missing", "00000000-0000-0000-0000-000000000000", "another-host:2"),
        ]
    )
    assert sorted(repo.mark_abandoned()) == ["closed", "missing"]


def test_rows_without_a_recorder_keep_the_pid_rule(db: Any) -> None:
    repo = ExecutionRepository(db)
    host = socket.gethostname()
    repo.upsert([_running("old-dead", None, f"{host}:999999"), _running("old-live", None, current_runner())])
    repo.upsert([_running("elsewhere", None, "another-host:1")])
    assert repo.mark_abandoned(is_alive=lambda pid: pid == os.getpid()) == ["old-dead"]


def test_the_writer_registers_renews_and_closes_its_recorder(db: Any) -> None:
    repo, recs = ExecutionRepository(db), RecorderRepository(db)
    writer = ExecutionWriter(repo, recorders=recs, lease_s=1.5)  # renewed every 0.5 s
    assert writer.recorder_id is not None
    first = recs.get(writer.recorder_id)
    assert first is not None
    assert first.live()
    assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
    writer.submit(_running("mine", None, current_runner()))
    assert writer.flush()
    mine = repo.get("mine")
    assert mine is not None
    assert mine.recorder_id == writer.recorder_id
    deadline = time.monotonic() + 10
    while (now := recs.get(writer.recorder_id)) is not None and now.heartbeat_at == first.heartbeat_at:
        assert time.monotonic() < deadline, "the lease was not renewed"
        time.sleep(0.05)
    assert now is not None
    assert now.lease_expires_at > first.lease_expires_at
    assert repo.mark_abandoned() == []  # renewed: its running row is left alone
    writer.close()
    closed = recs.get(writer.recorder_id)
    assert closed is not None
    assert closed.closed_at is not None
    assert repo.mark_abandoned() == ["mine"]


def test_the_writer_sweeps_dead_recorders_periodically(db: Any) -> None:
    repo, recs = ExecutionRepository(db), RecorderRepository(db)
    dead = recs.register(lease_s=60)
    _expire(db, dead)
    repo.upsert([_running("orphan", dead, "gone:1")])
    writer = ExecutionWriter(repo, recorders=recs, lease_s=1.5)
    try:
        deadline = time.monotonic() + 10
        while (record := repo.get("orphan")) is not None and record.status == "running":
            assert time.monotonic() < deadline, "the sweep did not run"
            time.sleep(0.05)
        assert record is not None
        assert record.status == "abandoned"
    finally:
        writer.close()


def test_prune_removes_old_ended_recorders(db: Any) -> None:
    recs = RecorderRepository(db)
    old, fresh = recs.register(lease_s=60), recs.register(lease_s=60)
    recs.close(old)
    assert recs.prune(utcnow() + dt.timedelta(seconds=1)) == 1
    assert recs.get(old) is None
    assert recs.get(fresh) is not None
