"""Jobs: the durable queue's jobs (optimizations, evaluations): list, show, cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import ApiError, JSONResponse, not_found
from dspex.server.models import JobOut
from dspex.server.routes._common import errors, single_query_values

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.jobs import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(single_query_values)])

JobId = Annotated[str, Path(max_length=64, description="The job id.")]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _job_or_404(app: App, job_id: str, principal: Principal) -> JobRecord:
    job = app.jobs.get(job_id)
    if job is None:
        raise not_found(f"no job {job_id!r}; GET /v1/jobs lists them")
    principal.check_program(job.payload.get("program"))
    return job


@router.get("", response_model=list[JobOut], responses=errors(401, 403, 422))
def list_jobs(
    request: Request,
    status: Annotated[JobStatus | None, Query(description="Only this status.")] = None,
    kind: Annotated[
        str | None, Query(max_length=100, description="Only this kind (optimize, evaluate).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    principal: Principal = Depends(require("programs:read")),
) -> JSONResponse:
    """Jobs, newest first; a key limited to some programs sees only their jobs."""
    jobs = dspex_of(request).jobs.list(status=status, kind=kind, limit=limit, offset=offset)
    return JSONResponse([j.to_json() for j in jobs if principal.may_use(j.payload.get("program"))])


@router.get("/{job_id}", response_model=JobOut, responses=errors(401, 403, 404))
def show(
    job_id: JobId, request: Request, principal: Principal = Depends(require("programs:read"))
) -> JSONResponse:
    """One job: payload, status, attempts, lease, progress, result or error."""
    return JSONResponse(_job_or_404(dspex_of(request), job_id, principal).to_json())


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(401, 403, 404, 409))
def cancel(
    job_id: JobId, request: Request, principal: Principal = Depends(require("optimize"))
) -> JSONResponse:
    """Cancel a job: a queued one at once, a running one at its worker's next heartbeat. A job that already
    ended is a 409."""
    app = dspex_of(request)
    job = _job_or_404(app, job_id, principal)
    if job.done:
        raise ApiError(409, "conflict", f"job {job_id} already ended: {job.status}")
    return JSONResponse(app.jobs.cancel(job_id).to_json())
