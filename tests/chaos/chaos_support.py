"""Helpers of the chaos tests, imported by bare name (tests/chaos has no __init__.py, like tests/jobs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa

from dspex.runtime.app import App
from dspex.store.schema import executions

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.02) -> T:
    """``probe()`` once it returns something truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class RunLoad:
    """``threads`` callers running ``program`` through ``app.run`` back to back until :meth:`stop`.

    What the callers saw is kept: the execution ids of the runs that returned (``succeeded``), of the runs
    that raised an error naming their execution (``failed``), and any other exception (``unexpected``:
    a run that raised without an execution id, which no record can account for).
    """

    def __init__(
        self, app: App, program: Any, *, threads: int = 4, inputs: Callable[[int], Mapping[str, Any]]
    ):
        self.app = app
        self.program = program
        self.inputs = inputs
        self.succeeded: list[str] = []
        self.failed: list[str] = []
        self.unexpected: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"chaos-load-{k}", daemon=True) for k in range(threads)
        ]

    @property
    def attempted(self) -> int:
        with self._lock:
            return len(self.succeeded) + len(self.failed) + len(self.unexpected)

    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _loop(self) -> None:
        while not self._stop.is_set():
            n = self._next()
            try:
                result = self.app.run(self.program, dict(self.inputs(n)))
            except Exception as exc:
                execution_id = getattr(exc, "execution_id", None)
                with self._lock:
                    if execution_id:
                        self.failed.append(execution_id)
                    else:
                        self.unexpected.append(exc)
            else:
                with self._lock:
                    self.succeeded.append(result.execution_id)

    def start(self) -> RunLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_runs(self, at_least: int, *, timeout: float = 15.0) -> None:
        """Wait until ``at_least`` runs in all have ended (a bounded wait on progress, not a sleep)."""
        wait_for(lambda: self.attempted >= at_least, timeout=timeout, what=f"{at_least} runs to end")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), f"{thread.name} did not stop"


def record_statuses(app: App, ids: list[str]) -> dict[str, str]:
    """Execution id -> status in the database, for ``ids`` (read directly, after a flush)."""
    found: dict[str, str] = {}
    with app._open().db.read() as connection:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = sa.select(executions.c.id, executions.c.status).where(executions.c.id.in_(chunk))
            found.update({row.id: row.status for row in connection.execute(query)})
    return found
