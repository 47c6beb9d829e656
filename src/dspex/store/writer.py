"""Write execution records behind the call: a bounded buffer drained in batches by one thread.

The caller only appends to a deque (``submit``, well under a microsecond, no lock, no thread switch); the
writer thread is woken once per burst, lingers briefly so the burst shares one transaction, coalesces
records of the same execution (a run that started and ended within one batch is one row), turns payloads
into JSON (this is where a recorder's trace is converted, off the caller's path) and upserts them in one
statement. Records are written in the order they were submitted, but for a run's start record
(``running``): it waits up to ``hold_running`` (0.2 s) for its run's end, so that a run ending within
that time is written once, as its terminal record. Runs queued behind others (a batch's shard on a pool
worker) end well after their start was submitted; without the wait more than half of them were written
twice. A run still going after the wait has its start record written then; ``flush()`` and ``close()``
write waiting start records at once. A process killed meanwhile loses a start record it had not written
yet, as it loses any record still in the buffer.

One bad row never fails the rows batched with it: when a batch fails, it is retried row by row. If some
rows go in, the ones that did not are bad rows: each is stored in a reduced form (its payload replaced
by a marker, the reason in its ``error``), or, if even that fails, appended to the JSONL spill file with
the reason. If every row fails with the same refusal, the batch is retried ``attempts`` times with
backoff, then spilled.

A database that cannot be reached (down, restarting, connection lost: see
:func:`~dspex.store._engine.database_unavailable`) is an outage, not a refusal: the writer holds the
batch and retries it with exponential backoff (at most ``max_backoff`` seconds apart) for as long as it
is open, while later records wait in the buffer behind it, so a database restart loses nothing and keeps
the order. The buffer is bounded by ``max_queue``. When it fills during an outage, the writer moves the
held batch and everything after it to the spill file, in order, so that callers are not blocked by a
long outage; until the database answers again (probed with ``SELECT 1`` on the same backoff) it appends
new records there too, then replays the file itself and writes directly again. Without a spill file a
full buffer blocks callers instead (back-pressure). Nothing is dropped either way. A writer closed during
an outage stops retrying after ``attempts`` tries in all and spills what it still holds.

The spill file (owner-only, guarded by a lock file for the processes sharing it) is also replayed into
the store by :func:`replay_spill` when the next App opens the store; rows that still fail stay in it with
their reason. Errors are logged and kept in ``errors``.

With a :class:`~dspex.store.recorders.RecorderRepository`, the writer registers a recorder (its id goes
into every row's ``recorder_id``), renews its lease from the writer thread every ``lease_s / 3``
seconds, sweeps runs whose recorder's lease expired to ``abandoned`` at the same pace, and closes the
recorder on ``close()``. ``close()`` flushes everything; an ``atexit`` hook closes writers still open at
interpreter exit.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspex.store._engine import database_unavailable, describe_error
from dspex.store.executions import ExecutionRepository
from dspex.store.recorders import RecorderRepository
from dspex.store.spill import append_spill, error_reason, replay, replay_spill

__all__ = ["ExecutionWriter", "PendingRecord", "append_spill", "reduced", "replay_spill"]

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
    """Batches execution records into the database from a background thread (see the module docstring)."""

    def __init__(
        self,
        repository: ExecutionRepository,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        linger: float = 0.05,
        attempts: int = 5,
        max_backoff: float = 1.0,
        spill_path: Path | None = None,
        recorders: RecorderRepository | None = None,
        lease_s: float = 60.0,
        hold_running: float = 0.2,
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
        # A run's start record ("running") waits up to this long for its run's end, so that a run ending
        # within it is written once; flush() and close() write what waits at once.
        self.hold_running = hold_running
        self._held: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (first seen, running row)
        self.attempts = attempts
        self.max_backoff = max_backoff
        self.spill_path = spill_path
        self.errors: list[BaseException] = []
        self.written = 0
        self.outages = 0  # database outages this writer lived through
        self.spilled = 0  # records it appended to the spill file
        self.replayed = 0  # spilled records it wrote back itself once the database was back
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()  # something is pending
        self._urgent = threading.Event()  # someone waits: skip the linger
        self._drained = threading.Event()  # a batch was written: room in the buffer
        self._stopping = threading.Event()  # close() was called: cut backoff sleeps short
        self._closed = False
        # While the database is unavailable and the buffer overflowed, records go to the spill file.
        self._spilling = False
        self._probe_delay = 0.05
        self._next_probe = 0.0
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
        """Wait until everything submitted before this call is written (or spilled); False on timeout.

        During a database outage that means until the database is back, or ``timeout``; while records
        go to the spill file, a flush first checks whether the database is back (and replays it if so).
        """
        if self._closed:
            return True
        marker = _Flush()
        self._pending.append(marker)
        self._urgent.set()
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything buffered (spill what the database does not take), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._pending.append(_STOP)
        self._urgent.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error(
                "the execution writer did not finish within %s s; %d records are still buffered",
                timeout,
                len(self._pending),
            )
        _open_writers.discard(self)
        if self.recorders is not None and self.recorder_id is not None:
            self.recorders.close(self.recorder_id)

    @property
    def spilling(self) -> bool:
        """True while records go to the spill file because the database is unavailable."""
        return self._spilling

    # -- the writer thread ---------------------------------------------------------------------------
    def _idle_timeout(self) -> float | None:
        """How long the thread may sleep with nothing pending: until the next renewal or probe."""
        due: list[float] = []
        if self.recorders is not None:
            due.append(self._next_renew)
        if self._spilling:
            due.append(self._next_probe)
        if self._held:
            due.append(min(first for first, _ in self._held.values()) + self.hold_running)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _run(self) -> None:
        while True:
            if not self._wake.wait(self._idle_timeout()):
                self._periodic()
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
                    self._next_probe = 0.0  # someone waits: see at once whether the database is back
                    self._write(batch, hold=False)
                    batch = []
                    item.done.set()
                else:
                    batch.append(item)
                    if len(batch) >= self.batch_size:
                        self._write(batch)
                        batch = []
            self._write(batch, hold=not stopping)
            self._drained.set()
            if stopping:
                return
            self._periodic()

    def _periodic(self) -> None:
        """What the thread does on a timer: write start records that waited long enough, renew the
        recorder's lease, probe the database after an outage."""
        if self._held:
            self._write([])
        now = time.monotonic()
        if self._spilling and now >= self._next_probe:
            self._recover()
        if self.recorders is not None and not self._spilling and now >= self._next_renew:
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
            logger.warning("renewing execution recorder %s failed: %s", self.recorder_id, describe_error(exc))
            self.errors.append(exc)

    def _write(self, batch: list[PendingRecord], *, hold: bool = True) -> None:
        """Write ``batch`` with the start records that waited (see ``hold_running``); with ``hold``, the
        start records that have waited less than ``hold_running`` wait on."""
        held = self._held
        if not batch and not held:
            return
        # Start records that waited come first: a later record of the same run supersedes them.
        rows: dict[str, dict[str, Any]] = {key: row for key, (_, row) in held.items()}
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
        self._held = {}
        if hold and self.hold_running > 0:
            now = time.monotonic()
            for key, row in rows.items():
                if row.get("status") == "running":
                    first = held[key][0] if key in held else now
                    if now - first < self.hold_running:
                        self._held[key] = (first, row)
            for key in self._held:
                del rows[key]
        pending_rows = list(rows.values())
        if not pending_rows:
            return
        if self._spilling and (time.monotonic() < self._next_probe or not self._recover()):
            # Still unavailable: behind the records already spilled, in order.
            self._spill_outage(pending_rows)
            return
        try:
            self.repository.upsert(pending_rows)
        except Exception as batch_exc:
            if database_unavailable(batch_exc):  # no row can go in: no use trying them one by one
                self._retry(pending_rows, batch_exc)
                return
            failed = self._each(pending_rows) if len(pending_rows) > 1 else [(pending_rows[0], batch_exc)]
        else:
            self.written += len(pending_rows)
            return
        down = [(row, exc) for row, exc in failed if database_unavailable(exc)]
        if down:  # the database went away while the rows went in one by one
            self._retry([row for row, _ in down], down[-1][1])
            failed = [(row, exc) for row, exc in failed if not database_unavailable(exc)]
            if not failed:
                return
        if len(failed) < len(pending_rows):  # the others went in: these rows are bad, not the database
            for row, row_exc in failed:
                self._keep_bad(row, row_exc)
            return
        self._retry([row for row, _ in failed], failed[-1][1])

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
        """Try ``rows`` again with backoff: ``attempts`` times for a refusal; during an outage until the
        database is back, the buffer overflows into the spill file, or the writer closes."""
        delay = 0.05
        attempt = 1
        outage_started: float | None = None
        next_report = 0.0
        while True:
            unavailable = database_unavailable(last)
            if unavailable and outage_started is None:
                outage_started = time.monotonic()
                next_report = outage_started + 5.0
                self.outages += 1
                self.errors.append(last)
                logger.warning(
                    "the database is unavailable; holding %d execution records and retrying: %s",
                    len(rows),
                    describe_error(last),
                )
            if attempt >= self.attempts and (not unavailable or self._closed):
                break
            if unavailable and self.spill_path is not None and len(self._pending) >= self.max_queue:
                assert outage_started is not None  # set above when unavailable
                logger.error(
                    "the database has been unavailable for %.1f s and the buffer is full (%d records); "
                    "moving records to %s until it answers again: %s",
                    time.monotonic() - outage_started,
                    self.max_queue,
                    self.spill_path,
                    describe_error(last),
                )
                self._spilling = True
                self._probe_delay = delay
                self._next_probe = time.monotonic() + delay
                self._spill_outage(rows)
                return
            if not unavailable:
                logger.warning(
                    "writing %d execution records failed (attempt %d): %s",
                    len(rows),
                    attempt,
                    describe_error(last),
                )
            elif outage_started is not None and time.monotonic() >= next_report:
                logger.warning(
                    "the database has been unavailable for %.0f s; %d execution records held, %d buffered: %s",
                    time.monotonic() - outage_started,
                    len(rows),
                    len(self._pending),
                    describe_error(last),
                )
                next_report = time.monotonic() + 30.0
            self._stopping.wait(delay)
            delay = min(delay * 2, self.max_backoff)
            attempt += 1
            try:
                self.repository.upsert(rows)
            except Exception as exc:
                last = exc
            else:
                self.written += len(rows)
                if outage_started is not None:
                    logger.warning(
                        "the database is back after %.1f s; wrote %d held execution records",
                        time.monotonic() - outage_started,
                        len(rows),
                    )
                return
        if len(rows) == 1 and not database_unavailable(last):
            self._keep_bad(rows[0], last)
            return
        self.errors.append(last)
        self._spill([(row, last) for row in rows])
        if database_unavailable(last) and self.spill_path is not None:
            # Closing during an outage: what is still buffered follows these rows into the spill file.
            self._spilling = True
            self._next_probe = time.monotonic() + delay

    def _spill_outage(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to the spill file while the database is unavailable (the file keeps their order)."""
        assert self.spill_path is not None  # spilling starts only with a spill file
        append_spill(self.spill_path, [(row, "the database was unavailable") for row in rows])
        self.spilled += len(rows)

    def _recover(self) -> bool:
        """While spilling: if the database answers, replay the spill file and stop spilling. True if so."""
        assert self.spill_path is not None
        try:
            self.repository.db.ping()
            written, kept, stopped = replay(self.repository, self.spill_path)
        except Exception as exc:
            if not database_unavailable(exc):
                logger.exception("replaying the spill file %s failed", self.spill_path)
                self.errors.append(exc)
            stopped = exc
            written = kept = 0
        self.replayed += written
        if stopped is None:
            self._spilling = False
            logger.warning(
                "the database is back: replayed %d spilled execution records from %s (%d still refused)",
                written,
                self.spill_path,
                kept,
            )
            return True
        self._probe_delay = min(self._probe_delay * 2, self.max_backoff)
        self._next_probe = time.monotonic() + self._probe_delay
        return False

    def _keep_bad(self, row: dict[str, Any], exc: Exception) -> None:
        """Store a row the database refused in a reduced form, else spill it; both keep the reason."""
        self.errors.append(exc)
        logger.error("execution record %s could not be stored whole: %s", row.get("id"), describe_error(exc))
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
                describe_error(rows[0][1]),
            )
            return
        append_spill(self.spill_path, [(row, error_reason(exc)) for row, exc in rows])
        self.spilled += len(rows)
        logger.error(
            "the database refused %d execution records (%s); they were appended to %s",
            len(rows),
            describe_error(rows[0][1]),
            self.spill_path,
        )


def reduced(row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """``row`` without its payloads (inputs, outputs, variables, usage, trace), the reason in ``error``."""
    original = row.get("error")
    error: dict[str, Any] = {
        "type": "RecordError",
        "code": "record_unwritable",
        "message": f"the record could not be stored whole ({error_reason(exc)}); its payloads were dropped",
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


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_open_writers):
        writer.close()
