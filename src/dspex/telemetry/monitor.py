"""``Signals``: the live monitor that feeds :class:`~dspex.telemetry.signals.SignalEngine` from the store.

::

    signals = app.signals                       # shared by the App's users (the service, /metrics)
    signals.poll()                              # read the new records; returns the events it produced
    signals.report(program="qa").groups         # statistics per group
    signals.events(after=seq)                   # the event log (bounded), for followers such as SSE

The monitor reads through an :class:`OutcomeSource` (:class:`dspex.store.outcomes.OutcomeRepository` in an
App), incrementally, as :mod:`dspex.telemetry.signals` describes. It is thread-safe: polls and reports
take one lock; several followers share one monitor, each with its own position in the event log, which
keeps the last ``log_size`` events with increasing sequence numbers.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from dspex.errors import ConfigurationError
from dspex.telemetry.signals import RatedRun, RunOutcome, SignalEngine, SignalEvent, SignalReport, Thresholds

__all__ = ["OutcomeSource", "Signals"]

_Row = TypeVar("_Row", RunOutcome, RatedRun)


class OutcomeSource(Protocol):
    """Where the monitor reads runs and feedback scores (see :mod:`dspex.store.outcomes`)."""

    def runs(
        self, started_from: dt.datetime, *, after: tuple[dt.datetime, str] | None = None, limit: int = 1000
    ) -> list[RunOutcome]: ...

    def newest_runs(self, started_from: dt.datetime, *, limit: int) -> list[RunOutcome]: ...

    def runs_by_id(self, ids: Sequence[str]) -> list[RunOutcome]: ...

    def scores(
        self, created_from: dt.datetime, *, after: tuple[dt.datetime, str] | None = None, limit: int = 1000
    ) -> list[RatedRun]: ...


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Signals:
    """Rolling statistics, trends and anomalies over the runs in ``source`` (see the module docstring).

    ``clock`` gives "now" (UTC; tests inject one); ``lag_s`` how far behind the newest record a poll looks
    again for records written late; ``page`` and ``max_pages`` bound one poll's reads; ``backfill`` the
    runs the first poll reads; ``max_running_s`` how long a run seen ``running`` is looked up again.
    """

    def __init__(
        self,
        source: OutcomeSource,
        thresholds: Thresholds | None = None,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        lag_s: float = 30.0,
        page: int = 2000,
        max_pages: int = 20,
        backfill: int = 50_000,
        max_running_s: float = 6 * 3600.0,
        log_size: int = 1000,
    ) -> None:
        if lag_s < 0 or page < 1 or max_pages < 1 or backfill < 1 or log_size < 1 or max_running_s <= 0:
            raise ConfigurationError(
                "Signals needs lag_s >= 0, max_running_s > 0 and page, max_pages, backfill, log_size >= 1"
            )
        self.source = source
        self.engine = SignalEngine(thresholds)
        self.thresholds = self.engine.thresholds
        self._clock = clock
        self._lag = dt.timedelta(seconds=lag_s)
        self._page = page
        self._max_pages = max_pages
        self._backfill = backfill
        self._max_running = dt.timedelta(seconds=max_running_s)
        self._lock = threading.Lock()
        self._started = False
        self._polled_at: float | None = None  # time.monotonic() of the last poll
        self._newest_run: dt.datetime | None = None
        self._newest_score: dt.datetime | None = None
        self._seen_runs: dict[str, dt.datetime] = {}  # id -> started_at, in arrival order
        self._seen_scores: dict[str, dt.datetime] = {}  # feedback id -> created_at
        self._running: dict[str, dt.datetime] = {}  # id -> started_at of runs seen running
        self._log: collections.deque[tuple[int, SignalEvent]] = collections.deque(maxlen=log_size)
        self._seq = 0
        self.polls = 0
        self.rows_read = 0  # runs and scores read from the source, in all (how incremental it is)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before any)."""
        return self._seq

    def poll(self, *, fresh_s: float = 0.0) -> list[SignalEvent]:
        """Read what is new in the source, run the detectors, and return the new events (also logged).

        With ``fresh_s``, a poll made less than that many seconds ago by anyone is enough: nothing is read.
        Errors of the source (the database is down) propagate; the monitor's position is unchanged by them.
        """
        with self._lock:
            if fresh_s > 0 and self._polled_at is not None and time.monotonic() - self._polled_at < fresh_s:
                return []
            now = self._clock()
            runs = self._read_runs(now)
            rated = self._read_scores(now)
            for run in runs:
                self.engine.observe(run)
            for score in rated:
                self.engine.rate(score)
            events = self.engine.evaluate(now)
            for event in events:
                self._seq += 1
                self._log.append((self._seq, event))
            self._started = True
            self._polled_at = time.monotonic()
            self.polls += 1
            return events

    def _read_runs(self, now: dt.datetime) -> list[RunOutcome]:
        window_start = now - dt.timedelta(seconds=self.thresholds.window_s)
        if not self._started:
            read = self.source.newest_runs(window_start, limit=self._backfill)
        else:
            start = max(window_start, (self._newest_run or window_start) - self._lag)
            read = self._pages(lambda after: self.source.runs(start, after=after, limit=self._page))
            # Runs seen running: looked up by id, however long ago they started (within max_running_s).
            self._running = {i: s for i, s in self._running.items() if s >= now - self._max_running}
            if self._running:
                read.extend(self.source.runs_by_id(list(self._running)))
        self.rows_read += len(read)
        ended: list[RunOutcome] = []
        for run in read:
            if self._newest_run is None or run.started_at > self._newest_run:
                self._newest_run = run.started_at
            if run.id in self._seen_runs:
                continue
            if run.status == "running":
                self._running[run.id] = run.started_at
                continue
            self._running.pop(run.id, None)
            self._seen_runs[run.id] = run.started_at
            ended.append(run)
        if self._newest_run is not None:
            _forget(self._seen_runs, self._newest_run - 2 * self._lag, keep=self._running)
        ended.sort(key=lambda r: r.ended_at or r.started_at)
        return ended

    def _read_scores(self, now: dt.datetime) -> list[RatedRun]:
        window_start = now - dt.timedelta(seconds=self.thresholds.window_s)
        start = window_start
        if self._started and self._newest_score is not None:
            start = max(window_start, self._newest_score - self._lag)
        read = self._pages(lambda after: self.source.scores(start, after=after, limit=self._page))
        self.rows_read += len(read)
        fresh: list[RatedRun] = []
        for rated in read:
            if self._newest_score is None or rated.created_at > self._newest_score:
                self._newest_score = rated.created_at
            if rated.feedback_id in self._seen_scores:
                continue
            self._seen_scores[rated.feedback_id] = rated.created_at
            fresh.append(rated)
        if self._newest_score is not None:
            _forget(self._seen_scores, self._newest_score - 2 * self._lag)
        return fresh

    def _pages(self, read: Callable[[tuple[dt.datetime, str] | None], list[_Row]]) -> list[_Row]:
        rows: list[_Row] = []
        after: tuple[dt.datetime, str] | None = None
        for _ in range(self._max_pages):
            page = read(after)
            rows.extend(page)
            if len(page) < self._page:
                break
            last = page[-1]
            after = (
                (last.started_at, last.id)
                if isinstance(last, RunOutcome)
                else (last.created_at, last.feedback_id)
            )
        return rows

    def report(self, *, program: str | None = None, programs: Iterable[str] | None = None) -> SignalReport:
        """The statistics of every group as of the last poll (only ``program``'s, or those of
        ``programs``, when given). Call :meth:`poll` first to include what is new."""
        with self._lock:
            return self.engine.report(self._clock(), program=program, programs=programs)

    def events(self, after: int = 0) -> list[tuple[int, SignalEvent]]:
        """Logged events with a sequence number above ``after``, oldest first (the log keeps the last
        ``log_size``)."""
        with self._lock:
            return [(seq, event) for seq, event in self._log if seq > after]


def _forget(
    seen: dict[str, dt.datetime], before: dt.datetime, *, keep: dict[str, dt.datetime] | None = None
) -> None:
    """Drop ids older than ``before`` from ``seen`` (insertion order is nearly time order: stop at the first
    newer one), so the memory of counted records stays bounded by what a poll can read again."""
    for key in list(seen):
        if seen[key] >= before:
            break
        if keep is None or key not in keep:
            del seen[key]
