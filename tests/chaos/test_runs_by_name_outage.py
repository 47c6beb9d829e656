"""Runs of registered programs by name while PostgreSQL restarts: the version resolved before the outage
keeps serving them (stale-if-error), so none fails and none loses its record; a process that never
resolved the program fails its runs cleanly, with a ``database_unavailable`` record written once the
database is back.

The database is a private cluster (tests/chaos/conftest.py). The outage (2 s) is longer than the memo of
resolved versions (``POLICY_REFRESH_S``, 1 s), so runs during it do go to the database and find it down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from chaos_support import RunLoad, record_statuses, wait_for

from dspex.errors import DatabaseUnavailable
from dspex.runtime.app import App
from dspex.runtime.cache import POLICY_REFRESH_S
from dspex.settings import Settings
from dspex.store.schema import executions
from dspex.testing import ScriptedEngine
from dspex.testing.postgres import PostgresCluster

OUTAGE_S = 2.0
SPEC = {"module": "predict", "signature": "question -> answer"}


def _answer(inputs: dict[str, Any]) -> str:
    question = str(inputs["question"])
    if question.endswith("/fail"):
        raise RuntimeError(f"the scripted LM refuses {question!r}")
    return question.upper()


def _question(n: int) -> dict[str, str]:
    return {"question": f"q{n}/fail" if n % 8 == 0 else f"q{n}"}


def _repeated(n: int) -> dict[str, str]:
    # Each question twice: about half the runs are cache hits, and the rest keep the load at the LM's pace.
    return {"question": f"r{n // 2}"}


def _record_versions(app: App) -> dict[str, str | None]:
    """Execution id -> the version id its record names (read directly, after a flush)."""
    with app._open().db.read() as connection:
        rows = connection.execute(sa.select(executions.c.id, executions.c.version_id))
        return {row.id: row.version_id for row in rows}


def _register(app: App, name: str) -> str:
    version = app.programs.register(name, SPEC)
    app.programs.promote(name, version.id)
    return version.id


def test_runs_by_name_go_on_through_a_restart(
    private_postgres: PostgresCluster,
    chaos_database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert OUTAGE_S > 1.5 * POLICY_REFRESH_S, "the outage must outlast the memo of resolved versions"
    caplog.set_level(logging.INFO, logger="dspex.runtime")
    engine = ScriptedEngine({"answer": _answer}, latency=0.002)
    settings = Settings(database_url=chaos_database_url, home=tmp_path / "home")
    with App(settings, lm=engine.lm()) as app:
        qa = _register(app, "qa")
        cached = _register(app, "qa-cached")
        app.set_cache("qa-cached", 3600)
        loads = [
            RunLoad(app, "qa", threads=2, inputs=_question).start(),
            RunLoad(app, "qa-cached", threads=2, inputs=_repeated).start(),
        ]
        for load in loads:
            load.wait_for_runs(40)
        private_postgres.stop("immediate")
        before = [load.attempted for load in loads]
        time.sleep(OUTAGE_S)
        during = [load.attempted - b for load, b in zip(loads, before, strict=True)]
        private_postgres.start()
        wait_for(
            lambda: sum("the database answers again" in r.getMessage() for r in caplog.records) >= 2,
            timeout=15,
            what="runs by name to resolve their versions from the database again",
        )
        for load in loads:
            load.wait_for_runs(load.attempted + 40, timeout=20)
            load.stop()
        assert app.flush(timeout=30), "the writer did not catch up after the restart"
        seen = {id(load): load.succeeded + load.failed for load in loads}
        statuses = record_statuses(app, [e for ids in seen.values() for e in ids])
        versions = _record_versions(app)

    for load in loads:
        assert load.unexpected == [], load.unexpected[:3]
    assert all(n > 0 for n in during), f"runs by name stopped during the outage: {during}"
    assert loads[0].failed, "the load should include runs that fail cleanly (the LM refuses)"
    assert loads[1].failed == []
    lost = [e for ids in seen.values() for e in ids if e not in statuses]
    assert lost == []
    for load in loads:
        assert all(statuses[e] == "succeeded" for e in load.succeeded)
        assert all(statuses[e] == "failed" for e in load.failed)
    # Every run, during the outage too, recorded the version it ran: the one production was before it.
    assert {versions[e] for e in seen[id(loads[0])]} == {qa}
    assert {versions[e] for e in seen[id(loads[1])]} == {cached}
    messages = [r.getMessage() for r in caplog.records if r.name == "dspex.runtime"]
    assert any("the database is unavailable" in m and "runs use the version" in m for m in messages)
    assert any("the database answers again" in m for m in messages)


def test_a_process_that_never_resolved_the_program_fails_cleanly_and_records_it(
    private_postgres: PostgresCluster,
    chaos_database_url: str,
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine({"answer": _answer})
    settings = Settings(database_url=chaos_database_url, home=tmp_path / "home")
    with App(settings, lm=engine.lm()) as first:
        _register(first, "qa")
    never_opened = App(settings, lm=engine.lm())
    with App(settings, lm=engine.lm()) as app:
        assert app.programs is not None  # the store is open (migrated, its writer running); nothing resolved
        private_postgres.stop("immediate")
        with pytest.raises(DatabaseUnavailable, match="which is unavailable") as unopened_error:
            never_opened.run("qa", {"question": "q0"})
        with pytest.raises(
            DatabaseUnavailable, match=r"cannot run 'qa': .* needs the database"
        ) as sync_error:
            app.run("qa", {"question": "q1"})
        with pytest.raises(DatabaseUnavailable) as async_error:
            asyncio.run(app.arun("qa", {"question": "q2"}))
        private_postgres.start()
        assert app.run("qa", {"question": "q3"}).outputs == {"answer": "Q3"}
        assert app.flush(timeout=30)
        failed = [sync_error.value.execution_id, async_error.value.execution_id]
        assert None not in failed
        records = [app.executions.get(e) for e in failed]  # type: ignore[arg-type]
    never_opened.close()

    # Without a store (opening it needs the database) there is no writer: a clean error, no record.
    assert unopened_error.value.execution_id is None

    assert sync_error.value.retryable
    assert isinstance(sync_error.value.__cause__, Exception)  # the driver's error, chained
    for record in records:
        assert record is not None
        assert record.status == "failed"
        assert record.program == "qa"
        assert record.error is not None
        assert record.error["code"] == "database_unavailable"
        assert record.error["retryable"] is True
