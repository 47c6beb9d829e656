"""Batch runs over HTTP: a program over many inputs given in the body, one recorded run per input.

The inputs arrive in the body, never as a path: nothing in a request names a file to read or write.
Resume is the client's: each result line carries its ``key``, and a retry sends the keys it already holds
in ``skip``. Where the runs execute is the server's choice (``dspex serve --pool``, else ``[routing]``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from dspex.server.app import dspex_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse
from dspex.server.models import JsonObject, _Strict
from dspex.server.routes._common import errors, version_or_404
from dspex.server.routes.programs import ProgramName

router = APIRouter(prefix="/v1/programs", tags=["runs"])

_execute = require("runs:execute", program_param="name")
MAX_INPUTS = 1000  # per request: larger batches are several requests, or `dspex batch run` on a file


class BatchRequest(_Strict):
    inputs: list[JsonObject] = Field(
        min_length=1,
        max_length=MAX_INPUTS,
        description=f"The inputs, one object of the program's input fields each (at most {MAX_INPUTS}).",
        examples=[[{"question": "2 + 2?"}, {"question": "3 + 3?"}]],
    )
    version: str | None = Field(
        None,
        max_length=64,
        description="A version id or unique prefix; default production, else newest draft.",
    )
    concurrency: int = Field(8, ge=1, le=64, description="Inputs in flight at once.")
    skip: list[str] = Field(
        default_factory=list,
        max_length=MAX_INPUTS,
        description="Keys of inputs already done (from an earlier response's lines): they are not run again.",
    )


class BatchLineOut(BaseModel):
    index: int = Field(description="The input's position in the request's inputs.")
    key: str = Field(description="The input's resume key: send it in skip to not run the input again.")
    status: str = Field(description="succeeded or failed.")
    execution_id: str | None = Field(description="The run's execution record.")
    outputs: JsonObject | None = Field(None, description="The run's outputs (succeeded).")
    error: JsonObject | None = Field(None, description="{code, message} (failed).")


class BatchReportOut(BaseModel):
    total: int
    skipped: int
    succeeded: int
    failed: int
    wall_s: float


class BatchOut(BaseModel):
    report: BatchReportOut
    lines: list[BatchLineOut]


@router.post("/{name}/batch", response_model=BatchOut, responses=errors(401, 403, 404, 422))
async def batch(
    name: ProgramName, body: BatchRequest, request: Request, _principal: Principal = Depends(_execute)
) -> JSONResponse:
    """Run the program on each input; answer ``{"report": {...}, "lines": [...]}``, lines in input order.

    Each line: ``{"index", "key", "status", "execution_id", "outputs" | "error"}``; a failed run is a line
    with its error (and its record), not an error response.
    """
    import asyncio

    from dspex.distributed.batch import BatchLine, arun_batch

    app = dspex_of(request)
    await asyncio.to_thread(version_or_404, app, name, body.version)
    lines: list[BatchLine] = []
    report = await arun_batch(
        app,
        name,
        body.inputs,
        version_id=body.version,
        pool=options_of(request).pool,
        concurrency=body.concurrency,
        skip=set(body.skip),
        on_line=lines.append,
    )
    lines.sort(key=lambda line: line.index)
    data: dict[str, Any] = {"report": report.to_json(), "lines": [line.to_json() for line in lines]}
    return JSONResponse(data)
