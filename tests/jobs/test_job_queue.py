"""The job queue (``JobRepository``) on SQLite and PostgreSQL: claim order, exclusive claims under
contention, leases and takeover, retries with backoff, cancellation, release and counts."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dspex.errors import ConfigurationError
from dspex.store import Database, open_database
from dspex.store.jobs import JobRepository, backoff_seconds
from dspex.store.schema import jobs

ERROR = {"type": "RuntimeError", "message": "boom", "code": "internal_error"}


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def repo(db: Database) -> JobRepository:
    return JobRepository(db)


def _expire(lease_s: float = 0.0) -> None:
    # A claim with lease_s=0 expires at once; the next claim must see a strictly later clock.
    time.sleep(0.01 + lease_s)


def test_claim_takes_higher_priority_first_then_oldest(repo: JobRepository) -> None:
    old = repo.enqueue("evaluate", {"n": 1})
    newer = repo.enqueue("evaluate", {"n": 2})
    urgent = repo.enqueue("evaluate", {"n": 3}, priority=5)
    later = repo.enqueue("evaluate", {"n": 4}, run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    claimed = [repo.claim("w") for _ in range(4)]
    assert [j.id if j else None for j in claimed] == [urgent.id, old.id, newer.id, None]
    assert repo.get(later.id).status == "queued"  # type: ignore[union-attr]  # it exists
    first = claimed[0]
    assert first is not None
    assert (first.status, first.attempts, first.lease_owner) == ("running", 1, "w")
    assert first.started_at is not None
    assert first.lease_expires_at is not None
    assert first.lease_expires_at > dt.datetime.now(dt.UTC)


def test_claim_filters_by_kind(repo: JobRepository) -> None:
    repo.enqueue("optimize", {})
    evaluation = repo.enqueue("evaluate", {})
    job = repo.claim("w", kinds=["evaluate"])
    assert job is not None
    assert job.id == evaluation.id
    assert repo.claim("w", kinds=["evaluate"]) is None


def test_concurrent_workers_never_claim_the_same_job(repo: JobRepository) -> None:
    ids = {repo.enqueue("evaluate", {"i": i}).id for i in range(24)}
    claims: dict[str, list[str]] = {}
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        mine: list[str] = []
        try:
            start.wait(timeout=10)
            while (job := repo.claim(name, lease_s=60)) is not None:
                mine.append(job.id)
        except BaseException as exc:
            errors.append(exc)
        claims[name] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    taken = [job_id for mine in claims.values() for job_id in mine]
    assert sorted(taken) == sorted(ids)  # every job once, none twice
    for name, mine in claims.items():
        for job_id in mine:
            record = repo.get(job_id)
            assert record is not None
            assert record.lease_owner == name
            assert record.attempts == 1


def test_expired_lease_is_taken_over_as_a_new_attempt(repo: JobRepository) -> None:
    job = repo.enqueue("optimize", {}, max_attempts=3)
    first = repo.claim("w1", lease_s=0)
    assert first is not None
    assert first.attempts == 1
    _expire()
    second = repo.claim("w2", lease_s=60)
    assert second is not None
    assert second.id == job.id
    assert (second.attempts, second.lease_owner, second.status) == (2, "w2", "running")
    # The first worker learns it lost the job and can no longer write to it.
    assert repo.heartbeat(job.id, "w1") == "lost"
    assert repo.complete(job.id, "w1", {"x": 1}) is False
    assert repo.fail(job.id, "w1", ERROR, retryable=True) is None
    assert repo.release(job.id, "w1") is None
    assert repo.heartbeat(job.id, "w2", progress={"done": 1}) == "ok"
    assert repo.complete(job.id, "w2", {"x": 2}) is True
    done = repo.get(job.id)
    assert done is not None
    assert (done.status, done.result, done.progress, done.lease_owner) == (
        "succeeded",
        {"x": 2},
        {"done": 1},
        None,
    )
    assert done.finished_at is not None


def test_heartbeat_keeps_the_lease(repo: JobRepository) -> None:
    job = repo.enqueue("optimize", {})
    repo.claim("w1", lease_s=0.3)
    assert repo.heartbeat(job.id, "w1", lease_s=60) == "ok"
    _expire(0.3)
    assert repo.claim("w2") is None  # renewed: not taken over


def test_retryable_failure_backs_off_then_fails_after_max_attempts(repo: JobRepository) -> None:
    job = repo.enqueue("evaluate", {}, max_attempts=2)
    repo.claim("w")
    before = dt.datetime.now(dt.UTC)
    again = repo.fail(job.id, "w", ERROR, retryable=True)  # the repository's backoff: 2 s after attempt 1
    assert again is not None
    assert again.status == "queued"
    assert again.run_after >= before + dt.timedelta(seconds=backoff_seconds(1)) - dt.timedelta(
        milliseconds=50
    )
    assert again.error is not None
    assert [a["attempt"] for a in again.error["attempts"]] == [1]
    assert again.error["retryable"] is True
    assert repo.claim("w") is None  # not due yet
    # Once due, the second and last attempt fails too.
    with repo.db.write() as connection:  # move the backoff along instead of sleeping 2 s
        connection.execute(sa.update(jobs).where(jobs.c.id == job.id).values(run_after=before))
    second = repo.claim("w")
    assert second is not None
    assert second.attempts == 2
    failed = repo.fail(job.id, "w", {**ERROR, "message": "again"}, retryable=True)
    assert failed is not None
    assert failed.status == "failed"
    assert failed.finished_at is not None
    assert failed.error is not None
    assert failed.error["message"] == "again"
    assert [(a["attempt"], a["message"]) for a in failed.error["attempts"]] == [(1, "boom"), (2, "again")]
    assert backoff_seconds(1) == 2.0
    assert backoff_seconds(3) == 8.0
    assert backoff_seconds(30) == 300.0


def test_non_retryable_failure_fails_at_once(repo: JobRepository) -> None:
    job = repo.enqueue("evaluate", {}, max_attempts=5)
    repo.claim("w")
    failed = repo.fail(job.id, "w", {**ERROR, "type": "ConfigurationError"}, retryable=False)
    assert failed is not None
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.error is not None
    assert failed.error["retryable"] is False


def test_worker_that_died_on_the_last_attempt_fails_the_job(repo: JobRepository) -> None:
    job = repo.enqueue("optimize", {}, max_attempts=1)
    other = repo.enqueue("optimize", {})
    assert repo.claim("w1", lease_s=0) is not None
    _expire()
    # The next claim ends the dead job and takes the next one instead.
    nxt = repo.claim("w2")
    assert nxt is not None
    assert nxt.id == other.id
    dead = repo.get(job.id)
    assert dead is not None
    assert dead.status == "failed"
    assert dead.error is not None
    assert dead.error["code"] == "worker_lost"
    assert "w1" in dead.error["message"]


def test_cancel_queued_is_immediate_and_running_is_seen_at_the_heartbeat(repo: JobRepository) -> None:
    queued = repo.enqueue("evaluate", {})
    running = repo.enqueue("evaluate", {})
    assert repo.cancel(queued.id).status == "cancelled"
    claimed = repo.claim("w")
    assert claimed is not None
    assert claimed.id == running.id  # a cancelled job is never claimed
    asked = repo.cancel(running.id)
    assert (asked.status, asked.cancel_requested) == ("running", True)
    assert repo.heartbeat(running.id, "w") == "cancel"
    assert repo.finish_cancelled(running.id, "w", {"done": 3}) is True
    ended = repo.get(running.id)
    assert ended is not None
    assert (ended.status, ended.result) == ("cancelled", {"done": 3})
    with pytest.raises(ConfigurationError, match="already ended: cancelled"):
        repo.cancel(running.id)
    with pytest.raises(ConfigurationError, match="unknown job"):
        repo.cancel("nope")


def test_release_requeues_without_counting_the_attempt(repo: JobRepository) -> None:
    job = repo.enqueue("optimize", {}, max_attempts=1)
    repo.claim("w1")
    released = repo.release(job.id, "w1")
    assert released is not None
    assert (released.status, released.attempts, released.lease_owner) == ("queued", 0, None)
    again = repo.claim("w2")
    assert again is not None
    assert (again.id, again.attempts) == (job.id, 1)
    repo.cancel(job.id)
    cancelled = repo.release(job.id, "w2")  # a cancel requested meanwhile wins
    assert cancelled is not None
    assert cancelled.status == "cancelled"


def test_counts_and_list(repo: JobRepository) -> None:
    a = repo.enqueue("evaluate", {})
    b = repo.enqueue("optimize", {})
    repo.enqueue("optimize", {})
    repo.cancel(a.id)
    repo.claim("w", kinds=["optimize"])
    counts = repo.counts()
    assert counts == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert [j.id for j in repo.list(status="cancelled")] == [a.id]
    assert {j.id for j in repo.list(kind="optimize")} >= {b.id}
    assert len(repo.list()) == 3
    with pytest.raises(ConfigurationError, match="job status"):
        repo.list(status="done")
    with pytest.raises(ConfigurationError, match="kind"):
        repo.enqueue("", {})


def test_jobs_are_found_by_id_prefix_and_kind(repo: JobRepository) -> None:
    first = repo.enqueue("optimize", {"optimization_id": "opt-abc"}, job_id="abc123" + "0" * 26)
    repo.enqueue("evaluate", {}, job_id="abc124" + "0" * 26)
    repo.enqueue("optimize", {}, job_id="abd000" + "0" * 26)
    assert [j.id for j in repo.with_prefix("abc123")] == [first.id]
    assert len(repo.with_prefix("abc")) == 2
    assert [j.kind for j in repo.with_prefix("abc", kind="evaluate")] == ["evaluate"]
    assert repo.with_prefix("ABC") == []  # not hex: no scan at all
    assert repo.with_prefix("") == []
