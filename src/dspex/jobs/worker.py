"""The job worker: claims jobs from the queue and runs them one at a time, its lease kept alive.

::

    with App() as app:
        worker = Worker(app, kinds=["optimize"], lease_s=30)
        worker.run(stop_when_idle=True)        # -> the number of jobs processed
        # from another thread or a signal handler's thread: worker.stop()

Run as many workers as you like, on any machine that shares the database: a claim is one write
transaction (:meth:`dspex.store.jobs.JobRepository.claim`), so no two workers take the same job.

While a handler runs, a heartbeat thread renews the lease every ``heartbeat_s`` (a third of the lease by
default) and stores the handler's latest progress (at most once a second when it reports more often).
The heartbeat's answer reaches the handler through its :class:`~dspex.jobs.JobContext`: ``cancel`` (the
job was cancelled) and ``lost`` (another worker owns it now; also when no heartbeat got through for a
whole lease) set the context's stop event, which handlers check at safe points. How a job ends:

- the handler returns its JSON result: ``complete`` (succeeded);
- it stopped because the job was cancelled: ``finish_cancelled``;
- it stopped because the lease was lost: nothing is written; the job belongs to its new worker;
- it stopped because this worker is stopping (:meth:`Worker.stop`): ``release`` (queued again at once);
- it raised: ``fail``, retried after the repository's exponential backoff unless the error is a
  ``UserError`` (the job itself must change; retrying cannot help) or an ``LMError`` that is not
  retryable. The error is logged (logger ``dspex.jobs``) and kept in the job's ``error`` JSON.

A job that ends while the database cannot be reached (down, restarting: see
:func:`~dspex.store._engine.database_unavailable`) is not given up on: the worker retries the write that
ends it (``complete``, ``fail``, ``finish_cancelled`` or ``release``) with exponential backoff for as long
as it still holds the lease (the last renewal that got through plus ``lease_s``), renewing the lease
first each time so that the database answering again extends it. A job that finished during a short
outage is so recorded once and not run again. Every such write is conditional on this worker still
owning the job, so a late one can never overwrite another worker's. Once the lease has lapsed the worker
stops trying, logs that the job's outcome was not recorded and that another worker will run it again
(outcome ``unrecorded``), and moves on: the job is then re-run as a new attempt, as after a crash.
Errors other than an unreachable database are not retried.

A worker killed outright (``kill -9``, a lost machine) stops heartbeating; once its lease expires the next
claim takes the job over as a new attempt, and the handler resumes (an optimization keeps its finished
trials).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from dspex.errors import ConfigurationError, DSPexError, LMError, UserError, did_you_mean
from dspex.jobs._context import JobContext, JobInterrupted
from dspex.jobs.handlers import HANDLERS, Handler
from dspex.store._engine import database_unavailable, describe_error
from dspex.store._time import utcnow
from dspex.store.jobs import backoff_seconds
from dspex.telemetry.context import RunTrace, continue_trace, job_trace
from dspex.telemetry.recorder import error_info

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.jobs import JobRecord, JobRepository

__all__ = ["Outcome", "Worker", "WorkerEvent", "default_worker_id"]

log = logging.getLogger("dspex.jobs")

# succeeded / failed / cancelled: the job ended so; retry: failed, queued again after a backoff;
# released: given back to the queue (the worker is stopping); lost: another worker owns it now, nothing
# was written; unrecorded: the outcome could not be written (the lease will expire and the job rerun).
Outcome = Literal["succeeded", "failed", "retry", "cancelled", "released", "lost", "unrecorded"]
_PROGRESS_GAP_S = 1.0  # progress reported faster than this is stored at most this often
_TRACEBACK_CHARS = 4000
# Backoff between tries of a job's final write while the database is unavailable: 50 ms doubling to 1 s,
# so a database back after a restart is seen within a second.
_RECORD_FIRST_S = 0.05
_RECORD_MAX_S = 1.0
T = TypeVar("T")


class _Unrecorded(Exception):
    """A job's final write did not get through before its lease lapsed (the database was unavailable)."""


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """A job started (``kind="start"``) or ended (``"end"``, with its outcome, duration and a detail:
    the error message of a failure, or a short summary)."""

    kind: Literal["start", "end"]
    job: JobRecord
    worker_id: str
    outcome: Outcome | None = None
    duration_s: float | None = None
    detail: str | None = None


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return False
    if isinstance(exc, LMError):
        return exc.retryable
    return True


def _error_json(exc: BaseException, worker_id: str) -> dict[str, Any]:
    """The failure as the job's ``error`` JSON: type, message, code, the cause and, for errors that are not
    dspex's own (bugs, surprises), the traceback."""
    error = error_info(exc)
    error.setdefault("code", "internal_error")
    error["worker"] = worker_id
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        error["cause"] = error_info(cause)
    if not isinstance(exc, DSPexError):
        error["traceback"] = "".join(traceback.format_exception(exc))[-_TRACEBACK_CHARS:]
    return error


class _Heartbeat(threading.Thread):
    """Renews one job's lease and stores its progress until :meth:`finish`; see the module docstring."""

    def __init__(
        self, repo: JobRepository, worker_id: str, context: JobContext, lease_s: float, interval: float
    ) -> None:
        super().__init__(name=f"dspex-heartbeat-{context.job.id[:8]}", daemon=True)
        self.repo = repo
        self.worker_id = worker_id
        self.context = context
        self.lease_s = lease_s
        self.interval = interval
        self._done = threading.Event()
        self._sent = 0  # the progress version last stored
        self._renewed = time.monotonic()  # the lease was just taken by the claim

    def run(self) -> None:
        last = time.monotonic()
        changed = self.context.progress_changed
        while not self._done.is_set():
            wait = last + self.interval - time.monotonic()
            if wait > 0 and changed.wait(wait):
                # New progress: store it early, but not more often than every _PROGRESS_GAP_S.
                gap = last + min(_PROGRESS_GAP_S, self.interval) - time.monotonic()
                if self._done.is_set() or (gap > 0 and self._done.wait(gap)):
                    break
            changed.clear()
            self.beat()
            last = time.monotonic()
            if self.context.stop_reason == "lost":
                break

    def beat(self) -> None:
        version, progress = self.context.pending_progress()
        started = time.monotonic()
        try:
            answer = self.repo.heartbeat(
                self.context.job.id,
                self.worker_id,
                lease_s=self.lease_s,
                progress=progress if version != self._sent else None,
            )
        except Exception:
            log.warning("heartbeat of job %s failed", self.context.job.id, exc_info=True)
            if time.monotonic() - self._renewed > self.lease_s:
                # No renewal for a whole lease: another worker may have taken the job over.
                log.error(
                    "job %s: no heartbeat got through for %.0f s; stopping it",
                    self.context.job.id,
                    self.lease_s,
                )
                self.context.request_stop("lost")
            return
        self._renewed = started
        self._sent = version
        if answer == "cancel":
            self.context.request_stop("cancel")
        elif answer == "lost":
            log.warning("job %s: lease lost (another worker owns it, or it ended)", self.context.job.id)
            self.context.request_stop("lost")

    @property
    def lease_deadline(self) -> float:
        """``time.monotonic()`` at which the lease lapses unless renewed: the last renewal that got through
        (timed from before it was sent, so never late) plus the lease."""
        return self._renewed + self.lease_s

    def renewed(self, at: float) -> None:
        """A renewal sent at ``at`` (``time.monotonic()``) got through after :meth:`finish`."""
        self._renewed = max(self._renewed, at)

    def finish(self) -> None:
        """Stop beating; store progress the handler reported since the last beat (unless the lease is lost)."""
        self._done.set()
        self.context.progress_changed.set()
        self.join()
        version, _ = self.context.pending_progress()
        if version != self._sent and self.context.stop_reason != "lost":
            self.beat()


class Worker:
    """Claims and runs jobs of ``kinds`` (default: every kind of ``handlers``, by default
    :data:`dspex.jobs.handlers.HANDLERS`). See the module docstring.

    - ``lease_s``: how long a claim holds a job without a heartbeat; another worker takes over a job
      whose lease expired. ``heartbeat_s``: how often the lease is renewed (default ``lease_s / 3``).
    - ``poll_s``: how long to wait before looking again when no job is due.
    - ``on_event``: called with a :class:`WorkerEvent` when a job starts and ends (the CLI prints them).
    """

    def __init__(
        self,
        app: App,
        *,
        worker_id: str | None = None,
        kinds: Sequence[str] | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        poll_s: float = 1.0,
        handlers: Mapping[str, Handler] | None = None,
        on_event: Callable[[WorkerEvent], None] | None = None,
        pool: str | None = None,
    ) -> None:
        if pool is not None:
            app.pools.setting(pool)  # an unknown pool is a ConfigurationError listing the valid ones
        self.pool = pool
        self.handlers: Mapping[str, Handler] = dict(handlers if handlers is not None else HANDLERS)
        wanted = list(dict.fromkeys(kinds)) if kinds is not None else list(self.handlers)
        if not wanted:
            raise ConfigurationError(
                f"a worker needs at least one job kind: {', '.join(sorted(self.handlers))}"
            )
        for kind in wanted:
            if kind not in self.handlers:
                raise ConfigurationError(did_you_mean(kind, self.handlers, what="job kind"))
        if lease_s <= 0:
            raise ConfigurationError(f"lease_s must be > 0, got {lease_s}")
        heartbeat_s = lease_s / 3 if heartbeat_s is None else heartbeat_s
        if not 0 < heartbeat_s < lease_s:
            raise ConfigurationError(
                f"heartbeat_s must be > 0 and below lease_s ({lease_s}) so the lease never lapses, got {heartbeat_s}"
            )
        if poll_s <= 0:
            raise ConfigurationError(f"poll_s must be > 0, got {poll_s}")
        self.app = app
        self.worker_id = worker_id or default_worker_id()
        self.kinds: tuple[str, ...] = tuple(wanted)
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s)
        self.poll_s = float(poll_s)
        self.on_event = on_event
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: JobContext | None = None
        self._running = False

    # -- control ---------------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called; a stopped worker stays stopped."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop gracefully: claim no more jobs, and ask the running job to stop at its next safe point and
        go back to the queue (a job that finishes first is completed). :meth:`run` returns after that.
        Thread-safe; from a signal handler, call it on another thread (it takes locks)."""
        self._stopping.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.request_stop("release")

    def run(self, *, max_jobs: int | None = None, stop_when_idle: bool = False) -> int:
        """Claim and run jobs until :meth:`stop`, ``max_jobs`` jobs, or (``stop_when_idle``) no job is due.
        Returns how many jobs it processed, whatever their outcome."""
        if max_jobs is not None and max_jobs < 0:
            raise ConfigurationError(f"max_jobs must be >= 0, got {max_jobs}")
        with self._lock:
            if self._running:
                raise ConfigurationError("this worker is already running; start another Worker instead")
            self._running = True
        processed = 0
        unavailable_since: float | None = None  # the database stopped answering claims then
        repo = self.app.jobs
        log.info(
            "worker %s started (kinds: %s, lease %.1f s)", self.worker_id, ", ".join(self.kinds), self.lease_s
        )
        try:
            while not self._stopping.is_set() and (max_jobs is None or processed < max_jobs):
                try:
                    job = repo.claim(self.worker_id, kinds=self.kinds, lease_s=self.lease_s)
                except UserError:
                    raise  # misconfiguration: waiting will not fix it
                except Exception as exc:
                    if not database_unavailable(exc):
                        log.exception(
                            "worker %s could not claim a job; trying again in %.1f s",
                            self.worker_id,
                            self.poll_s,
                        )
                    elif unavailable_since is None:  # an outage: said once, not at every poll
                        unavailable_since = time.monotonic()
                        log.error(
                            "worker %s could not claim a job: the database is unavailable (%s); trying again "
                            "every %.1f s",
                            self.worker_id,
                            describe_error(exc),
                            self.poll_s,
                        )
                    else:
                        log.debug("worker %s: the database is still unavailable (%s)", self.worker_id, exc)
                    self._stopping.wait(self.poll_s)
                    continue
                if unavailable_since is not None:
                    log.warning(
                        "worker %s: the database answers again after %.1f s",
                        self.worker_id,
                        time.monotonic() - unavailable_since,
                    )
                    unavailable_since = None
                if job is None:
                    if stop_when_idle:
                        break
                    self._stopping.wait(self.poll_s)
                    continue
                self._process(repo, job)
                processed += 1
        finally:
            with self._lock:
                self._running = False
            log.info("worker %s stopped after %d job(s)", self.worker_id, processed)
        return processed

    # -- one job ---------------------------------------------------------------------------------------
    def _emit(self, event: WorkerEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a display callback must not decide a job's outcome
            log.exception("on_event callback failed for job %s", event.job.id)

    def _process(self, repo: JobRepository, job: JobRecord) -> None:
        handler = self.handlers[job.kind]
        context = JobContext(job, pool=self.pool)
        with self._lock:
            self._current = context
        if self._stopping.is_set():  # stop() came between the claim and now
            context.request_stop("release")
        log.info("job %s (%s) started, attempt %d/%d", job.id, job.kind, job.attempts, job.max_attempts)
        self._emit(WorkerEvent("start", job, self.worker_id))
        heartbeat = _Heartbeat(repo, self.worker_id, context, self.lease_s, self.heartbeat_s)
        heartbeat.start()
        started, began = time.monotonic(), utcnow()
        # Every run the handler makes belongs to the job's trace (the submitter's, else the job id's).
        trace = job_trace(
            job.id, job.attempts, job.payload.get("traceparent") if isinstance(job.payload, dict) else None
        )
        try:
            try:
                with continue_trace(trace.context):
                    result = handler(self.app, job, context)
            finally:
                heartbeat.finish()
            outcome, detail = self._succeeded(repo, context, heartbeat, result)
        except JobInterrupted as exc:
            outcome, detail = self._interrupted(repo, context, heartbeat, exc)
        except Exception as exc:
            outcome, detail = self._failed(repo, context, heartbeat, exc)
        finally:
            with self._lock:
                self._current = None
        duration = time.monotonic() - started
        self._export(job, trace, began, duration, outcome, detail)
        log.info("job %s (%s) %s after %.2f s", job.id, job.kind, outcome, duration)
        self._emit(WorkerEvent("end", job, self.worker_id, outcome, duration, detail))

    def _export(
        self, job: JobRecord, trace: RunTrace, began: Any, duration_s: float, outcome: str, detail: str | None
    ) -> None:
        """The attempt as a ``job <kind>`` span (telemetry on): the parent of the runs it made."""
        telemetry = self.app.telemetry
        if telemetry is None:
            return
        from dspex.telemetry.otel import SpanExport

        attributes = {
            "dspex.span.kind": "job",
            "dspex.job.id": job.id,
            "dspex.job.kind": job.kind,
            "dspex.job.attempt": job.attempts,
            "dspex.job.outcome": outcome,
            "dspex.job.worker": self.worker_id,
        }
        error = (detail or outcome) if outcome in ("failed", "retry", "unrecorded") else None
        telemetry.submit(SpanExport(f"job {job.kind}", trace, began, duration_s * 1000, attributes, error))

    def _persist(
        self, repo: JobRepository, heartbeat: _Heartbeat, what: str, write: Callable[[], T]
    ) -> tuple[T, int]:
        """``write()`` (a write that ends the job), tried again with backoff while the database is
        unavailable and the lease holds; returns its answer and how many tries it took.

        Before each retry the lease is renewed: the database answering again extends it. Raises
        :class:`_Unrecorded` once the lease has lapsed (logged: another worker will run the job again);
        errors other than an unavailable database propagate at once.
        """
        job = heartbeat.context.job
        delay = _RECORD_FIRST_S
        tries = renewals = 0
        first_failure = time.monotonic()
        while True:
            tries += 1
            try:
                return write(), tries
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                last: BaseException = exc
            now = time.monotonic()
            if tries == 1:
                first_failure = now
                log.warning(
                    "job %s: recording its %s failed, the database is unavailable (%s); retrying for up to "
                    "%.1f s, while this worker holds the lease",
                    job.id,
                    what,
                    describe_error(last),
                    max(0.0, heartbeat.lease_deadline - now),
                )
            while True:  # wait for the database: renew the lease as soon as it answers, then write
                now = time.monotonic()
                if now >= heartbeat.lease_deadline:
                    log.error(
                        "job %s (%s) ended but its %s was not recorded: the database was unavailable for "
                        "%.1f s, until the lease lapsed (%d writes and %d renewals tried; last error: %s); "
                        "another worker will run the job again",
                        job.id,
                        job.kind,
                        what,
                        now - first_failure,
                        tries,
                        renewals,
                        describe_error(last),
                    )
                    raise _Unrecorded(f"its {what} was not recorded: {describe_error(last)}") from last
                time.sleep(min(delay, heartbeat.lease_deadline - now))
                delay = min(delay * 2, _RECORD_MAX_S)
                sent = time.monotonic()
                renewals += 1
                try:
                    answer = repo.heartbeat(job.id, self.worker_id, lease_s=self.lease_s)
                except Exception as exc:
                    if database_unavailable(exc):
                        last = exc
                        continue
                    # The database answered but refused the renewal: the write itself decides.
                    log.warning("job %s: renewing the lease failed: %s", job.id, describe_error(exc))
                    break
                if answer != "lost":
                    heartbeat.renewed(sent)
                log.info(
                    "job %s: the database answers again after %.1f s (lease %s); recording its %s",
                    job.id,
                    time.monotonic() - first_failure,
                    "renewed" if answer != "lost" else "lost",
                    what,
                )
                break

    def _succeeded(
        self, repo: JobRepository, context: JobContext, heartbeat: _Heartbeat, result: Any
    ) -> tuple[Outcome, str | None]:
        from dspex.jsonable import to_jsonable

        job = context.job
        if not isinstance(result, Mapping):
            raise ConfigurationError(
                f"the {job.kind!r} handler returned a {type(result).__name__}; a job result is a JSON object"
            )
        stored = to_jsonable(dict(result))
        try:
            completed, tries = self._persist(
                repo, heartbeat, "completion", lambda: repo.complete(job.id, self.worker_id, stored)
            )
        except _Unrecorded as exc:
            return "unrecorded", f"finished, but {exc}"
        if not completed and tries > 1 and self._completed_already(repo, job.id, stored):
            # An earlier try committed but its answer was lost with the connection.
            return "succeeded", None
        if not completed:
            log.warning("job %s finished, but another worker owns it now; its result is dropped", job.id)
            return "lost", "finished after its lease was lost; the result was dropped"
        return "succeeded", None

    @staticmethod
    def _completed_already(repo: JobRepository, job_id: str, result: Any) -> bool:
        """True when the job is already succeeded with ``result``: a completion whose commit got through
        while the connection carrying its answer broke."""
        job = repo.get(job_id)
        if job is not None and job.status == "succeeded" and job.result == result:
            log.info("job %s: its completion had been recorded before the connection broke", job_id)
            return True
        return False

    def _interrupted(
        self, repo: JobRepository, context: JobContext, heartbeat: _Heartbeat, exc: JobInterrupted
    ) -> tuple[Outcome, str]:
        job = context.job
        reason = context.stop_reason or exc.reason
        try:
            if reason == "lost":
                return "lost", str(exc)
            if reason == "cancel":
                cancelled, _ = self._persist(
                    repo,
                    heartbeat,
                    "cancellation",
                    lambda: repo.finish_cancelled(job.id, self.worker_id, exc.result),
                )
                if cancelled:
                    return "cancelled", str(exc)
                return "lost", "cancelled after its lease was lost"
            released, _ = self._persist(
                repo, heartbeat, "release", lambda: repo.release(job.id, self.worker_id)
            )
        except _Unrecorded as unrecorded:
            return "unrecorded", f"{exc}; {unrecorded}"
        except Exception as write_error:
            log.exception("job %s: could not record that it stopped (%s)", job.id, reason)
            return "unrecorded", str(write_error)
        if released is None:
            return "lost", "released after its lease was lost"
        return ("cancelled" if released.status == "cancelled" else "released"), str(exc)

    def _failed(
        self, repo: JobRepository, context: JobContext, heartbeat: _Heartbeat, exc: Exception
    ) -> tuple[Outcome, str]:
        job = context.job
        retryable = _retryable(exc)
        message = f"{type(exc).__name__}: {exc}"
        if context.stop_reason == "lost":
            log.error(
                "job %s failed after its lease was lost (not recorded): %s", job.id, message, exc_info=exc
            )
            return "lost", message
        log.error(
            "job %s (%s) failed on attempt %d/%d (%s): %s",
            job.id,
            job.kind,
            job.attempts,
            job.max_attempts,
            "retryable" if retryable else "not retryable",
            message,
            exc_info=exc,
        )
        backoff = backoff_seconds(job.attempts)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > backoff:
            backoff = float(retry_after)  # the LM provider asked for a longer pause
        error = _error_json(exc, self.worker_id)
        try:
            record, _ = self._persist(
                repo,
                heartbeat,
                "failure",
                lambda: repo.fail(job.id, self.worker_id, error, retryable=retryable, backoff_s=backoff),
            )
        except _Unrecorded as unrecorded:
            return "unrecorded", f"{message} ({unrecorded})"
        except Exception as write_error:
            log.exception("job %s: could not record its failure", job.id)
            return "unrecorded", f"{message} (not recorded: {write_error})"
        if record is None:
            return "lost", message
        if record.status == "queued":
            return "retry", message
        return ("cancelled" if record.status == "cancelled" else "failed"), message
