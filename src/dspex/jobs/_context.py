"""What a job handler sees while it runs: its job, a place to report progress, and whether to stop.

A handler runs on the worker's thread; the worker's heartbeat thread renews the lease, stores the latest
progress and, when the job is cancelled, handed to another worker (lease lost) or the worker is shutting
down, sets :attr:`JobContext.stop_event`. Handlers check it at safe points (after an optimization trial,
after an evaluated example) with :meth:`JobContext.check`, which raises :class:`JobInterrupted`. ::

    def handle(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
        for i, item in enumerate(items):
            context.check()                        # raises JobInterrupted when asked to stop
            work(item)
            context.report({"done": i + 1, "total": len(items)})
        return {"done": len(items)}
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from dspex.jsonable import to_jsonable

if TYPE_CHECKING:
    from dspex.store.jobs import JobRecord

__all__ = ["JobContext", "JobInterrupted", "StopReason"]

# cancel: cancel() was called on the job; lost: another worker owns it now; release: this worker is
# shutting down and gives the job back to the queue.
StopReason = Literal["cancel", "lost", "release"]


class JobInterrupted(Exception):
    """A handler stopped because its job was cancelled, its lease was lost or its worker is stopping.

    Not an error: the worker ends the job as ``reason`` says (cancelled, untouched, or queued again)."""

    def __init__(
        self, reason: StopReason, message: str | None = None, *, result: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message or f"job interrupted: {reason}")
        self.reason: StopReason = reason
        self.result = dict(result) if result is not None else None  # what a cancelled job did (JSON)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_interrupted, (self.reason, str(self), self.result))


def _interrupted(reason: StopReason, message: str, result: dict[str, Any] | None) -> JobInterrupted:
    return JobInterrupted(reason, message, result=result)


class JobContext:
    """One running job's link to its worker. Thread-safe."""

    def __init__(self, job: JobRecord, *, pool: str | None = None) -> None:
        self.job = job
        self.pool = pool  # the worker pool the job's examples may run on (dspex worker --pool)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._reason: StopReason | None = None
        self._progress: dict[str, Any] | None = None
        self._version = 0  # bumped by every report(), so the heartbeat knows what it has not sent
        self.progress_changed = threading.Event()

    # -- the handler's side --------------------------------------------------------------------------
    def report(self, progress: Mapping[str, Any]) -> None:
        """Record the job's progress (JSON); the heartbeat thread stores the latest one."""
        value = to_jsonable(dict(progress))
        with self._lock:
            self._progress = value
            self._version += 1
        self.progress_changed.set()

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the handler should stop (None: go on)."""
        with self._lock:
            return self._reason

    def check(self) -> None:
        """Raise :class:`JobInterrupted` if the handler should stop."""
        reason = self.stop_reason
        if reason is not None:
            raise JobInterrupted(reason, f"job {self.job.id} interrupted: {_DESCRIBE[reason]}")

    # -- the worker's side ---------------------------------------------------------------------------
    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to stop. A lost lease overrides any other reason (nothing may be written);
        otherwise the first reason stays."""
        with self._lock:
            if self._reason is None or reason == "lost":
                self._reason = reason
        self.stop_event.set()

    def pending_progress(self) -> tuple[int, dict[str, Any] | None]:
        """The latest progress and its version number."""
        with self._lock:
            return self._version, self._progress


_DESCRIBE: Mapping[str, str] = {
    "cancel": "it was cancelled",
    "lost": "its lease was lost and another worker owns it now",
    "release": "its worker is stopping and gives it back to the queue",
}
