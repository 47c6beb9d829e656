"""Feedback on runs: give it (a score, a label, a comment) and read it back.

Giving feedback needs the ``feedback`` scope (a rating widget's key: it cannot read records or run
anything) or ``runs:execute`` (the application that ran the program reports how the answer went).
Either way the key may give feedback only on executions of programs it may use, the rule under which
``GET /v1/executions/{id}`` shows them; reading feedback needs ``programs:read`` like the execution
itself. The feedback's ``actor`` is ``key:<id>`` of the key that gave it; an end user's identity, when
the caller knows one, goes in ``detail``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Path, Request

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse, not_found
from dspex.server.models import FeedbackIn, FeedbackOut
from dspex.server.routes._common import errors
from dspex.store.feedback import UnknownExecution

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.executions import ExecutionRecord

router = APIRouter(prefix="/v1/executions", tags=["feedback"])

_give = require("feedback", "runs:execute")
_read = require("programs:read")
ExecutionId = Annotated[str, Path(max_length=64, description="The id, or a unique prefix of 6+ characters.")]


def _execution(app: App, execution_id: str, principal: Principal) -> ExecutionRecord:
    """The execution (404 when unknown, 403 when the key may not use its program)."""
    try:
        record = app.feedback.execution(execution_id)
    except UnknownExecution:
        raise not_found(f"no execution {execution_id!r}") from None
    principal.check_program(record.program)
    return record


@router.post(
    "/{execution_id}/feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses=errors(401, 403, 404, 422),
)
def give(
    execution_id: ExecutionId, body: FeedbackIn, request: Request, principal: Principal = Depends(_give)
) -> JSONResponse:
    """Give feedback on a run: a score from 0 (worst) to 1 (best), a label, a comment (at least one),
    and any JSON ``detail``. Stored before the answer; counted in the quality signals."""
    app = dspex_of(request)
    record = _execution(app, execution_id, principal)
    feedback = app.feedback(
        record.id,
        score=body.score,
        label=body.label,
        comment=body.comment,
        detail=body.detail,
        actor=f"key:{principal.key_id}" if principal.key_id else "local",
    )
    return JSONResponse(feedback.to_json(), status_code=201)


@router.get(
    "/{execution_id}/feedback", response_model=list[FeedbackOut], responses=errors(401, 403, 404, 422)
)
def list_feedback(
    execution_id: ExecutionId, request: Request, principal: Principal = Depends(_read)
) -> JSONResponse:
    """The feedback on a run, oldest first."""
    app = dspex_of(request)
    record = _execution(app, execution_id, principal)
    return JSONResponse([f.to_json() for f in app.feedback.list(record.id)])
