"""Prometheus metrics of one service instance, in its own ``CollectorRegistry`` (no global state).

- ``dspex_http_requests_total{method, route, status}`` and ``dspex_http_request_duration_seconds{method,
  route}``: ``route`` is the route template (``/v1/programs/{name}/runs``), never the raw path, so the
  label set stays bounded; unmatched paths count as ``<unmatched>``.
- ``dspex_runs_total{program, status}``: runs through the service (``succeeded``, ``failed``,
  ``cancelled``); ``dspex_run_cache_hits_total{program}``: those answered from the program cache.
- ``dspex_jobs{status}`` and ``dspex_workers``: the job queue, read when scraped.
- ``dspex_pool_workers{pool, state}``, ``dspex_pool_queued{pool}``, ``dspex_pool_worker_rss_bytes{pool,
  worker}``, ``dspex_pool_tasks_total{pool, outcome}``, ``dspex_pool_replaced_total{pool, reason}``,
  ``dspex_pool_coalesced_runs_total{pool}`` (runs sent in groups, ``coalesce``): the
  worker pools this process started, read when scraped.
- ``dspex_lm_breaker_state{endpoint, state}`` (1 for the breaker's current state, 0 for the others),
  ``dspex_lm_breaker_opens_total{endpoint}``, ``dspex_lm_breaker_failure_rate{endpoint}``,
  ``dspex_lm_limit_in_flight{model}``, ``dspex_lm_limit_requests_last_minute{model}``,
  ``dspex_lm_limit_tokens_last_minute{model}`` and ``dspex_lm_retries_last_minute{model}``: the LM
  endpoints' resilience (shared across processes when Redis is configured), read when scraped.
- ``dspex_signal_runs{program}``, ``dspex_signal_success_rate{program}``,
  ``dspex_signal_latency_p50_seconds{program}``, ``dspex_signal_latency_p95_seconds{program}``,
  ``dspex_signal_cost_per_run_usd{program}``, ``dspex_signal_quality{program}`` (mean feedback score,
  0..1): the live signals' window per program (:mod:`dspex.telemetry.signals`; ad-hoc runs as
  ``(ad hoc)``); ``dspex_signal_anomalies_total{program, dimension, kind}``: anomalies detected since the
  monitor started, read when scraped.
- ``dspex_adaptive_arm_share{adaptive, arm}`` (of the runs it served), ``dspex_adaptive_arm_served{adaptive,
  arm}``, ``dspex_adaptive_arm_posterior_mean{adaptive, arm}`` (the policy's estimate of the arm's reward),
  ``dspex_adaptive_arm_active{adaptive, arm}`` (0 once retired) and ``dspex_adaptive_explore_share{adaptive}``:
  every adaptive program's arms (:mod:`dspex.adapt`), read when scraped.

The HTTP metrics come from a plain ASGI middleware (cheaper than Starlette's ``BaseHTTPMiddleware``).
"""

from __future__ import annotations

import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from dspex.pools.pool import PoolStatus
    from dspex.telemetry.signals import SignalReport

__all__ = ["CONTENT_TYPE", "Metrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's collectors; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dspex_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "dspex_http_request_duration_seconds",
            "HTTP request latency (to the end of the response)",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.runs = Counter("dspex_runs", "Program runs through the service", ["program", "status"],
                            registry=self.registry)  # fmt: skip
        self.cache_hits = Counter(
            "dspex_run_cache_hits", "Runs answered from the program-level cache", ["program"],
            registry=self.registry,
        )  # fmt: skip
        self.jobs = Gauge("dspex_jobs", "Jobs per status", ["status"], registry=self.registry)
        self.workers = Gauge("dspex_workers", "Workers with a running job and a fresh heartbeat",
                             registry=self.registry)  # fmt: skip
        self._pools: list[PoolStatus] = []
        self._lms: dict[str, Any] = {}
        self._signals: SignalReport | None = None
        self._adaptive: list[dict[str, Any]] = []
        self.registry.register(self)  # a collector: it has collect()

    def run(self, program: str, status: str, *, cache_hit: bool = False) -> None:
        self.runs.labels(program, status).inc()
        if cache_hit:
            self.cache_hits.labels(program).inc()

    def render(
        self,
        queue: dict[str, int],
        workers: int,
        pools: Sequence[PoolStatus] = (),
        lms: dict[str, Any] | None = None,
        signals: SignalReport | None = None,
        adaptive: Sequence[dict[str, Any]] = (),
    ) -> bytes:
        for status, count in queue.items():
            self.jobs.labels(status).set(count)
        self.workers.set(workers)
        self._pools = list(pools)
        self._lms = dict(lms or {})
        self._signals = signals
        self._adaptive = list(adaptive)
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The pools' figures, read at scrape time (a collector registered on :attr:`registry`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        states = GaugeMetricFamily("dspex_pool_workers", "Pool workers by state", labels=["pool", "state"])
        queued = GaugeMetricFamily("dspex_pool_queued", "Tasks waiting for a pool worker", labels=["pool"])
        rss = GaugeMetricFamily(
            "dspex_pool_worker_rss_bytes", "Resident memory of each pool worker", labels=["pool", "worker"]
        )
        tasks = CounterMetricFamily("dspex_pool_tasks", "Pool tasks by outcome", labels=["pool", "outcome"])
        replaced = CounterMetricFamily(
            "dspex_pool_replaced", "Pool workers replaced, by reason", labels=["pool", "reason"]
        )
        coalesced = CounterMetricFamily(
            "dspex_pool_coalesced_runs",
            "Runs sent to a pool worker in a group of queued runs",
            labels=["pool"],
        )
        for pool in self._pools:
            by_state = Counter_(w.state for w in pool.workers)
            for state in ("starting", "idle", "busy", "stopping", "dead"):
                states.add_metric([pool.name, state], by_state.get(state, 0))
            queued.add_metric([pool.name], pool.queued)
            for worker in pool.workers:
                if worker.rss_mb is not None:
                    rss.add_metric([pool.name, worker.name], worker.rss_mb * 1024 * 1024)
            tasks.add_metric([pool.name, "completed"], pool.completed)
            tasks.add_metric([pool.name, "failed"], pool.failed)
            for reason, count in pool.replaced.items():
                replaced.add_metric([pool.name, reason], count)
            coalesced.add_metric([pool.name], pool.coalesced)
        yield from (states, queued, rss, tasks, replaced, coalesced)
        yield from self._collect_lms()
        yield from self._collect_signals()
        yield from self._collect_adaptive()

    def _collect_adaptive(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        def arm_gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["adaptive", "arm"])

        share = arm_gauge("dspex_adaptive_arm_share", "Share of the adaptive program's runs the arm served")
        served = arm_gauge("dspex_adaptive_arm_served", "Runs the arm served")
        mean = arm_gauge("dspex_adaptive_arm_posterior_mean", "The policy's estimate of the arm's reward")
        active = arm_gauge("dspex_adaptive_arm_active", "1 while the arm may serve, 0 once retired")
        explore = GaugeMetricFamily(
            "dspex_adaptive_explore_share", "Share of recent runs served to explore", labels=["adaptive"]
        )
        for program in self._adaptive:
            name = str(program["name"])
            if program.get("explore_share") is not None:
                explore.add_metric([name], program["explore_share"])
            for arm in program.get("arms", ()):
                label = [name, str(arm["arm"])]
                share.add_metric(label, arm.get("share") or 0.0)
                served.add_metric(label, arm.get("served") or 0)
                active.add_metric(label, 1.0 if arm.get("status") == "active" else 0.0)
                if arm.get("posterior_mean") is not None:
                    mean.add_metric(label, arm["posterior_mean"])
        yield from (share, served, mean, active, explore)

    def _collect_signals(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["program"])

        runs = gauge("dspex_signal_runs", "Ended runs in the signals window")
        success = gauge(
            "dspex_signal_success_rate", "Succeeded / (succeeded + failed + abandoned) in the window"
        )
        p50 = gauge("dspex_signal_latency_p50_seconds", "Median latency of successful runs in the window")
        p95 = gauge("dspex_signal_latency_p95_seconds", "95th percentile latency of successful runs")
        cost = gauge("dspex_signal_cost_per_run_usd", "Mean cost per run in the window")
        quality = gauge("dspex_signal_quality", "Mean feedback score (0..1) in the window")
        anomalies = CounterMetricFamily(
            "dspex_signal_anomalies", "Anomalies detected, by kind", labels=["program", "dimension", "kind"]
        )
        report = self._signals
        for group in report.groups if report is not None else ():
            if group.where.dimension != "program":
                continue
            label = [group.where.label]
            runs.add_metric(label, group.runs)
            for family, value, scale in (
                (success, group.success_rate, 1.0),
                (p50, group.p50_ms, 0.001),
                (p95, group.p95_ms, 0.001),
                (cost, group.cost_per_run, 1.0),
                (quality, group.quality, 1.0),
            ):
                if value is not None:
                    family.add_metric(label, value * scale)
        for (program, dimension, kind), count in (
            report.anomaly_counts if report is not None else {}
        ).items():
            anomalies.add_metric([program if program is not None else "(ad hoc)", dimension, kind], count)
        yield from (runs, success, p50, p95, cost, quality, anomalies)

    def _collect_lms(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily(
            "dspex_lm_breaker_state", "Circuit breaker state per LM endpoint", labels=["endpoint", "state"]
        )
        opens = CounterMetricFamily(
            "dspex_lm_breaker_opens", "Times an LM endpoint's breaker opened", labels=["endpoint"]
        )
        rate = GaugeMetricFamily(
            "dspex_lm_breaker_failure_rate", "Failure rate in the breaker's window", labels=["endpoint"]
        )
        for breaker in self._lms.get("breakers", ()):
            for name in ("closed", "half_open", "open"):
                state.add_metric([breaker["endpoint"], name], 1.0 if breaker["state"] == name else 0.0)
            opens.add_metric([breaker["endpoint"]], breaker.get("opens") or 0)
            if breaker.get("failure_rate") is not None:
                rate.add_metric([breaker["endpoint"]], breaker["failure_rate"])
        in_flight = GaugeMetricFamily("dspex_lm_limit_in_flight", "LM calls in flight", labels=["model"])
        requests = GaugeMetricFamily(
            "dspex_lm_limit_requests_last_minute", "LM requests in the last minute", labels=["model"]
        )
        tokens = GaugeMetricFamily(
            "dspex_lm_limit_tokens_last_minute", "LM tokens in the last minute", labels=["model"]
        )
        for limit in self._lms.get("limits", ()):
            for family, key in (
                (in_flight, "in_flight"),
                (requests, "requests_last_min"),
                (tokens, "tokens_last_min"),
            ):
                if limit.get(key) is not None:
                    family.add_metric([limit["key"]], limit[key])
        retries = GaugeMetricFamily(
            "dspex_lm_retries_last_minute", "LM retries in the last minute (this process)", labels=["model"]
        )
        for model, budget in self._lms.get("budgets", {}).items():
            retries.add_metric([model], budget["retries_last_min"])
        yield from (state, opens, rate, in_flight, requests, tokens, retries)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # labels() builds a key per call; the children are kept instead (the label sets are bounded).
        self._count: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._observe: dict[tuple[str, str], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded labels
            observe = self._observe.get((method, template))
            if observe is None:
                observe = self._observe[(method, template)] = self.metrics.latency.labels(
                    method, template
                ).observe
            count = self._count.get((method, template, status))
            if count is None:
                count = self._count[(method, template, status)] = self.metrics.requests.labels(
                    method, template, str(status)
                ).inc
            count()
            observe(time.perf_counter() - start)
