"""Live signals (:mod:`dspex.telemetry.signals`): a snapshot, and a server-sent event stream of statistics,
anomalies and trend changes.

Every follower shares the App's one monitor (``app.signals``): each poll reads only what is new in the
store, whoever asks; a poll younger than half of ``events_poll_s`` is reused. A key limited to some
programs must name one (``?program=``) and sees only its groups and events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request

from dspex.server.app import ServiceOptions, dspex_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse
from dspex.server.models import SignalReportOut
from dspex.server.routes._common import errors, restricted_program, single_query_values
from dspex.server.sse import SSE_EVENT_SCHEMA, Event, EventStream, EventStreamDoc

if TYPE_CHECKING:
    from dspex.telemetry.monitor import Signals
    from dspex.telemetry.signals import SignalEvent

router = APIRouter(prefix="/v1/signals", tags=["signals"], dependencies=[Depends(single_query_values)])
log = logging.getLogger("dspex.server")

_read = require("programs:read")
Program = Annotated[str | None, Query(max_length=200, description="Only this program's groups and events.")]

_EVENTS_DOC = """Server-sent events until the stream's time limit (the client reconnects to follow longer):

- `stats`: a snapshot, first and then every `stats_s` seconds: `{at, window_s, window_runs, groups:
  [{where, label, runs, success_rate, p50_ms, p95_ms, tokens_per_run, cost_per_run, quality, ratings,
  trends, anomalies...}], anomalies: [{program, dimension, kind, count}]}` (as `GET /v1/signals/stats`)
- `anomaly`: `{type, kind (latency_spike, error_rate_jump, quality_drop, cost_drift), metric, where,
  value, baseline, statistic, threshold, at, message}`, when an anomaly starts
- `trend`: the same with `trend` and `previous` (improving, degrading, unstable, stable), when a metric's
  trend changes
- `error`: the store could not be read (`{code, message}`); the stream ends, reconnect later
- `timeout`: the stream's time limit passed
"""


def _poll(signals: Signals, options: ServiceOptions) -> None:
    signals.poll(fresh_s=options.events_poll_s / 2)


def _visible(event: SignalEvent, program: str | None, principal: Principal) -> bool:
    name = event.where.program
    return (program is None or name == program) and principal.may_use(name)


@router.get("/stats", response_model=SignalReportOut, responses=errors(401, 403, 422))
def stats(request: Request, program: Program = None, principal: Principal = Depends(_read)) -> JSONResponse:
    """Rolling statistics, trends and firing anomalies per program, version, model and variable
    configuration, as of now."""
    restricted_program(principal, program)
    app = dspex_of(request)
    signals = app.signals
    _poll(signals, options_of(request))
    return JSONResponse(signals.report(program=program, programs=principal.programs).to_json())


@router.get(
    "",
    response_class=EventStreamDoc,
    responses={
        200: {"description": _EVENTS_DOC, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **errors(401, 403, 422),
    },
)
async def follow(
    request: Request,
    program: Program = None,
    stats_s: Annotated[
        float, Query(ge=0.1, le=3600, allow_inf_nan=False, description="Seconds between `stats` events.")
    ] = 5.0,
    principal: Principal = Depends(_read),
) -> EventStream:
    """Follow the signals as server-sent events (see the 200 response)."""
    restricted_program(principal, program)
    options = options_of(request)
    signals = dspex_of(request).signals
    return EventStream(_events(signals, program, stats_s, principal, options), ping_s=options.ping_s)


def _step(
    signals: Signals,
    options: ServiceOptions,
    cursor: int,
    program: str | None,
    principal: Principal,
    with_stats: bool,
) -> tuple[int, list[Event]]:
    """One poll (off the event loop: it reads the store and takes the monitor's lock): the events after
    ``cursor`` this follower may see, then a ``stats`` snapshot when due."""
    _poll(signals, options)
    found: list[Event] = []
    for seq, event in signals.events(after=cursor):
        cursor = seq
        if _visible(event, program, principal):
            found.append((event.type, event.to_json()))
    if with_stats:
        found.append(("stats", signals.report(program=program, programs=principal.programs).to_json()))
    return cursor, found


async def _events(
    signals: Signals, program: str | None, stats_s: float, principal: Principal, options: ServiceOptions
) -> AsyncIterator[Event]:
    deadline = time.monotonic() + options.events_timeout_s
    cursor = signals.last_seq  # what the first poll finds is news to this follower too
    next_stats = 0.0
    while True:
        now = time.monotonic()
        with_stats = now >= next_stats
        if with_stats:
            next_stats = now + stats_s
        try:
            cursor, found = await asyncio.to_thread(
                _step, signals, options, cursor, program, principal, with_stats
            )
        except Exception:
            # Logged with its traceback; the client is told and reconnects later.
            log.exception("signals: polling the store failed")
            yield (
                "error",
                {
                    "code": "signals_unavailable",
                    "message": "the store could not be read; the server log has the details",
                },
            )
            return
        for event in found:
            yield event
        if time.monotonic() >= deadline:
            yield "timeout", {"after_s": options.events_timeout_s}
            return
        await asyncio.sleep(options.events_poll_s)
