from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dspex import ConfigurationError
from dspex.settings import Settings
from dspex.store import open_database
from dspex.store.executions import ExecutionFilter, ExecutionRepository, current_runner, utcnow

WORKER = Path(__file__).with_name("recording_worker.py")


def _row(i: int, **overrides: Any) -> dict[str, Any]:
    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    row: dict[str, Any] = {
        "id": f"e{i:04d}",
        "program": "qa" if i % 2 == 0 else "summarise",
        "version_id": "v1" if i < 10 else "v2",
        "status": "failed" if i % 5 == 0 else "succeeded",
        "inputs": {"question": f"q{i}"},
        "outputs": {"answer": "a"},
        "error": None,
        "started_at": started,
        "ended_at": started + dt.timedelta(milliseconds=10 * (i + 1)),
        "duration_ms": 10.0 * (i + 1),
        "usage": {"m": {"total_tokens": 100}},
        "total_tokens": 100,
        "cost_usd": 0.001 * i,
        "variables": None,
        "trace": {"v": 1, "spans": []},
        "cache_hit": False,
        "runner": "elsewhere:1",
    }
    row.update(overrides)
    return row


@pytest.fixture
def repo(database_url: str) -> Any:
    db = open_database(database_url)
    yield ExecutionRepository(db)
    db.dispose()


def test_filters_combine(repo: ExecutionRepository) -> None:
    repo.upsert([_row(i) for i in range(20)])
    assert repo.count() == 20
    assert {r.program for r in repo.find(ExecutionFilter(program="qa"))} == {"qa"}
    assert repo.count(ExecutionFilter(program="qa", version_id="v2")) == 5
    assert repo.count(ExecutionFilter(status="failed")) == 4
    assert repo.count(ExecutionFilter(min_cost_usd=0.015)) == 5
    assert repo.count(ExecutionFilter(max_duration_ms=50)) == 5
    since = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.UTC)
    until = dt.datetime(2026, 1, 1, 0, 15, tzinfo=dt.UTC)
    found = repo.find(ExecutionFilter(since=since, until=until))
    assert [r.id for r in found] == ["e0014", "e0013", "e0012", "e0011", "e0010"]  # newest first
    assert found[0].started_at.tzinfo is not None
    assert repo.find(limit=3, offset=18)[0].id == "e0001"


def test_upsert_replaces_a_running_row(repo: ExecutionRepository) -> None:
    repo.upsert([_row(1, status="running", outputs=None, ended_at=None)])
    repo.upsert([_row(1, status="succeeded")])
    record = repo.get("e0001")
    assert record is not None
    assert record.status == "succeeded"
    assert record.outputs == {"answer": "a"}
    assert repo.count() == 1


def test_an_upsert_of_many_rows_keeps_each_row_and_ended_rows_win(repo: ExecutionRepository) -> None:
    # More rows than one SQLite statement takes (they go in several), with rows of every shape.
    repo.upsert([_row(i, status="succeeded") for i in range(5)])
    batch = [_row(i, status="running", outputs=None, ended_at=None) for i in range(450)]
    batch[7] = _row(7, status="failed", error={"type": "X", "message": "m"}, variables={"t": 0.5})
    repo.upsert(batch)
    assert repo.count() == 450
    for i in range(5):  # a running row never replaces an ended one, whichever statement carries it
        record = repo.get(f"e{i:04d}")
        assert record is not None
        assert record.status == "succeeded"
        assert record.outputs == {"answer": "a"}
    late = repo.get("e0449")
    assert late is not None
    assert late.status == "running"
    assert late.inputs == {"question": "q449"}
    failed = repo.get("e0007")
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error == {"type": "X", "message": "m"}
    assert failed.variables == {"t": 0.5}
    assert failed.started_at == dt.datetime(2026, 1, 1, 0, 7, tzinfo=dt.UTC)


def test_stats_per_program_version(repo: ExecutionRepository) -> None:
    repo.upsert([_row(i, program="qa") for i in range(10)])
    (stats,) = repo.stats(ExecutionFilter(program="qa"))
    assert (stats.program, stats.version_id, stats.count) == ("qa", "v1", 10)
    assert (stats.succeeded, stats.failed) == (8, 2)
    assert stats.error_rate == pytest.approx(0.2)
    assert stats.p50_ms == pytest.approx(55.0)
    assert stats.p99_ms is not None
    assert 99.0 <= stats.p99_ms <= 100.0
    assert stats.total_tokens == 1000
    assert stats.cost_usd == pytest.approx(0.045)


def test_retention_by_age_count_and_trace_only(repo: ExecutionRepository) -> None:
    repo.upsert([_row(i, program="qa") for i in range(10)] + [_row(10, program="qa", status="running")])
    cutoff = dt.datetime(2026, 1, 1, 0, 3, tzinfo=dt.UTC)
    assert repo.prune(older_than=cutoff, traces_only=True) == 3
    assert repo.count() == 11
    assert repo.get("e0000").trace is None  # type: ignore[union-attr]
    assert repo.get("e0003").trace == {"v": 1, "spans": []}  # type: ignore[union-attr]
    assert repo.prune(older_than=cutoff) == 3
    assert repo.prune(keep_per_program=4) == 3  # the newest four ended runs stay
    remaining = {r.id for r in repo.find()}
    assert remaining == {"e0006", "e0007", "e0008", "e0009", "e0010"}  # the running one is never pruned
    assert repo.prune() == 0


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_a_killed_process_leaves_an_abandoned_record(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = open_database(database_url)
    repo = ExecutionRepository(db)
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), database_url, str(home), "1", "60"],
            stdout=log,
            stderr=log,
            env={**os.environ, "DSPEX_RECORDER_LEASE_S": "1"},
        )
        try:
            _wait_for(lambda: repo.count(ExecutionFilter(status="running")) == 1)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
    (running,) = repo.find(ExecutionFilter(status="running"))
    assert running.runner.endswith(f":{worker.pid}")
    assert running.recorder_id is not None
    # The recorder's lease (1 s) runs out: then, and only then, the run is abandoned.
    _wait_for(lambda: repo.mark_abandoned() == [running.id], timeout=10)
    record = repo.get(running.id)
    assert record is not None
    assert record.status == "abandoned"
    assert record.error is not None
    assert "stopped renewing its lease without recording a result" in record.error["message"]
    assert repo.mark_abandoned() == []
    db.dispose()


def test_live_runners_are_not_abandoned(repo: ExecutionRepository) -> None:
    repo.upsert([_row(1, status="running", runner=current_runner())])
    assert repo.mark_abandoned() == []
    assert repo.mark_abandoned(is_alive=lambda pid: pid != os.getpid()) == ["e0001"]


def test_eight_processes_record_into_one_database(database_url: str, tmp_path: Path) -> None:
    runs = 500
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), database_url, str(tmp_path / f"home{k}"), str(runs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(8)
    ]
    failures = []
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        if worker.returncode != 0 or "locked" in err:
            failures.append(err[-2000:])
    assert failures == []
    db = open_database(database_url)
    repo = ExecutionRepository(db)
    assert repo.count() == 8 * runs
    assert repo.count(ExecutionFilter(status="succeeded")) == 8 * runs
    assert len({r.runner for r in repo.find(limit=8 * runs)}) == 8
    db.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_records_its_own_runner() -> None:
    parent = current_runner()  # read once and kept: the child must not inherit it
    assert parent.endswith(f":{os.getpid()}")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its runner and leave at once
        os.close(read)
        os.write(write, f"{current_runner()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child, child_pid = pipe.read().split()
    os.waitpid(pid, 0)
    assert child == f"{parent.rsplit(':', 1)[0]}:{child_pid}"
    assert current_runner() == parent


def test_app_marks_dead_runs_abandoned_when_it_opens(database_url: str, tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = current_runner().rsplit(":", 1)[0]
    db = open_database(database_url)
    ExecutionRepository(db).upsert(
        [_row(1, status="running", runner=f"{host}:{dead.stdout.strip()}", started_at=utcnow())]
    )
    db.dispose()
    from dspex.runtime import App

    with App(Settings.load(database_url=database_url, home=tmp_path / "home"), lm=object()) as app:
        assert app.executions.get("e0001").status == "abandoned"  # type: ignore[union-attr]
        assert app.abandoned == ["e0001"]


def test_get_by_unique_prefix(repo: ExecutionRepository) -> None:
    repo.upsert([_row(1, id="abcdef01-aaaa"), _row(2, id="abcdef02-bbbb"), _row(3, id="a_c%ef03-cccc")])
    found = repo.get("abcdef01")
    assert found is not None
    assert found.id == "abcdef01-aaaa"
    with pytest.raises(ConfigurationError, match="matches several executions"):
        repo.get("abcdef")
    assert repo.get("a_c%ef") is not None  # LIKE wildcards in the prefix are literal
    assert repo.get("abcdzz") is None
    assert repo.get("abc") is None  # too short to be a prefix
