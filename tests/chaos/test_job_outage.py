"""A job that finishes while PostgreSQL is down: its worker retries the completion while it holds the
lease, so the job is recorded once and its handler runs once; when the outage outlasts the lease, the
worker says so and the job runs again, as after a crash.

The database is a private cluster (tests/chaos/conftest.py). The handler counts its runs in a file (which
no database outage can lose) and waits for the test to let it finish, so it ends exactly while the
server is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chaos_support import wait_for

from dspex.jobs import JobContext, Worker, WorkerEvent
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store.jobs import JobRecord
from dspex.testing.postgres import PostgresCluster

OUTAGE_S = 2.0


class _Gated:
    """A handler that appends the attempt to ``runs`` when it starts, then returns (or, with ``fail``, raises)
    once ``release`` is set."""

    def __init__(self, runs: Path, *, fail: bool = False) -> None:
        self.runs = runs
        self.fail = fail
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
        with self.runs.open("a", encoding="utf-8") as out:
            out.write(f"{job.attempts}\n")
        self.started.set()
        assert self.release.wait(20), "the test never let the handler finish"
        if self.fail:
            raise RuntimeError(f"job {job.payload['n']} fails on purpose")
        return {"n": job.payload["n"]}

    def count(self) -> int:
        return len(self.runs.read_text(encoding="utf-8").split())


def _start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, name="chaos-job-worker", daemon=True)
    thread.start()
    return thread


def _outcomes(events: list[WorkerEvent]) -> Callable[[], list[str | None]]:
    return lambda: [event.outcome for event in events if event.kind == "end"]


@pytest.mark.parametrize("ending", ["completion", "failure"])
def test_a_job_that_ends_during_an_outage_is_recorded_once(
    private_postgres: PostgresCluster,
    chaos_database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    ending: str,
) -> None:
    caplog.set_level(logging.INFO, logger="dspex.jobs")
    handler = _Gated(tmp_path / "runs.txt", fail=ending == "failure")
    events: list[WorkerEvent] = []
    settings = Settings(database_url=chaos_database_url, home=tmp_path / "home")
    with App(settings) as app:
        # One attempt only: a failure is final, so a second run could only come from a lapsed lease.
        job_id = app.jobs.enqueue("gated", {"n": 7}, max_attempts=1).id
        # The lease (8 s) outlasts the outage (2 s) and the restart; the handler ends inside the outage.
        worker = Worker(
            app,
            handlers={"gated": handler},
            lease_s=8.0,
            heartbeat_s=0.5,
            poll_s=0.05,
            on_event=events.append,
        )
        thread = _start(worker)
        try:
            assert handler.started.wait(15), "the worker did not start the job"
            private_postgres.stop("immediate")
            handler.release.set()  # the handler returns while the database is down
            time.sleep(OUTAGE_S)  # the outage itself
            assert _outcomes(events)() == [], "the worker gave up on the completion during a short outage"
            private_postgres.start()
            outcomes = wait_for(_outcomes(events), timeout=20, what="the job to end")
        finally:
            worker.stop()
            thread.join(15)
        assert not thread.is_alive()
        job = app.jobs.get(job_id)
    assert job is not None
    if ending == "completion":
        assert outcomes == ["succeeded"]
        assert job.status == "succeeded"
        assert job.result == {"n": 7}
    else:
        assert outcomes == ["failed"]
        assert job.status == "failed"
        assert job.error is not None
        assert job.error["message"] == "job 7 fails on purpose"
        assert len(job.error["attempts"]) == 1
    assert job.attempts == 1, "the job ran again"
    assert handler.count() == 1, "the handler ran more than once"
    messages = [record.getMessage() for record in caplog.records if record.name == "dspex.jobs"]
    assert any(f"recording its {ending} failed, the database is unavailable" in m for m in messages)
    assert any("the database answers again" in m and "lease renewed" in m for m in messages)


def test_a_completion_that_outlasts_the_lease_is_logged_and_the_job_runs_again(
    private_postgres: PostgresCluster,
    chaos_database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dspex.jobs")
    handler = _Gated(tmp_path / "runs.txt")
    events: list[WorkerEvent] = []
    settings = Settings(database_url=chaos_database_url, home=tmp_path / "home")
    with App(settings) as app:
        job_id = app.jobs.enqueue("gated", {"n": 3}, max_attempts=3).id
        # The lease (1.2 s) lapses inside the outage (2.5 s): the completion cannot be recorded in time.
        worker = Worker(
            app,
            handlers={"gated": handler},
            lease_s=1.2,
            heartbeat_s=0.3,
            poll_s=0.05,
            on_event=events.append,
        )
        thread = _start(worker)
        try:
            assert handler.started.wait(15), "the worker did not start the job"
            private_postgres.stop("immediate")
            handler.release.set()
            wait_for(_outcomes(events), timeout=10, what="the worker to give up on the completion")
            assert _outcomes(events)() == ["unrecorded"]
            time.sleep(max(0.0, 2.5 - 1.2))  # the rest of the outage
            private_postgres.start()
            # The lease has lapsed: the job is claimed again (by this worker) and run again.
            outcomes = wait_for(
                lambda: (found := _outcomes(events)()) and len(found) == 2 and found,
                timeout=20,
                what="the job to run again",
            )
        finally:
            worker.stop()
            thread.join(15)
        assert not thread.is_alive()
        job = app.jobs.get(job_id)
    assert outcomes == ["unrecorded", "succeeded"]
    assert job is not None
    assert job.status == "succeeded"
    assert job.attempts == 2
    assert handler.count() == 2
    messages = [record.getMessage() for record in caplog.records if record.name == "dspex.jobs"]
    assert any(
        "ended but its completion was not recorded" in m and "another worker will run the job again" in m
        for m in messages
    )
