"""Paging the record by cursor, bounded counts, the cache-hit and id-prefix filters, the partial index of
unsuccessful runs, and planner statistics (what the dashboard's executions page relies on)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dspex.store import open_database
from dspex.store.executions import ExecutionFilter, ExecutionRepository
from dspex.store.schema import executions

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _row(i: int, started: dt.datetime | None = None) -> dict[str, Any]:
    started = started or T0 + dt.timedelta(seconds=i)
    return {
        "id": f"r{i:04d}",
        "program": "qa",
        "version_id": "v1",
        "status": "failed" if i % 4 == 0 else "succeeded",
        "inputs": {"i": i},
        "outputs": {},
        "started_at": started,
        "ended_at": started,
        "duration_ms": 1.0,
        "cache_hit": i % 3 == 0,
        "runner": "host:1",
    }


@pytest.fixture
def repo(database_url: str) -> Iterator[ExecutionRepository]:
    db = open_database(database_url)
    repository = ExecutionRepository(db)
    # 30 rows a second apart, and 5 more sharing one start time: the id breaks the tie.
    tied = T0 + dt.timedelta(seconds=100)
    repository.upsert([_row(i) for i in range(30)] + [_row(i, tied) for i in range(30, 35)])
    yield repository
    db.dispose()


def test_cursor_pages_cover_every_row_once_in_order(repo: ExecutionRepository) -> None:
    everything = [r.id for r in repo.find(limit=100)]
    assert len(everything) == 35
    seen: list[str] = []
    page = repo.find(limit=4)
    while page:
        seen += [r.id for r in page]
        last = page[-1]
        page = repo.find(limit=4, before=(last.started_at, last.id))
    assert seen == everything  # ties on started_at included, none repeated
    # Back towards the newest from the middle: the same rows, newest first.
    middle = repo.find(limit=4, offset=12)
    newer = repo.find(limit=4, after=(middle[0].started_at, middle[0].id))
    assert [r.id for r in newer] == everything[8:12]


def test_bounded_counts_and_filters(repo: ExecutionRepository) -> None:
    assert repo.count() == 35
    assert repo.count(limit=10) == 10
    assert repo.count(ExecutionFilter(status="failed"), limit=1000) == repo.count(
        ExecutionFilter(status="failed")
    )
    assert repo.count(ExecutionFilter(cache_hit=True)) == len([i for i in range(35) if i % 3 == 0])
    assert [r.id for r in repo.find(ExecutionFilter(id_prefix="r001"))] == [
        f"r001{i}" for i in range(9, -1, -1)
    ]
    assert repo.find(ExecutionFilter(id_prefix="r%")) == []  # LIKE wildcards are matched literally


def test_unsuccessful_runs_are_read_through_their_partial_index(repo: ExecutionRepository) -> None:
    if repo.db.dialect != "sqlite":
        pytest.skip("the plan is checked on SQLite; PostgreSQL proves the implication itself")
    repo.refresh_statistics()
    query = (
        sa.select(sa.func.count()).select_from(executions).where(*ExecutionFilter(status="failed").where())
    )
    sql = str(query.compile(dialect=repo.db.engine.dialect, compile_kwargs={"literal_binds": True}))
    with repo.db.read() as connection:
        plan = " ".join(str(row) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        stats = connection.exec_driver_sql("SELECT count(*) FROM sqlite_stat1").scalar_one()
    assert "ix_executions_unsuccessful_started_at" in plan
    assert stats > 0
    assert repo.count(ExecutionFilter(status="failed")) == len(range(0, 35, 4))


def test_the_model_filter_finds_the_runs_that_called_a_model(database_url: str) -> None:
    db = open_database(database_url)
    repository = ExecutionRepository(db)
    usage = {
        "m0": {"openai/gpt-4o-mini": {"prompt_tokens": 3, "completion_tokens": 1}},
        "m1": {"openai/gpt-4o": {"prompt_tokens": 3}, "local/llama_3": {"prompt_tokens": 2}},
        "m2": {"local/llama_3": {"prompt_tokens": 5}},
        "m3": None,
        "m4": {"openai/gpt-4o-mini-2": {"prompt_tokens": 1}},  # a longer name that starts the same
    }
    repository.upsert(
        [{**_row(i), "id": key, "usage": value} for i, (key, value) in enumerate(usage.items())]
    )

    def called(model: str) -> list[str]:
        return sorted(r.id for r in repository.find(ExecutionFilter(model=model), limit=10))

    assert called("openai/gpt-4o-mini") == ["m0"]
    assert called("openai/gpt-4o") == ["m1"]
    assert called("local/llama_3") == ["m1", "m2"]
    assert called("local/llama%3") == []  # LIKE's wildcards are the model's own characters
    assert called("prompt_tokens") == []  # a token count's name is not a model
    assert repository.count(ExecutionFilter(model="local/llama_3")) == 2
    db.dispose()
