"""Write execution records behind the call: a bounded buffer drained in batches by one thread.

The caller only appends to a deque (``submit``, well under a microsecond, no lock, no thread switch); the
writer thread is woken once per burst, lingers briefly so the burst shares one transaction, coalesces
records of the same execution (a run that started and ended within one batch is one row), turns payloads
into JSON (this is where a recorder's trace is converted, off the caller's path) and upserts them in one
statement. A full buffer blocks the caller (back-pressure) rather than dropping records. If the database
fails, the batch is retried with backoff; after the last attempt the records are appended to a JSONL spill
file next to the database, the error is logged and kept in ``errors``, and nothing is lost. ``close()``
flushes everything; an ``atexit`` hook closes writers still open at interpreter exit.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
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
_STOP = object()
# Writers still open at exit, so buffered records are flushed (weak: a dropped writer is not kept alive).
_open_writers: weakref.WeakSet[ExecutionWriter] = weakref.WeakSet()


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class ExecutionWriter:
    """Batches execution records into the database from a background thread."""

    def __init__(
        self,
        repository: ExecutionRepository,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        linger: float = 0.05,
        attempts: int = 5,
        spill_path: Path | None = None,
    ) -> None:
        self.repository = repository
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.linger = linger
        self.attempts = attempts
        self.spill_path = spill_path
        self.errors: list[BaseException] = []
        self.written = 0
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()  # something is pending
        self._urgent = threading.Event()  # someone waits: skip the linger
        self._drained = threading.Event()  # a batch was written: room in the buffer
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dspex-execution-writer", daemon=True)
        self._thread.start()
        _open_writers.add(self)

    def submit(self, record: PendingRecord) -> None:
        """Buffer one record; blocks only while the buffer holds ``max_queue`` records."""
        if self._closed:
            raise RuntimeError("this execution writer is closed")
        while len(self._pending) >= self.max_queue:
            self._drained.clear()
            self._urgent.set()
            self._wake.set()
            self._drained.wait(0.1)
        self._pending.append(record)
        if len(self._pending) == 1:  # the first of a burst wakes the writer; the rest ride along
            self._wake.set()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted before this call is written; False on timeout."""
        if self._closed:
            return True
        marker = _Flush()
        self._pending.append(marker)
        self._urgent.set()
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything buffered, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._pending.append(_STOP)
        self._urgent.set()
        self._wake.set()
        self._thread.join(timeout)
        _open_writers.discard(self)

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._urgent.is_set():
                self._urgent.wait(self.linger)  # let the burst accumulate into one transaction
            self._urgent.clear()
            self._wake.clear()
            batch: list[PendingRecord] = []
            stopping = False
            while self._pending:
                item = self._pending.popleft()
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Flush):
                    self._write(batch)
                    batch = []
                    item.done.set()
                else:
                    batch.append(item)
                    if len(batch) >= self.batch_size:
                        self._write(batch)
                        batch = []
            self._write(batch)
            self._drained.set()
            if stopping:
                return

    def _write(self, batch: list[PendingRecord]) -> None:
        if not batch:
            return
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
