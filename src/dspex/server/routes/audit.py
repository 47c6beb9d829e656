"""Audit: who registered, replaced, promoted or rolled back which program, and when (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse
from dspex.server.models import AuditEventOut
from dspex.server.routes._common import errors, single_query_values

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(single_query_values)])


@router.get("", response_model=list[AuditEventOut], responses=errors(401, 403, 422))
def list_events(
    request: Request,
    program: Annotated[str | None, Query(max_length=200, description="Only this program.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    _principal: Principal = Depends(require("admin")),
) -> JSONResponse:
    """The newest audit events first: actor (``key:<id>`` or ``local``), action, program, and the
    production version before and the version after the change."""
    events = dspex_of(request).programs.audit.list(program=program, limit=limit)
    return JSONResponse([event.to_json() for event in events])
