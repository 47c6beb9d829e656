"""Runs: run a program version and answer with its outputs, or stream the run as server-sent events.

The run path is lean on purpose: an async endpoint, the key memo, ``App.arun`` (whose program cache
answers repeated inputs without DSPy) and an orjson body. The database is read only when a run fails
with a ``ConfigurationError``, to tell an unknown program or version (404) from other problems.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from dspex.errors import ConfigurationError, DSPexError, ValidationError
from dspex.runtime.app import RunResult
from dspex.server.app import dspex_of, metrics_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse, dspex_error_response
from dspex.server.metrics import Metrics
from dspex.server.models import RunRequest, RunResultOut
from dspex.server.routes._common import errors, version_or_404
from dspex.server.routes.programs import ProgramName
from dspex.server.sse import SSE_EVENT_SCHEMA, Event, EventStream, EventStreamDoc
from dspex.telemetry.context import continue_trace

router = APIRouter(prefix="/v1/programs", tags=["runs"])

_execute = require("runs:execute", program_param="name")
_RUN_ERRORS = errors(401, 403, 404, 422, 502, 503, 504)

_STREAM_DOC = """Server-sent events, in order:

- `start`: `{"execution_id", "program", "version_id"}`
- `step` (pipelines): `{"type": "step_started" | "step_finished" | "step_retried" | "step_failed" |
  "step_skipped", "step", ...}`
- `token`: `{"field", "chunk", "step"}`: a chunk of a string output field as the LM writes it
- `result`: as the synchronous run's body, or `error`: `{"error": {"code", "message", "execution_id"}}`

The run is recorded like a synchronous one; a client that disconnects cancels it (recorded `cancelled`).
With `dspex serve --pool NAME` (or routing rules) a pool's worker runs and streams it, as it runs the
synchronous route's runs.
Unknown programs (404) and inputs that fail the signature (422) are answered before the stream starts.
"""


def result_json(result: RunResult) -> dict[str, Any]:
    return {
        "execution_id": result.execution_id,
        "outputs": result.outputs,
        "duration_ms": result.duration_ms,
        "usage": result.usage,
        "cost_usd": result.cost_usd,
        "cache_hit": result.cache_hit,
        "trace_id": result.trace_id,
    }


async def _not_found_or(app: Any, name: str, version: str | None, exc: ConfigurationError) -> None:
    """Raise a 404 when the program or version does not exist; otherwise let ``exc`` stand."""
    await asyncio.to_thread(version_or_404, app, name, version)


@router.post("/{name}/runs", response_model=RunResultOut, responses=_RUN_ERRORS)
async def run(
    name: ProgramName, body: RunRequest, request: Request, _principal: Principal = Depends(_execute)
) -> JSONResponse:
    """Run the program (``version``, else production, else the newest draft) and return its outputs.

    Inputs that fail the program's signature are a 422 naming the field, with the ``execution_id`` of the
    failed record. A failing LM is a 503 (retryable, with ``Retry-After`` when known) or a 502; a program
    that raises is a 502 ``program_failed``; both with the execution id.

    A W3C ``traceparent`` header makes the run a child of the caller's span; ``trace_id`` names the trace.
    """
    app = dspex_of(request)
    metrics = metrics_of(request)
    try:
        with continue_trace(request.headers.get("traceparent")):
            result = await app.arun(
                name,
                body.inputs,
                version_id=body.version,
                variables=body.variables,
                durability=body.durability,
                pool=options_of(request).pool,
                idempotent=body.idempotent,
                timeout=body.timeout,
            )
    except ConfigurationError as exc:
        await _not_found_or(app, name, body.version, exc)
        raise
    except DSPexError:
        metrics.run(name, "failed")
        raise
    except asyncio.CancelledError:
        metrics.run(name, "cancelled")
        raise
    metrics.run(name, "succeeded", cache_hit=bool(getattr(result, "cache_hit", False)))
    return JSONResponse(result_json(result))


@router.post(
    "/{name}/runs/stream",
    response_class=EventStreamDoc,
    responses={
        200: {"description": _STREAM_DOC, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **_RUN_ERRORS,
    },
)
async def stream(
    name: ProgramName, body: RunRequest, request: Request, _principal: Principal = Depends(_execute)
) -> EventStream:
    """Run the program and stream its progress as server-sent events (see the 200 response)."""
    from dspex.runtime.stream import RunStream

    app = dspex_of(request)
    metrics = metrics_of(request)
    try:
        with continue_trace(request.headers.get("traceparent")):  # the run's trace is fixed when it opens
            opened = await RunStream.open(
                app,
                name,
                body.inputs,
                version_id=body.version,
                variables=body.variables,
                durability=body.durability,
                timeout=body.timeout,
                pool=options_of(request).pool,
            )
    except ConfigurationError as exc:
        await _not_found_or(app, name, body.version, exc)
        raise
    except ValidationError:
        metrics.run(name, "failed")
        raise
    return EventStream(_events(opened, name, metrics), ping_s=options_of(request).ping_s)


async def _events(opened: Any, name: str, metrics: Metrics) -> AsyncIterator[Event]:
    from dspex.runtime.stream import RunFailed, RunFinished, RunStarted, StepEvent, TokenEvent

    ended = False
    try:
        async for event in opened.events():
            if isinstance(event, TokenEvent):
                yield "token", {"field": event.field, "chunk": event.chunk, "step": event.step}
            elif isinstance(event, StepEvent):
                yield "step", {"type": event.kind, **event.data}
            elif isinstance(event, RunStarted):
                yield (
                    "start",
                    {
                        "execution_id": event.execution_id,
                        "program": event.program,
                        "version_id": event.version_id,
                    },
                )
            elif isinstance(event, RunFinished):
                ended = True
                metrics.run(name, "succeeded")
                yield "result", result_json(event.result)
            elif isinstance(event, RunFailed):
                ended = True
                metrics.run(name, "failed")
                yield "error", _error_json(event.error)
    finally:
        if not ended:
            metrics.run(name, "cancelled")


def _error_json(error: BaseException) -> dict[str, Any]:
    if isinstance(error, DSPexError):
        return dict(_json_body(dspex_error_response(error)))
    return {"error": {"code": "internal_error", "message": "internal error; the server log has the details"}}


def _json_body(response: JSONResponse) -> dict[str, Any]:
    import orjson

    body: dict[str, Any] = orjson.loads(response.body)
    return body
