"""Executions: the record of every run, filtered; one with its trace; aggregate stats.

Records are written behind the runs; reads here flush the writer first (up to two seconds), so a client
that just ran a program sees its record.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BeforeValidator

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse, not_found
from dspex.server.models import ExecutionOut, ExecutionPage, ExecutionStatsOut
from dspex.server.routes._common import errors, restricted_program, single_query_values
from dspex.store.executions import ExecutionFilter

router = APIRouter(prefix="/v1/executions", tags=["executions"], dependencies=[Depends(single_query_values)])

_read = require("programs:read")
_FLUSH_S = 2.0

Status = Literal["running", "succeeded", "failed", "cancelled", "abandoned"]


def _iso_only(value: object) -> object:
    # pydantic also reads a number as a Unix time; the parameter is declared (and documented) as an
    # ISO 8601 date-time, so "0.5" is refused as the schema says rather than read as 1970.
    if isinstance(value, str) and not any(c in value for c in "-:T"):
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-01T00:00:00Z")
    return value


IsoTime = Annotated[dt.datetime, BeforeValidator(_iso_only)]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # The store keeps UTC and SQLite compares text: a bound must be UTC too (naive means UTC).
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _filter(
    program: Annotated[str | None, Query(max_length=200, description="Only this program.")] = None,
    version_id: Annotated[
        str | None, Query(max_length=64, description="Only this version (full id).")
    ] = None,
    status: Annotated[Status | None, Query(description="Only this status.")] = None,
    since: Annotated[IsoTime | None, Query(description="Started at or after (ISO 8601).")] = None,
    until: Annotated[IsoTime | None, Query(description="Started before (ISO 8601).")] = None,
    min_cost_usd: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    max_cost_usd: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    min_duration_ms: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    max_duration_ms: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
) -> ExecutionFilter:
    return ExecutionFilter(
        program=program,
        version_id=version_id,
        status=status,
        since=_utc(since),
        until=_utc(until),
        min_cost_usd=min_cost_usd,
        max_cost_usd=max_cost_usd,
        min_duration_ms=min_duration_ms,
        max_duration_ms=max_duration_ms,
    )


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    data.pop("trace", None)
    return data


@router.get("", response_model=ExecutionPage, responses=errors(401, 403, 422))
def list_executions(
    request: Request,
    where: ExecutionFilter = Depends(_filter),
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    principal: Principal = Depends(_read),
) -> JSONResponse:
    """Executions, newest first, without traces; filters combine with AND."""
    restricted_program(principal, where.program)
    app = dspex_of(request)
    app.flush(_FLUSH_S)
    records = app.executions.find(where, limit=limit, offset=offset)
    return JSONResponse(
        {
            "items": [_summary(r.to_json()) for r in records],
            "total": app.executions.count(where),
            "limit": limit,
            "offset": offset,
        }
    )


@router.get("/stats", response_model=list[ExecutionStatsOut], responses=errors(401, 403, 422))
def stats(
    request: Request, where: ExecutionFilter = Depends(_filter), principal: Principal = Depends(_read)
) -> JSONResponse:
    """Per program version: counts, error rate, latency percentiles (ms), tokens and cost."""
    restricted_program(principal, where.program)
    app = dspex_of(request)
    app.flush(_FLUSH_S)
    return JSONResponse([_stats_json(s) for s in app.executions.stats(where)])


def _stats_json(stats: Any) -> dict[str, Any]:
    import dataclasses

    data: dict[str, Any] = dataclasses.asdict(stats)
    return data


@router.get("/{execution_id}", response_model=ExecutionOut, responses=errors(401, 403, 404, 422))
def show(
    execution_id: Annotated[
        str, Path(max_length=64, description="The id, or a unique prefix of 6+ characters.")
    ],
    request: Request,
    principal: Principal = Depends(_read),
) -> JSONResponse:
    """One execution with its trace (the span tree of module, LM, adapter and tool calls) and the feedback
    given on it."""
    app = dspex_of(request)
    record = app.executions.get(execution_id)
    if record is None or record.status == "running":  # its end may be waiting in the writer
        app.flush(_FLUSH_S)
        record = app.executions.get(execution_id)
    if record is None:
        raise not_found(f"no execution {execution_id!r}")
    principal.check_program(record.program)
    data = record.to_json()
    data["feedback"] = [f.to_json() for f in app.feedback.list(record.id)]
    return JSONResponse(data)
