"""Operations: ``/health`` (database, queue depth, live workers) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from dspex.server.app import dspex_of, metrics_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse
from dspex.server.metrics import CONTENT_TYPE
from dspex.server.models import HealthOut
from dspex.server.routes._common import errors

if TYPE_CHECKING:
    from dspex.runtime.app import App

router = APIRouter(tags=["operations"])
log = logging.getLogger("dspex.server")
_WORKER_SCAN = 1000


def _queue_and_workers(app: App, stale_s: float) -> tuple[dict[str, int], list[str]]:
    """Jobs per status, and the workers holding a running job with a heartbeat newer than ``stale_s``."""
    counts = app.jobs.counts()
    fresh = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=stale_s)
    workers = {
        job.lease_owner
        for job in app.jobs.list(status="running", limit=_WORKER_SCAN)
        if job.lease_owner and job.heartbeat_at is not None and job.heartbeat_at >= fresh
    }
    return counts, sorted(workers)


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The database is unreachable"}},
)
def health(request: Request) -> JSONResponse:
    """Liveness and readiness without a key: the database answers, queue depth, workers seen working."""
    try:
        counts, workers = _queue_and_workers(dspex_of(request), options_of(request).worker_stale_s)
    except Exception:
        log.warning("health check: the database did not answer", exc_info=True)
        body = {
            "status": "unavailable",
            "database": "unavailable",
            "queue": {},
            "queue_depth": 0,
            "workers": [],
            "pools": _pools(request),
            "lms": dspex_of(request).resilience.status(),
        }
        return JSONResponse(body, status_code=503)
    body = {
        "status": "ok",
        "database": "ok",
        "queue": counts,
        "queue_depth": counts.get("queued", 0),
        "workers": workers,
        "pools": _pools(request),
        "lms": dspex_of(request).resilience.status(),
    }
    return JSONResponse(body)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **errors(401, 403),
    },
)
def metrics(request: Request, _principal: Principal = Depends(require("admin"))) -> Response:
    """Prometheus metrics (needs the ``admin`` scope): requests by route and status, latency, runs by
    program and status, cache hits, jobs per status, live workers, and per pool: workers by state,
    queued tasks, each worker's RSS, tasks completed and failed, replacements by reason; per LM endpoint:
    its breaker's state and openings, rate-limit usage and retries; per program, the live signals
    (success rate, latency, cost per run, quality) and the anomalies detected; per adaptive program, each
    arm's traffic share, runs served, posterior mean reward and whether it is active."""
    counts, workers = _queue_and_workers(dspex_of(request), options_of(request).worker_stale_s)
    pools = dspex_of(request).pools.status()
    lms = dspex_of(request).resilience.status()
    signals = dspex_of(request).signals
    signals.poll(fresh_s=options_of(request).events_poll_s / 2)
    app = dspex_of(request)
    adaptive = [app.adapt.get(record.name).status(buckets=1) for record in app.adapt.list()]
    body = metrics_of(request).render(counts, len(workers), pools, lms, signals.report(), adaptive)
    return Response(body, media_type=CONTENT_TYPE)


def _pools(request: Request) -> list[dict[str, object]]:
    return [status.to_json() for status in dspex_of(request).pools.status()]
