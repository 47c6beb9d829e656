"""Pages of the run record: the overview, the executions list (filters, search, paging, live rows) and
one execution (inputs, outputs, span waterfall, usage per model, feedback)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, Response

from dspex.errors import ConfigurationError
from dspex.server.sse import Event, EventStream, RawData
from dspex.server.ui._web import UiError, Viewer, render, viewer
from dspex.server.ui.views import runs_per_minute, waterfall
from dspex.store.executions import ExecutionFilter

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.executions import ExecutionRecord

router = APIRouter(prefix="/ui")

PAGE_SIZE = 50
COUNT_LIMIT = 1_000
STATUSES = ("running", "succeeded", "failed", "cancelled", "abandoned")
_FLUSH_S = 1.0
_STATISTICS_EVERY_S = 600.0


def _program_choice(view: Viewer, program: str | None) -> str | None:
    """A key limited to some programs sees one of them at a time (the first by default)."""
    allowed = view.principal.programs
    if allowed is None:
        return program or None
    if program in allowed:
        return program
    return sorted(allowed)[0] if allowed else None


@router.get("", response_class=HTMLResponse)
def overview(request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Today, per program: runs, error rate, p95 latency, tokens and cost; runs per minute this hour."""
    app = view.app
    app.flush(_FLUSH_S)
    now = dt.datetime.now(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows: dict[str | None, dict[str, Any]] = {}
    for stats in app.executions.stats(ExecutionFilter(since=midnight)):
        if not view.principal.may_use(stats.program):
            continue
        row = rows.setdefault(
            stats.program,
            {"program": stats.program, "count": 0, "failed": 0, "p95_ms": None, "tokens": 0, "cost": 0.0},
        )
        row["count"] += stats.count
        row["failed"] += stats.failed
        row["tokens"] += stats.total_tokens
        # Unknown (a model without a price) stays unknown rather than counting as free.
        row["cost"] = None if row["cost"] is None or stats.cost_usd is None else row["cost"] + stats.cost_usd
        if stats.p95_ms is not None:  # the slowest version's p95 bounds the program's
            row["p95_ms"] = max(row["p95_ms"] or 0.0, stats.p95_ms)
    for row in rows.values():
        row["error_rate"] = row["failed"] / row["count"] if row["count"] else 0.0
    restricted = view.principal.programs
    starts = [
        started
        for program in (sorted(restricted) if restricted is not None else [None])
        for started in app.executions.started_since(now - dt.timedelta(minutes=60), program)
    ]
    per_minute = runs_per_minute(starts, now)
    return render(
        request,
        "overview.html",
        view=view,
        programs=sorted(rows.values(), key=lambda r: str(r["program"])),
        per_minute=per_minute,
        per_minute_now=sum(per_minute[-5:]) / 5,
        jobs=app.jobs.counts(),
    )


def _filter_of(request: Request, view: Viewer) -> tuple[ExecutionFilter, dict[str, str]]:
    """The executions filter from the query string; a bad value is a 400 naming the field."""
    query = request.query_params
    given = {name: query[name] for name in _FILTERS if query.get(name)}
    program = _program_choice(view, given.get("program"))
    if program:
        given["program"] = program
    if len(given.get("model", "")) > 300:
        raise UiError(400, "Bad filter", "model is a model name of at most 300 characters")
    status = given.get("status")
    if status is not None and status not in STATUSES:
        raise UiError(400, "Bad filter", f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    times: dict[str, dt.datetime | None] = {}
    for name in ("since", "until"):
        text = given.get(name)
        try:
            value = dt.datetime.fromisoformat(text) if text else None
        except ValueError:
            raise UiError(
                400, "Bad filter", f"{name} must be a date-time such as 2026-12-01T09:00, got {text!r}"
            ) from None
        times[name] = (value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value) if value else None
    cache = given.get("cache")
    if cache not in (None, "hit", "miss"):
        raise UiError(400, "Bad filter", f"cache must be 'hit' or 'miss', got {cache!r}")
    where = ExecutionFilter(
        program=program,
        version_id=given.get("version") or None,
        status=status,  # type: ignore[arg-type]  # checked against STATUSES above
        since=times["since"],
        until=times["until"],
        cache_hit=None if cache is None else cache == "hit",
        id_prefix=given.get("q") or None,
        model=given.get("model") or None,
    )
    return where, given


_FILTERS = ("program", "version", "status", "since", "until", "cache", "model", "q")


def cursor_of(record: ExecutionRecord) -> str:
    """A page cursor: the row's start time and id (see ``ExecutionRepository.find``)."""
    return f"{record.started_at.isoformat()}~{record.id}"


def _cursor(request: Request, name: str) -> tuple[dt.datetime, str] | None:
    text = request.query_params.get(name)
    if not text:
        return None
    when, _, execution_id = text.partition("~")
    try:
        started = dt.datetime.fromisoformat(when)
    except ValueError:
        started = None
    if started is None or not execution_id or len(execution_id) > 64:
        raise UiError(400, "Bad page", f"{name} must be a page cursor from a link of this page, got {text!r}")
    return (started if started.tzinfo else started.replace(tzinfo=dt.UTC)), execution_id


def _refresh_statistics(request: Request, app: App) -> None:
    """The planner's statistics, refreshed at most every ten minutes by this server: filtered listings
    stay on the right index as the table grows."""
    state = request.app.state
    now = time.monotonic()
    last: float | None = getattr(state, "ui_statistics_at", None)
    if last is None or now - last > _STATISTICS_EVERY_S:
        state.ui_statistics_at = now
        app.executions.refresh_statistics()


@router.get("/executions", response_class=HTMLResponse)
def executions(request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Executions newest first, 50 a page, paged by cursor (``before``/``after``: the last row seen), so
    a page deep in 100,000 rows costs what the first does; one query for the page, one count."""
    where, given = _filter_of(request, view)
    before, after = _cursor(request, "before"), _cursor(request, "after")
    app = view.app
    app.flush(_FLUSH_S)
    _refresh_statistics(request, app)
    # One row more than the page, in the direction of travel: whether there is a further page.
    found = app.executions.find(where, limit=PAGE_SIZE + 1, before=before, after=after)
    more = len(found) > PAGE_SIZE
    records = (found[1:] if after is not None else found[:-1]) if more else found
    # Counted up to a bound: past it the page says "1,000+" (an exact count of an unselective filter
    # reads every row).
    total = app.executions.count(where, limit=COUNT_LIMIT + 1)
    programs = [r.name for r in app.programs.list_programs() if view.principal.may_use(r.name)]
    first = before is None and (after is None or not more)
    older = records and (more if after is None else True)
    newer = records and not first
    newest = records[0].started_at.isoformat() if records and first else None
    return render(
        request,
        "executions.html",
        view=view,
        records=records,
        total=f"{COUNT_LIMIT:,}+" if total > COUNT_LIMIT else f"{total:,}",
        given=given,
        programs=programs,
        statuses=STATUSES,
        older=cursor_of(records[-1]) if older else None,
        newer=cursor_of(records[0]) if newer else None,
        live_query=_live_query(given, newest) if first else None,
    )


def _live_query(given: dict[str, str], newest: str | None) -> str:
    from urllib.parse import urlencode

    params = {k: v for k, v in given.items() if k in ("program", "version", "status", "cache", "model", "q")}
    if newest is not None:
        params["after"] = newest
    return urlencode(params)


@router.get("/live/executions")
async def live_executions(request: Request, view: Viewer = Depends(viewer)) -> EventStream:
    """New executions matching the page's filters, as table rows (``execution`` events, htmx SSE)."""
    where, _ = _filter_of(request, view)
    after_text = request.query_params.get("after")
    try:
        after = dt.datetime.fromisoformat(after_text) if after_text else None
    except ValueError:
        raise UiError(400, "Bad filter", f"after must be a date-time, got {after_text!r}") from None
    options = request.app.state.options
    env = request.app.state.ui_templates
    template = env.get_template("_execution_row.html")

    async def follow() -> AsyncIterator[Event]:
        # A run is sent once it has ended (a running row would stay "running" on the page); the window
        # is fixed at the page's newest row, so a long run that ends after quicker ones is not missed.
        start = after or dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        window = dataclasses.replace(where, since=max(start, where.since) if where.since else start)
        seen: set[str] = set()
        deadline = time.monotonic() + options.events_timeout_s
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(_newer, view.app, window)
            for record in reversed(found):  # oldest first: each goes on top of the table
                if record.id in seen or record.status == "running" or record.started_at <= start:
                    continue  # already sent, not ended yet, or already on the page
                seen.add(record.id)
                yield "execution", RawData(template.render(record=record, root="/ui"))
            await asyncio.sleep(options.events_poll_s)
        yield "timeout", {"after_s": options.events_timeout_s}

    return EventStream(follow(), ping_s=options.ping_s)


def _newer(app: App, where: ExecutionFilter) -> list[ExecutionRecord]:
    app.flush(_FLUSH_S)
    return app.executions.find(where, limit=PAGE_SIZE)


@router.get("/executions/{execution_id}", response_class=HTMLResponse)
def execution(execution_id: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """One execution: inputs, outputs, error, the span waterfall, usage per model and feedback."""
    if len(execution_id) > 64:
        raise UiError(400, "Bad id", "an execution id has at most 64 characters")
    app = view.app
    try:
        record = app.executions.get(execution_id)
        if record is None or record.status == "running":
            app.flush(_FLUSH_S)
            record = app.executions.get(execution_id)
    except ConfigurationError as exc:  # an ambiguous prefix
        raise UiError(400, "Ambiguous id", exc.message) from exc
    if record is None:
        raise UiError(404, "Not found", f"no execution {execution_id!r}")
    view.check_program(record.program)
    return render(
        request,
        "execution.html",
        view=view,
        record=record,
        bars=waterfall(record.trace),
        feedback=app.feedback.list(record.id),
    )
