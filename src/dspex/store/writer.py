"""Write execution records behind the call: a bounded buffer drained in batches by one thread.

The caller only appends to a deque (``submit``, well under a microsecond, no lock, no thread switch); the
writer thread is woken once per burst, lingers briefly so the burst shares one transaction, coalesces
records of the same execution (a run that started and ended within one batch is one row), turns payloads
into JSON (this is where a recorder's trace is converted, off the caller's path) and upserts them in one
statement. A full buffer blocks the caller (back-pressure) rather than dropping records.

One bad row never fails the rows batched with it: when a batch fails, it is retried row by row. If some
rows go in, the ones that did not are bad rows: each is stored in a reduced form (its payload replaced
by a marker, the reason in its ``error``), or, if even that fails, appended to the JSONL spill file with
the reason. If no row goes in, the database itself is failing: the batch is retried with backoff, and
after the last attempt spilled. The spill file (owner-only) is replayed into the store by
:func:`replay_spill` when the next App opens the store; rows that still fail stay in it with their reason.
Errors are logged and kept in ``errors``; nothing is lost.

With a :class:`~dspex.store.recorders.RecorderRepository`, the writer registers a recorder (its id goes
into every row's ``recorder_id``), renews its lease from the writer thread every ``lease_s / 3``
seconds, sweeps runs whose recorder's lease expired to ``abandoned`` at the same pace, and closes the
recorder on ``close()``. ``close()`` flushes everything; an ``atexit`` hook closes writers still open at
interpreter exit.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspex.jsonable import dumps
from dspex.store.executions import ExecutionRepository
from dspex.store.recorders import RecorderRepository

__all__ = ["ExecutionWriter", "PendingRecord", "replay_spill"]

logger = logging.getLogger("dspex.store")

# A record is a dict of columns, or a callable building one (called on the writer thread).
PendingRecord = dict[str, Any] | Callable[[], dict[str, Any]]
_STOP = object()
_PROBE = 3  # rows tried one by one before a batch that fails whole is blamed on the database
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
        recorders: RecorderRepository | None = None,
        lease_s: float = 60.0,
    ) -> None:
        self.repository = repository
        self.recorders = recorders
        self.lease_s = lease_s
        # Registered before the first record, so every row this writer stores names its recorder.
        self.recorder_id = recorders.register(lease_s) if recorders is not None else None
        self._next_renew = time.monotonic() + lease_s / 3
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
        if self.recorders is not None and self.recorder_id is not None:
            self.recorders.close(self.recorder_id)

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if self.recorders is None:
                self._wake.wait()
            elif not self._wake.wait(max(0.0, self._next_renew - time.monotonic())):
                self._renew()
                continue
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
            if self.recorders is not None and time.monotonic() >= self._next_renew:
                self._renew()

    def _renew(self) -> None:
        """Renew this recorder's lease and sweep runs of dead recorders (on the writer thread)."""
        assert self.recorders is not None
        assert self.recorder_id is not None
        self._next_renew = time.monotonic() + self.lease_s / 3
        try:
            if not self.recorders.renew(self.recorder_id, self.lease_s):
                logger.warning("execution recorder %s was closed by someone else", self.recorder_id)
            self.repository.mark_abandoned()
        except Exception as exc:  # the database is down: the next renewal tries again
            logger.warning("renewing execution recorder %s failed: %s", self.recorder_id, exc)
            self.errors.append(exc)

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
            if self.recorder_id is not None and row.get("recorder_id") is None:
                row = {**row, "recorder_id": self.recorder_id}
            rows[row["id"]] = row  # later records of the same execution supersede earlier ones
        pending_rows = list(rows.values())
        if not pending_rows:
            return
        try:
            self.repository.upsert(pending_rows)
        except Exception as batch_exc:
            first = batch_exc
            failed = self._each(pending_rows) if len(pending_rows) > 1 else [(pending_rows[0], first)]
        else:
            self.written += len(pending_rows)
            return
        if len(failed) < len(pending_rows):  # the others went in: these rows are bad, not the database
            for row, row_exc in failed:
                self._keep_bad(row, row_exc)
            return
        self._retry([row for row, _ in failed], first)

    def _each(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Exception]]:
        """Upsert row by row; the rows that failed, each with its error.

        The first ``_PROBE`` rows all failing means the database, not the rows, is failing: the rest
        are returned untried (with that error) rather than each waiting out a timeout.
        """
        failed: list[tuple[dict[str, Any], Exception]] = []
        for index, row in enumerate(rows):
            if len(failed) == index == _PROBE:
                return failed + [(rest, failed[-1][1]) for rest in rows[index:]]
            try:
                self.repository.upsert([row])
            except Exception as exc:
                failed.append((row, exc))
            else:
                self.written += 1
        return failed

    def _retry(self, rows: list[dict[str, Any]], last: Exception) -> None:
        delay = 0.05
        for attempt in range(1, self.attempts):
            logger.warning("writing %d execution records failed (attempt %d): %s", len(rows), attempt, last)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                self.repository.upsert(rows)
            except Exception as exc:
                last = exc
            else:
                self.written += len(rows)
                return
        if len(rows) == 1:
            self._keep_bad(rows[0], last)
            return
        self.errors.append(last)
        self._spill([(row, last) for row in rows])

    def _keep_bad(self, row: dict[str, Any], exc: Exception) -> None:
        """Store a row the database refused in a reduced form, else spill it; both keep the reason."""
        self.errors.append(exc)
        logger.error("execution record %s could not be stored whole: %s", row.get("id"), exc)
        try:
            self.repository.upsert([reduced(row, exc)])
        except Exception as reduced_exc:
            self.errors.append(reduced_exc)
            self._spill([(row, exc)])
        else:
            self.written += 1

    def _spill(self, rows: list[tuple[dict[str, Any], BaseException]]) -> None:
        if self.spill_path is None:
            logger.error(
                "lost %d execution records: the database refused them (%s) and no spill file is set",
                len(rows),
                rows[0][1],
            )
            return
        append_spill(self.spill_path, [(row, _reason(exc)) for row, exc in rows])
        logger.error(
            "the database refused %d execution records (%s); they were appended to %s",
            len(rows),
            rows[0][1],
            self.spill_path,
        )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def reduced(row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """``row`` without its payloads (inputs, outputs, variables, usage, trace), the reason in ``error``."""
    original = row.get("error")
    error: dict[str, Any] = {
        "type": "RecordError",
        "code": "record_unwritable",
        "message": f"the record could not be stored whole ({_reason(exc)}); its payloads were dropped",
        "retryable": False,
    }
    if isinstance(original, dict):
        error["original"] = {
            k: str(original.get(k))[:2000] for k in ("type", "code", "message") if k in original
        }
    return {
        **row,
        "inputs": {"__dropped__": "record_unwritable"},
        "outputs": None,
        "variables": None,
        "usage": None,
        "trace": None,
        "error": error,
    }


def _private_append(path: Path) -> Any:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def append_spill(path: Path, rows: list[tuple[dict[str, Any], str]]) -> None:
    """Append ``rows`` (each with the reason it was not stored) to the spill file ``path`` (owner-only)."""
    with _private_append(path) as spill:
        for row, reason in rows:
            spill.write(dumps({"v": 1, "reason": reason, "row": row}) + "\n")


def _parse_row(line: str) -> dict[str, Any]:
    entry = json.loads(line)
    row: dict[str, Any] = entry.get("row", entry)  # older files: the row itself
    for key in ("started_at", "ended_at"):
        if isinstance(row.get(key), str):
            row[key] = dt.datetime.fromisoformat(row[key])
    return row


def replay_spill(repository: ExecutionRepository, path: Path) -> tuple[int, int]:
    """Write the spilled records of ``path`` into the store; returns (written, still failing).

    The file is removed once everything is written; records that still fail stay in it, each with the
    reason (a line that is not a record is kept as it is, with its reason).
    """
    if not path.exists():
        return 0, 0
    kept: list[str] = []
    written = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = _parse_row(line)
        except (ValueError, KeyError, TypeError) as exc:
            kept.append(dumps({"v": 1, "reason": f"not a record: {_reason(exc)}", "line": line}))
            continue
        try:
            repository.upsert([row])
        except Exception as exc:
            logger.error("replaying execution record %s from %s failed: %s", row.get("id"), path, exc)
            kept.append(dumps({"v": 1, "reason": _reason(exc), "row": row}))
        else:
            written += 1
    if kept:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(kept) + "\n")
        os.replace(tmp, path)
    else:
        path.unlink()
    if written:
        logger.info("replayed %d spilled execution records from %s", written, path)
    return written, len(kept)


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_open_writers):
        writer.close()
