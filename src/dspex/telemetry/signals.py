"""Live signals: rolling statistics, trends and anomalies of runs, per program, version, model and variable
configuration, computed incrementally from the execution records and feedback.

::

    signals = app.signals                    # one monitor per App (the service's /v1/signals uses it)
    signals.poll()                           # read what is new in the store; detect
    for group in signals.report(program="qa").groups:
        print(group.where.label, group.success_rate, group.p95_ms, group.quality, group.trends)
    for seq, event in signals.events():      # anomaly and trend events, oldest first
        print(event.message)

Groups. Every ended run counts in the group of its program, of its program version, of each model that
served one of its LM calls (the keys of its ``usage``: a run served by a primary and a fallback counts in
both), and of its variable configuration (the first 12 hex digits of the SHA-256 of its ``variables`` as
canonical JSON, the same content hash as :class:`~dspex.variables.Configuration`). A group keeps the runs
of the window: the last ``window_s`` seconds (default one hour) and at most the last ``window_runs``
(500) runs and scores. Statistics: success rate (``succeeded / (succeeded + failed + abandoned)``;
cancelled runs are the caller's doing and do not count), latency p50 and p95 of successful runs, tokens
and cost per run, and quality: the mean feedback score (0..1, :mod:`dspex.store.feedback`).

Anomalies (:class:`Thresholds` holds every number; the defaults are below). Each is checked when a group
has new data and reported once when it starts (an ``anomaly`` event); it clears when its statistic or its
size falls below half its threshold, and only then can it be reported again (hysteresis).

- ``latency_spike``: the median latency of the last 10 successful runs is at least 3.5 robust standard
  deviations (1.4826 x MAD, at least 1% of the median) above the median of the runs before them, and at
  least 1.5x that median; at least 20 runs before them. One slow run moves a median of ten by nothing:
  noise and single outliers are not spikes.
- ``error_rate_jump``: among the last 30 ended runs, at least 3 failed, their failure rate is at least 10
  points above the rate of the runs before them (at least 20), and a one-sided pooled two-proportion
  z-test gives z >= 3.72 (p <= 0.0001: the test runs at every poll). A single error is never a jump.
- ``quality_drop``: the mean of the last 10 feedback scores is at least 0.1 below the mean of the scores
  before them (at least 10), with Welch's z >= 3.0 (standard deviations floored at 0.05).
- ``cost_drift``: a two-sided CUSUM on log cost per run (costs are skewed; a shift in logs is a ratio),
  standardised by a reference learnt from the group's first 100 priced runs (standard deviation floored
  at 0.05, i.e. 5%), k = 0.5, h = 10; reported when the estimated new level differs from the reference by
  at least 15%. The reference is then learnt again, so the new level becomes normal. With known
  parameters the in-control average run length is about 70,000 runs per side (Siegmund's
  approximation); a shift of two standard deviations is caught within about 7 runs.

Trends, per metric (``latency``, ``errors``, ``cost``, ``quality``), tested every 10 new values over the
window split into 10 consecutive buckets of at least 5 values (latency and cost: bucket medians; errors:
failure rates; quality: mean scores): ``improving`` or ``degrading`` when a Mann-Kendall test on the
bucket statistics gives |z| >= 2.58 and the last bucket differs from the first by at least 20% (latency,
cost) or 0.05 (errors, quality); else ``unstable`` when the buckets differ (Kruskal-Wallis for values, a
chi-square test for rates; z >= 3.72 after Wilson-Hilferty) with a coefficient of variation of at least
0.15 (latency, cost) or a standard deviation of at least 0.05 (errors, quality); else ``stable``;
``unknown`` with fewer values. A trend already found stays at half these thresholds. A ``trend`` event
is sent when a metric's trend changes between known states. A level shift reads as ``unstable`` while
the window holds both levels, and as ``degrading`` or ``improving`` once the new level fills enough of it.

On a synthetic noise series (lognormal latency with sigma 0.3, 5% errors, lognormal cost with sigma 0.2;
80,000 runs in 40 streams, evaluated every 5 runs) the defaults reported one error-rate jump per 10,000
runs, one cost drift per 40,000, one trend change per 8,000, and no latency spike; a latency step to 3x
was reported within 6 runs.

Incremental: the first poll reads the window (the newest ``backfill`` runs at most); each later poll reads
only runs started since the newest it saw minus ``lag_s`` (30 s: records reach the store behind their
runs, in batches), skipping the ones it already counted, plus the runs it saw ``running`` (by id), and
feedback given since the last it saw minus ``lag_s``. A record that reaches the store more than ``lag_s``
after its run started (replayed after a database outage) is not counted live.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dspex.errors import ConfigurationError
from dspex.telemetry.detect import (
    Cusum,
    chi2_homogeneity,
    chi2_z,
    kruskal_wallis_h,
    mann_kendall_z,
    robust_z,
    two_proportion_z,
    welch_z,
)

__all__ = [
    "AnomalyKind",
    "GroupStats",
    "Metric",
    "RatedRun",
    "RunOutcome",
    "SignalEngine",
    "SignalEvent",
    "SignalReport",
    "Thresholds",
    "Trend",
    "Where",
    "config_id",
]

Metric = Literal["latency", "errors", "cost", "quality"]
Trend = Literal["improving", "degrading", "unstable", "stable", "unknown"]
AnomalyKind = Literal["latency_spike", "error_rate_jump", "quality_drop", "cost_drift"]
METRICS: tuple[Metric, ...] = ("latency", "errors", "cost", "quality")
_FAILED = frozenset({"failed", "abandoned"})
_ENDED = frozenset({"succeeded", "failed", "abandoned", "cancelled"})


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def config_id(variables: dict[str, Any] | None) -> str | None:
    """The variable configuration's short content id (12 hex digits), or None without variables.

    >>> config_id({"temperature": 0.5}) == config_id({"temperature": 0.5}), config_id(None)
    (True, None)
    """
    if not variables:
        return None
    from dspex.jsonable import canonical_hash, storable

    return canonical_hash(storable(variables))[:12]


# -- values -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What signals read of one run: where it belongs and how it went."""

    id: str
    program: str | None
    version_id: str | None
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    duration_ms: float | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    models: tuple[str, ...] = ()
    variables: dict[str, Any] | None = None
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class RatedRun:
    """One feedback score with the run it rates."""

    feedback_id: str
    score: float
    created_at: dt.datetime
    run: RunOutcome


@dataclass(frozen=True, slots=True, order=True)
class Where:
    """A group: a program alone, or with one of its versions, models or variable configurations."""

    program: str | None
    version: str | None = None
    model: str | None = None
    config: str | None = None

    @property
    def dimension(self) -> Literal["program", "version", "model", "config"]:
        if self.version is not None:
            return "version"
        if self.model is not None:
            return "model"
        if self.config is not None:
            return "config"
        return "program"

    @property
    def label(self) -> str:
        """``qa``, ``qa@3f2a1b0c``, ``qa model=openai/gpt-4o-mini``, ``qa config=9c1e...``."""
        name = self.program if self.program is not None else "(ad hoc)"
        if self.version is not None:
            return f"{name}@{self.version[:8]}"
        if self.model is not None:
            return f"{name} model={self.model}"
        if self.config is not None:
            return f"{name} config={self.config}"
        return name

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "version": self.version,
            "model": self.model,
            "config": self.config,
            "dimension": self.dimension,
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The window and every threshold of the detectors (the module docstring explains each)."""

    window_s: float = 3600.0
    window_runs: int = 500
    min_baseline: int = 20
    latency_recent: int = 10
    latency_z: float = 3.5
    latency_ratio: float = 1.5
    error_recent: int = 30
    error_z: float = 3.72
    error_min_failures: int = 3
    error_min_jump: float = 0.10
    quality_recent: int = 10
    quality_min_baseline: int = 10
    quality_z: float = 3.0
    quality_min_drop: float = 0.10
    quality_sd_floor: float = 0.05
    cost_warmup: int = 100
    cost_k: float = 0.5
    cost_h: float = 10.0
    cost_sd_floor: float = 0.05
    cost_min_change: float = 0.15
    trend_buckets: int = 10
    trend_min_bucket: int = 5
    trend_every: int = 10
    trend_z: float = 2.58
    trend_min_change: float = 0.20
    trend_min_rate_change: float = 0.05
    unstable_z: float = 3.72
    unstable_min_spread: float = 0.15
    unstable_min_rate_spread: float = 0.05
    max_groups: int = 2000

    def __post_init__(self) -> None:
        for name in type(self).__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"signal threshold {name} must be a finite number, got {value!r}")
            if value <= 0:
                raise ConfigurationError(f"signal threshold {name} must be > 0, got {value!r}")
        if self.trend_buckets < 3:
            raise ConfigurationError(f"trend_buckets must be >= 3, got {self.trend_buckets}")


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """An anomaly (``kind`` one of :data:`AnomalyKind`) or a trend change (``kind`` ``trend``): what, where,
    the value against its baseline, the thresholds it crossed and the test statistic."""

    type: Literal["anomaly", "trend"]
    kind: str
    metric: Metric
    where: Where
    value: float
    baseline: float
    statistic: float
    threshold: dict[str, float]
    at: dt.datetime
    message: str
    trend: Trend | None = None
    previous: Trend | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "kind": self.kind,
            "metric": self.metric,
            "where": self.where.to_json(),
            "value": self.value,
            "baseline": self.baseline,
            "statistic": self.statistic if math.isfinite(self.statistic) else None,
            "threshold": self.threshold,
            "at": self.at.isoformat(),
            "message": self.message,
        }
        if self.type == "trend":
            data["trend"], data["previous"] = self.trend, self.previous
        return data


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One group's statistics over the window."""

    where: Where
    runs: int
    succeeded: int
    failed: int
    cancelled: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    tokens_per_run: float | None
    cost_per_run: float | None
    cost_usd: float | None
    quality: float | None
    ratings: int
    trends: dict[Metric, Trend]
    anomalies: tuple[str, ...]
    first_at: dt.datetime | None
    last_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where.to_json(),
            "label": self.where.label,
            "runs": self.runs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "success_rate": self.success_rate,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "tokens_per_run": self.tokens_per_run,
            "cost_per_run": self.cost_per_run,
            "cost_usd": self.cost_usd,
            "quality": self.quality,
            "ratings": self.ratings,
            "trends": dict(self.trends),
            "anomalies": list(self.anomalies),
            "first_at": self.first_at.isoformat() if self.first_at else None,
            "last_at": self.last_at.isoformat() if self.last_at else None,
        }


@dataclass(frozen=True, slots=True)
class SignalReport:
    """A snapshot: every group's statistics (programs first, then their versions, models and
    configurations), and the anomalies counted since the monitor started, by (program, dimension, kind)."""

    at: dt.datetime
    window_s: float
    window_runs: int
    groups: tuple[GroupStats, ...]
    anomaly_counts: dict[tuple[str | None, str, str], int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "window_s": self.window_s,
            "window_runs": self.window_runs,
            "groups": [group.to_json() for group in self.groups],
            "anomalies": [
                {"program": program, "dimension": dimension, "kind": kind, "count": count}
                for (program, dimension, kind), count in sorted(
                    self.anomaly_counts.items(), key=lambda item: (item[0][0] or "", item[0][1:])
                )
            ],
        }


# -- the engine: pure, in memory ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Obs:
    at: dt.datetime
    ok: bool | None  # None: cancelled
    latency: float | None  # successful runs only
    tokens: int | None
    cost: float | None


class _Group:
    __slots__ = ("alarms", "cusum", "dirty", "fresh", "runs", "scores", "trends", "where")

    def __init__(self, where: Where, limits: Thresholds) -> None:
        self.where = where
        self.runs: collections.deque[_Obs] = collections.deque(maxlen=limits.window_runs)
        self.scores: collections.deque[tuple[dt.datetime, float]] = collections.deque(
            maxlen=limits.window_runs
        )
        self.cusum = Cusum(
            warmup=limits.cost_warmup,
            k=limits.cost_k,
            h=limits.cost_h,
            sd_floor=limits.cost_sd_floor,
            min_shift=math.log1p(limits.cost_min_change),
        )
        self.alarms: set[str] = set()
        self.trends: dict[Metric, Trend] = dict.fromkeys(METRICS, "unknown")
        self.dirty = False
        self.fresh = 0  # values since the last trend test

    @property
    def last_at(self) -> dt.datetime:
        last = [self.runs[-1].at] if self.runs else []
        if self.scores:
            last.append(self.scores[-1][0])
        return max(last) if last else dt.datetime.min.replace(tzinfo=dt.UTC)

    def evict(self, cutoff: dt.datetime) -> None:
        while self.runs and self.runs[0].at < cutoff:
            self.runs.popleft()
            self.dirty = True
        while self.scores and self.scores[0][0] < cutoff:
            self.scores.popleft()
            self.dirty = True

    def series(self, metric: Metric) -> list[float]:
        if metric == "latency":
            return [o.latency for o in self.runs if o.latency is not None]
        if metric == "errors":
            return [0.0 if o.ok else 1.0 for o in self.runs if o.ok is not None]
        if metric == "cost":
            return [o.cost for o in self.runs if o.cost is not None]
        return [score for _, score in self.scores]


def _percentile(values: Sequence[float], q: int) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]


def _wheres(run: RunOutcome) -> list[Where]:
    wheres = [Where(run.program)]
    if run.version_id is not None:
        wheres.append(Where(run.program, version=run.version_id))
    wheres.extend(Where(run.program, model=model) for model in run.models)
    config = config_id(run.variables)
    if config is not None:
        wheres.append(Where(run.program, config=config))
    return wheres


class SignalEngine:
    """The statistics and detectors over observations handed to it; no I/O, no clock, not thread-safe
    (:class:`Signals` feeds it from the store under a lock). Tests drive it with scripted series."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self._groups: dict[Where, _Group] = {}
        self.anomaly_counts: collections.Counter[tuple[str | None, str, str]] = collections.Counter()
        self._pending: list[SignalEvent] = []

    def _group(self, where: Where) -> _Group:
        group = self._groups.get(where)
        if group is None:
            if len(self._groups) >= self.thresholds.max_groups:  # the least recently fed group goes
                oldest = min(self._groups.values(), key=lambda g: g.last_at)
                del self._groups[oldest.where]
            group = self._groups[where] = _Group(where, self.thresholds)
        return group

    def observe(self, run: RunOutcome) -> None:
        """Count one ended run in each of its groups (runs not yet ended are ignored)."""
        if run.status not in _ENDED:
            return
        ok = None if run.status == "cancelled" else run.status == "succeeded"
        obs = _Obs(
            at=run.ended_at or run.started_at,
            ok=ok,
            latency=run.duration_ms if ok and run.duration_ms is not None else None,
            tokens=run.total_tokens,
            cost=run.cost_usd if run.cost_usd is not None and math.isfinite(run.cost_usd) else None,
        )
        for where in _wheres(run):
            group = self._group(where)
            group.runs.append(obs)
            group.dirty = True
            group.fresh += 1
            if obs.cost is not None and obs.cost > 0 and ok is not None:
                self._cost(group, obs)

    def _cost(self, group: _Group, obs: _Obs) -> None:
        assert obs.cost is not None
        alarm = group.cusum.add(math.log(obs.cost))  # log: costs are skewed; shifts read as ratios
        if alarm is None:
            return
        limits = self.thresholds
        value, baseline = math.exp(alarm.estimate), math.exp(alarm.reference)
        direction = "up" if alarm.direction > 0 else "down"
        self._anomaly(
            group, "cost_drift", "cost", value, baseline, alarm.statistic,
            {"h": limits.cost_h, "k": limits.cost_k, "min_change": limits.cost_min_change}, obs.at,
            f"{group.where.label}: cost per run drifted {direction} to about ${value:.6f} from "
            f"${baseline:.6f} over the last {alarm.observations} runs (CUSUM {alarm.statistic:.1f} > "
            f"h={limits.cost_h:g})",
        )  # fmt: skip

    def rate(self, rated: RatedRun) -> None:
        """Count one feedback score in each of its run's groups."""
        if not math.isfinite(rated.score):
            return
        for where in _wheres(rated.run):
            group = self._group(where)
            group.scores.append((rated.created_at, rated.score))
            group.dirty = True
            group.fresh += 1

    def _anomaly(
        self,
        group: _Group,
        kind: AnomalyKind,
        metric: Metric,
        value: float,
        baseline: float,
        statistic: float,
        threshold: dict[str, float],
        at: dt.datetime,
        message: str,
    ) -> None:
        group.alarms.add(kind)
        self.anomaly_counts[(group.where.program, group.where.dimension, kind)] += 1
        self._pending.append(
            SignalEvent(
                "anomaly", kind, metric, group.where, value, baseline, statistic, threshold, at, message
            )
        )

    def evaluate(self, now: dt.datetime) -> list[SignalEvent]:
        """Drop what left the window, run the detectors (and, every ``trend_every`` new values, the trend
        tests) on groups with new data, and return the events since the last call (oldest first)."""
        cutoff = now - dt.timedelta(seconds=self.thresholds.window_s)
        for where in list(self._groups):
            group = self._groups[where]
            group.evict(cutoff)
            if not group.runs and not group.scores:
                del self._groups[where]
            elif group.dirty:
                group.dirty = False
                self._detect(group, now)
                if group.fresh >= self.thresholds.trend_every:
                    group.fresh = 0
                    self._classify(group, now)
        events, self._pending = self._pending, []
        return events

    @staticmethod
    def _edge(
        group: _Group, kind: AnomalyKind, z: float, z_min: float, effect: float, effect_min: float
    ) -> bool:
        """True when ``kind`` starts firing: ``z`` and ``effect`` both reach their thresholds. It is then
        reported once, and clears when either falls below half its threshold (hysteresis: a statistic
        hovering at the threshold does not report the same anomaly again and again)."""
        if kind in group.alarms:
            if z < z_min / 2 or effect < effect_min / 2:
                group.alarms.discard(kind)
            return False
        return z >= z_min and effect >= effect_min

    def _detect(self, group: _Group, now: dt.datetime) -> None:
        limits, where = self.thresholds, group.where
        latencies = group.series("latency")
        if len(latencies) >= limits.min_baseline + limits.latency_recent:
            recent, base = latencies[-limits.latency_recent :], latencies[: -limits.latency_recent]
            value, baseline = statistics.median(recent), statistics.median(base)
            z = robust_z(value, base, floor=0.01 * baseline)
            ratio = value / baseline if baseline > 0 else math.inf
            if self._edge(group, "latency_spike", z, limits.latency_z, ratio - 1, limits.latency_ratio - 1):
                self._anomaly(
                    group, "latency_spike", "latency", value, baseline, z,
                    {"z": limits.latency_z, "ratio": limits.latency_ratio}, now,
                    f"{where.label}: median latency of the last {len(recent)} runs is {value:,.0f} ms, "
                    f"{ratio:.1f}x the baseline {baseline:,.0f} ms (robust z {z:.2f} >= {limits.latency_z:g})",
                )  # fmt: skip
        errors = group.series("errors")
        if len(errors) >= limits.min_baseline + limits.error_recent:
            recent, base = errors[-limits.error_recent :], errors[: -limits.error_recent]
            failed, failed_before = int(sum(recent)), int(sum(base))
            value, baseline = failed / len(recent), failed_before / len(base)
            z = two_proportion_z(failed, len(recent), failed_before, len(base))
            jump = value - baseline if failed >= limits.error_min_failures else 0.0
            if self._edge(group, "error_rate_jump", z, limits.error_z, jump, limits.error_min_jump):
                self._anomaly(
                    group, "error_rate_jump", "errors", value, baseline, z,
                    {"z": limits.error_z, "min_failures": limits.error_min_failures,
                     "min_jump": limits.error_min_jump}, now,
                    f"{where.label}: {failed} of the last {len(recent)} runs failed ({value:.0%}, was "
                    f"{baseline:.0%}; z {z:.2f} >= {limits.error_z:g})",
                )  # fmt: skip
        scores = group.series("quality")
        if len(scores) >= limits.quality_min_baseline + limits.quality_recent:
            recent, base = scores[-limits.quality_recent :], scores[: -limits.quality_recent]
            value, baseline = statistics.fmean(recent), statistics.fmean(base)
            z = welch_z(base, recent, sd_floor=limits.quality_sd_floor)
            drop = baseline - value
            if self._edge(group, "quality_drop", z, limits.quality_z, drop, limits.quality_min_drop):
                self._anomaly(
                    group, "quality_drop", "quality", value, baseline, z,
                    {"z": limits.quality_z, "min_drop": limits.quality_min_drop}, now,
                    f"{where.label}: mean feedback score of the last {len(recent)} is {value:.2f}, down "
                    f"from {baseline:.2f} (Welch z {z:.2f} >= {limits.quality_z:g})",
                )  # fmt: skip
        if "cost_drift" in group.alarms and group.cusum.reference is not None:
            group.alarms.discard("cost_drift")  # the new level has been learnt: it is the normal now

    def _classify(self, group: _Group, now: dt.datetime) -> None:
        limits = self.thresholds
        for metric in METRICS:
            previous = group.trends[metric]
            trend, first, last, z = self._trend(group.series(metric), metric, previous)
            group.trends[metric] = trend
            if trend == previous or trend == "unknown" or (previous == "unknown" and trend == "stable"):
                continue
            threshold = {"z": limits.unstable_z if trend == "unstable" else limits.trend_z}
            self._pending.append(
                SignalEvent(
                    "trend", "trend", metric, group.where, last, first, z, threshold, now,
                    f"{group.where.label}: {metric} is {trend} (was {previous}; first bucket {first:.4g}, "
                    f"last {last:.4g})",
                    trend=trend, previous=previous,
                )
            )  # fmt: skip

    def _trend(
        self, values: list[float], metric: Metric, previous: Trend
    ) -> tuple[Trend, float, float, float]:
        """(trend, first bucket, last bucket, statistic) of one metric's values in time order. A trend
        already found needs only half the thresholds to stay (hysteresis, as for anomalies)."""
        limits = self.thresholds
        count = limits.trend_buckets
        if len(values) < count * limits.trend_min_bucket:
            return "unknown", math.nan, math.nan, math.nan
        size = len(values) / count
        buckets = [values[round(i * size) : round((i + 1) * size)] for i in range(count)]
        rate = metric in ("errors", "quality")
        stats = [statistics.fmean(b) if rate else statistics.median(b) for b in buckets]
        first, last = stats[0], stats[-1]
        z = mann_kendall_z(stats)
        change = last - first
        size_min = limits.trend_min_rate_change if rate else limits.trend_min_change * abs(first)
        better = change > 0 if metric == "quality" else change < 0
        direction: Trend = "improving" if better else "degrading"
        keep = 0.5 if previous == direction else 1.0
        if (
            abs(z) >= limits.trend_z * keep
            and abs(change) >= size_min * keep
            and math.copysign(1.0, z) == math.copysign(1.0, change)
        ):
            return direction, first, last, z
        if metric == "errors":
            failures = [int(sum(b)) for b in buckets]
            spread_z = chi2_z(chi2_homogeneity(failures, [len(b) for b in buckets]), count - 1)
        else:
            spread_z = chi2_z(kruskal_wallis_h(buckets), count - 1)
        spread = statistics.pstdev(stats)
        if not rate:
            mean = statistics.fmean(stats)
            spread = spread / mean if mean > 0 else 0.0
        keep = 0.5 if previous == "unstable" else 1.0
        spread_min = limits.unstable_min_rate_spread if rate else limits.unstable_min_spread
        if spread_z >= limits.unstable_z * keep and spread >= spread_min * keep:
            return "unstable", first, last, spread_z
        return "stable", first, last, z

    def report(
        self, now: dt.datetime, *, program: str | None = None, programs: Iterable[str] | None = None
    ) -> SignalReport:
        """Every group's statistics (only ``program``'s, or those of ``programs``, when given)."""
        allowed = set(programs) if programs is not None else None
        groups = [
            self._stats(group)
            for where, group in self._groups.items()
            if (program is None or where.program == program) and (allowed is None or where.program in allowed)
        ]
        order = {"program": 0, "version": 1, "model": 2, "config": 3}
        groups.sort(key=lambda g: (g.where.program or "", order[g.where.dimension], g.where))
        counts = {
            key: count
            for key, count in self.anomaly_counts.items()
            if (program is None or key[0] == program) and (allowed is None or key[0] in allowed)
        }
        limits = self.thresholds
        return SignalReport(now, limits.window_s, limits.window_runs, tuple(groups), counts)

    @staticmethod
    def _stats(group: _Group) -> GroupStats:
        runs = list(group.runs)
        succeeded = sum(1 for o in runs if o.ok)
        failed = sum(1 for o in runs if o.ok is False)
        latencies = [o.latency for o in runs if o.latency is not None]
        tokens = [o.tokens for o in runs if o.tokens is not None]
        costs = [o.cost for o in runs if o.cost is not None]
        scores = [score for _, score in group.scores]
        times = [o.at for o in runs] + [at for at, _ in group.scores]
        return GroupStats(
            where=group.where,
            runs=len(runs),
            succeeded=succeeded,
            failed=failed,
            cancelled=len(runs) - succeeded - failed,
            success_rate=succeeded / (succeeded + failed) if succeeded + failed else None,
            p50_ms=_percentile(latencies, 50),
            p95_ms=_percentile(latencies, 95),
            tokens_per_run=statistics.fmean(tokens) if tokens else None,
            cost_per_run=statistics.fmean(costs) if costs else None,
            cost_usd=math.fsum(costs) if costs else None,
            quality=statistics.fmean(scores) if scores else None,
            ratings=len(scores),
            trends=dict(group.trends),
            anomalies=tuple(sorted(group.alarms)),
            first_at=min(times) if times else None,
            last_at=max(times) if times else None,
        )
