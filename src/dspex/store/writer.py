"""Write execution records behind the call: a bounded queue drained in batches by one thread.

The caller only enqueues (``submit``); a daemon thread collects what is queued, coalesces records of the
same execution (a run that started and ended within one batch is one row), turns payloads into JSON
(this is where a recorder's trace is converted, off the caller's path) and upserts them in one
statement. A full queue blocks the caller (back-pressure) rather than dropping records. If the database
fails, the batch is retried with backoff; after the last attempt the records are appended to a JSONL
spill file next to the database, the error is logged and kept in ``errors``, and nothing is lost.
``close()`` flushes everything; an ``atexit`` hook closes writers still open at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspex.store.executions import ExecutionRepository

__all__ = ["ExecutionWriter", "PendingRecord"]

logger = logging.getLogger("dspex.store")

# A record is a dict of columns, or a callable building one (called on the writer thread).
PendingRecord = dict[str, Any] | Callable[[], dict[str, Any]]
_FLUSH = object()
_STOP = object()
_open_writers: weakref.WeakSet[ExecutionWriter] = weakref.WeakSet()


class ExecutionWriter:
    """Batches execution records into the database from a background thread."""

    def __init__(
        self,
        repository: ExecutionRepository,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        linger: float = 0.02,
        attempts: int = 5,
        spill_path: Path | None = None,
    ) -> None:
        self.repository = repository
        self.batch_size = batch_size
        self.linger = linger
        self.attempts = attempts
        self.spill_path = spill_path
        self.errors: list[BaseException] = []
        self.written = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dspex-execution-writer", daemon=True)
        self._thread.start()
        _open_writers.add(self)

    def submit(self, record: PendingRecord) -> None:
        """Queue one record (blocks only while the queue is full)."""
        if self._closed:
            raise RuntimeError("this execution writer is closed")
        self._queue.put(record)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted before this call is written; False on timeout."""
        if self._closed:
            return True
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        _open_writers.discard(self)

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[PendingRecord] = []
            waiters: list[threading.Event] = []
            item = self._queue.get()
            deadline = time.monotonic() + self.linger
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, tuple) and item and item[0] is _FLUSH:
                    waiters.append(item[1])
                else:
                    batch.append(item)
                if stopping or len(batch) >= self.batch_size:
                    break
                try:
                    # Linger briefly so bursts share one transaction; flushes and stops skip the wait.
                    wait = 0.0 if waiters else max(0.0, deadline - time.monotonic())
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for waiter in waiters:
                waiter.set()

    def _write(self, batch: list[PendingRecord]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for pending in batch:
            try:
                row = pending() if callable(pending) else pending
            except Exception as exc:  # a record that cannot be built is reported, the rest still written
                logger.exception("could not build an execution record")
                self.errors.append(exc)
                continue
            rows[row["id"]] = row  # later records of the same execution supersede earlier ones
        delay = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                self.repository.upsert(list(rows.values()))
            except Exception as exc:
                if attempt == self.attempts:
                    self.errors.append(exc)
                    self._spill(list(rows.values()), exc)
                    return
                logger.warning(
                    "writing %d execution records failed (attempt %d): %s", len(rows), attempt, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                self.written += len(rows)
                return

    def _spill(self, rows: list[dict[str, Any]], exc: BaseException) -> None:
        if self.spill_path is None:
            logger.error(
                "lost %d execution records: the database failed (%s) and no spill file is set", len(rows), exc
            )
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("a", encoding="utf-8") as spill:
            for row in rows:
                spill.write(json.dumps(row, default=str) + "\n")
        logger.error(
            "the database failed (%s); %d execution records were appended to %s",
            exc,
            len(rows),
            self.spill_path,
        )


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_open_writers):
        writer.close()
