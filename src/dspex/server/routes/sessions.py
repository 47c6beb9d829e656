"""Sessions: create one on a program, run its turns (history carried by the server), read, delete.

A session is visible to the key that created it and to ``admin`` keys only; to anyone else it does not
exist (404). Creating and running need ``runs:execute`` on the session's program.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from dspex.server.app import dspex_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import ApiError, JSONResponse, not_found
from dspex.server.models import RunResultOut, SessionCreate, SessionOut, SessionRunRequest
from dspex.server.routes._common import errors, program_or_404
from dspex.server.routes.programs import actor_of
from dspex.server.routes.runs import result_json

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
_execute = require("runs:execute")
SessionId = Annotated[str, Path(description="The session's id.", max_length=36)]


def _owner(principal: Principal) -> str | None:
    """Whose sessions the caller may see: its own, or everyone's for an admin (None)."""
    return None if principal.has("admin") else actor_of(principal)


def _session(request: Request, session_id: str, principal: Principal) -> Any:
    from dspex.runtime.sessions import SessionNotFound

    try:
        record = dspex_of(request).sessions.get(session_id, owner=_owner(principal))
    except SessionNotFound as exc:
        raise not_found(str(exc)) from None
    principal.check_program(record.program)
    return record


@router.post("", status_code=201, response_model=SessionOut, responses=errors(401, 403, 404, 422))
def create(body: SessionCreate, request: Request, principal: Principal = Depends(_execute)) -> JSONResponse:
    """Start a session on a registered program."""
    principal.check_program(body.program)
    app = dspex_of(request)
    program_or_404(app, body.program)
    record = app.sessions.create(
        body.program, variables=body.variables, ttl_s=body.ttl_s, owner=actor_of(principal)
    )
    return JSONResponse(record.to_json(history=False), status_code=201)


@router.get("", response_model=list[SessionOut], responses=errors(401, 403))
def list_sessions(request: Request, principal: Principal = Depends(_execute)) -> JSONResponse:
    """The caller's live sessions (an admin's: everyone's), most recently used first, without history."""
    records = dspex_of(request).sessions.list(owner=_owner(principal))
    return JSONResponse([r.to_json(history=False) for r in records if principal.may_use(r.program)])


@router.get("/{session_id}", response_model=SessionOut, responses=errors(401, 403, 404))
def show(session_id: SessionId, request: Request, principal: Principal = Depends(_execute)) -> JSONResponse:
    """The session with every turn."""
    return JSONResponse(_session(request, session_id, principal).to_json())


@router.delete("/{session_id}", response_model=SessionOut, responses=errors(401, 403, 404))
def delete(session_id: SessionId, request: Request, principal: Principal = Depends(_execute)) -> JSONResponse:
    """End the session and forget its state (its runs stay in the execution records); answers the
    session as it was, without its history."""
    record = _session(request, session_id, principal)
    dspex_of(request).sessions.delete(session_id)
    return JSONResponse(record.to_json(history=False))


@router.post(
    "/{session_id}/runs",
    response_model=RunResultOut,
    responses=errors(401, 403, 404, 409, 422, 502, 503, 504),
)
async def run(
    session_id: SessionId, body: SessionRunRequest, request: Request, principal: Principal = Depends(_execute)
) -> JSONResponse:
    """Run the session's next turn; it is saved before the answer. Turns of one session run one at a time
    (a second request waits, also on another server process, up to ``session_wait_s``; then 409).
    A W3C ``traceparent`` header makes the turn's run a child of the caller's span."""
    from dspex.runtime.sessions import SessionBusy, SessionNotFound
    from dspex.store.sessions import SessionConflict
    from dspex.telemetry.context import continue_trace

    await asyncio.to_thread(_session, request, session_id, principal)
    try:
        with continue_trace(request.headers.get("traceparent")):
            result = await dspex_of(request).sessions.arun(
                session_id,
                body.inputs,
                owner=_owner(principal),
                pool=options_of(request).pool,
                idempotent=body.idempotent,
                durability=body.durability,
                timeout=body.timeout,
            )
    except SessionNotFound as exc:
        raise not_found(str(exc)) from None
    except (SessionConflict, SessionBusy) as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    return JSONResponse(result_json(result))
