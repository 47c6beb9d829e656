"""One bad row never fails its batch; spilled records come back at the next open; any input is storable."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspex.jsonable import dumps, storable
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store import open_database
from dspex.store.executions import ExecutionRepository
from dspex.store.writer import ExecutionWriter, append_spill, replay_spill
from dspex.testing import ScriptedEngine


def _row(execution_id: str, **overrides: Any) -> dict[str, Any]:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    row: dict[str, Any] = {
        "id": execution_id,
        "program": "qa",
        "version_id": None,
        "status": "succeeded",
        "inputs": {"question": execution_id},
        "outputs": {"answer": "a"},
        "error": None,
        "started_at": now,
        "ended_at": now,
        "duration_ms": 1.0,
        "usage": None,
        "total_tokens": 0,
        "cost_usd": 0.0,
        "variables": None,
        "trace": None,
        "cache_hit": False,
        "runner": "here:1",
    }
    row.update(overrides)
    return row


class _Refusing(ExecutionRepository):
    """A repository whose database refuses rows with a given id, or rows carrying a poisoned payload."""

    def __init__(self, db: Any, *, bad_ids: set[str] | None = None, poison: str | None = None) -> None:
        super().__init__(db)
        self.bad_ids = bad_ids or set()
        self.poison = poison

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            if row["id"] in self.bad_ids:
                raise ValueError(f"the database refuses row {row['id']}")
            if self.poison is not None and self.poison in dumps(row.get("inputs")):
                raise ValueError("the database refuses this payload")
        super().upsert(rows)


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    database = open_database(database_url)
    yield database
    database.dispose()


def test_a_bad_payload_is_stored_reduced_and_its_batch_survives(db: Any, tmp_path: Path) -> None:
    repo = _Refusing(db, poison="POISON")
    writer = ExecutionWriter(repo, linger=10.0, spill_path=tmp_path / "spill.jsonl")
    for i in range(5):
        writer.submit(_row(f"ok-{i}"))
    writer.submit(_row("bad", inputs={"question": "POISON"}, error={"type": "X", "message": "m"}))
    assert writer.flush()
    writer.close()
    plain = ExecutionRepository(db)
    assert {r.id for r in plain.find()} == {"ok-0", "ok-1", "ok-2", "ok-3", "ok-4", "bad"}
    assert all(r.status == "succeeded" for r in plain.find())
    bad = plain.get("bad")
    assert bad is not None
    assert bad.inputs == {"__dropped__": "record_unwritable"}
    assert bad.error is not None
    assert bad.error["code"] == "record_unwritable"
    assert "refuses this payload" in bad.error["message"]
    assert bad.error["original"] == {"type": "X", "message": "m"}
    assert not (tmp_path / "spill.jsonl").exists()


def test_a_row_refused_even_reduced_is_spilled_with_its_reason_then_replayed(db: Any, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    writer = ExecutionWriter(_Refusing(db, bad_ids={"bad"}), linger=10.0, spill_path=spill)
    for execution_id in ("a", "bad", "b"):
        writer.submit(_row(execution_id))
    writer.close()
    plain = ExecutionRepository(db)
    assert {r.id for r in plain.find()} == {"a", "b"}
    (line,) = spill.read_text().splitlines()
    entry = json.loads(line)
    assert entry["row"]["id"] == "bad"
    assert "refuses row bad" in entry["reason"]
    assert spill.stat().st_mode & 0o777 == 0o600

    # Still refused: kept, with the new reason.
    assert replay_spill(_Refusing(db, bad_ids={"bad"}), spill) == (0, 1)
    assert "refuses row bad" in json.loads(spill.read_text())["reason"]
    # The database takes it now: written and the file removed.
    assert replay_spill(plain, spill) == (1, 0)
    assert not spill.exists()
    record = plain.get("bad")
    assert record is not None
    assert record.status == "succeeded"
    assert record.started_at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_spill_file_is_replayed_when_the_next_app_opens(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    spill = home / "unwritten-executions.jsonl"
    append_spill(spill, [(_row("spilled-1"), "database down"), (_row("spilled-2"), "database down")])
    with spill.open("a") as out:  # a line from before reasons were kept: the row itself
        out.write(json.dumps(_row("legacy"), default=str) + "\n")
        out.write("{not json\n")
    with App(Settings(database_url=database_url, home=home)) as app:
        found = app.executions.find()  # opens the store, which replays the file
        assert app.replayed == (3, 1)
        assert {r.id for r in found} == {"spilled-1", "spilled-2", "legacy"}
        (kept,) = spill.read_text().splitlines()
        assert json.loads(kept)["line"] == "{not json"
        assert json.loads(kept)["reason"].startswith("not a record")


def test_a_dead_database_spills_the_whole_batch(db: Any, tmp_path: Path) -> None:
    calls = []

    class _Down(ExecutionRepository):
        def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
            calls.append(len(rows))
            raise ConnectionError("the database is down")

    spill = tmp_path / "spill.jsonl"
    writer = ExecutionWriter(_Down(db), linger=10.0, attempts=2, spill_path=spill)
    for i in range(10):
        writer.submit(_row(f"r{i}"))
    writer.close()
    rows = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [r["row"]["id"] for r in rows] == [f"r{i}" for i in range(10)]
    assert all("database is down" in r["reason"] for r in rows)
    # The whole batch, three rows alone (all fail: the database is blamed), then the batch again.
    assert calls == [10, 1, 1, 1, 10]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**70, str(2**70)),
        (-(2**63), -(2**63)),
        (2**64 - 1, 2**64 - 1),
        (2**64, str(2**64)),
        ("a\x00b", "a\ufffdb"),
        ("x\ud800y\udfff", "x\ufffdy\ufffd"),
        (float("nan"), None),
        (float("-inf"), None),
        ({"k\x00": [True, 1.5]}, {"k\ufffd": [True, 1.5]}),
    ],
)
def test_storable(value: Any, expected: Any) -> None:
    assert storable(value) == expected
    # What the engines write keeps huge integers as numbers; reading records turns them into text.
    assert storable(json.loads(dumps(value))) == expected


def test_a_literal_backslash_u0000_is_kept() -> None:
    assert json.loads(dumps({"s": "\\u0000"})) == {"s": "\\u0000"}


def test_any_input_is_recorded_through_the_app(database_url: str) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: "ok"})
    program = dspy.Predict("question -> answer")
    values = {"big": 2**70, "nul": "a\x00b", "surrogate": "x\ud800", "nan": math.nan, "inf": math.inf}
    with App(Settings(database_url=database_url), lm=engine.lm()) as app:
        ids = []
        for name, value in values.items():
            # The value rides along in variables and inputs (an extra input field fails validation
            # or not; either way the run is recorded).
            try:
                ids.append(app.run(program, {"question": value}, variables={name: value}).execution_id)
            except Exception as exc:
                ids.append(exc.execution_id)  # type: ignore[attr-defined]  # dspex errors carry it
        assert app.flush()
        records = {r.id: r for r in app.executions.find()}
        assert set(records) == set(ids)
        assert records[ids[0]].inputs == {"question": str(2**70)}
        assert records[ids[1]].inputs == {"question": "a\ufffdb"}
        assert records[ids[2]].variables == {"surrogate": "x\ufffd"}
        assert records[ids[3]].inputs == {"question": None}
        assert all(r.status in ("succeeded", "failed") for r in records.values())
