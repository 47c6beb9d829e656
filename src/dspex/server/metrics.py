"""Prometheus metrics of one service instance, in its own ``CollectorRegistry`` (no global state).

- ``dspex_http_requests_total{method, route, status}`` and ``dspex_http_request_duration_seconds{method,
  route}``: ``route`` is the route template (``/v1/programs/{name}/runs``), never the raw path, so the
  label set stays bounded; unmatched paths count as ``<unmatched>``.
- ``dspex_runs_total{program, status}``: runs through the service (``succeeded``, ``failed``,
  ``cancelled``); ``dspex_run_cache_hits_total{program}``: those answered from the program cache.
- ``dspex_jobs{status}`` and ``dspex_workers``: the job queue, read when scraped.
- ``dspex_pool_workers{pool, state}``, ``dspex_pool_queued{pool}``, ``dspex_pool_worker_rss_bytes{pool,
  worker}``, ``dspex_pool_tasks_total{pool, outcome}``, ``dspex_pool_replaced_total{pool, reason}``: the
  worker pools this process started, read when scraped.

The HTTP metrics come from a plain ASGI middleware (cheaper than Starlette's ``BaseHTTPMiddleware``).
"""

from __future__ import annotations

import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from dspex.pools.pool import PoolStatus

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
        self.registry.register(self)  # a collector: it has collect()

    def run(self, program: str, status: str, *, cache_hit: bool = False) -> None:
        self.runs.labels(program, status).inc()
        if cache_hit:
            self.cache_hits.labels(program).inc()

    def render(self, queue: dict[str, int], workers: int, pools: Sequence[PoolStatus] = ()) -> bytes:
        for status, count in queue.items():
            self.jobs.labels(status).set(count)
        self.workers.set(workers)
        self._pools = list(pools)
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
        yield from (states, queued, rss, tasks, replaced)


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
