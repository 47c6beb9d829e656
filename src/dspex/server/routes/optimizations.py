"""Optimizations: start one as a job, read its record and trials, follow it as server-sent events.

A start names a space and trials (the variable search) or ``optimizer`` with ``options`` (one of DSPy's
optimizers; the options are plain values checked by name, type and range, never code, paths or hosts).

An optimization is known by its ``optimization_id`` (``opt-...``, in the job's payload). Until a worker
takes the job there is no optimization record yet; the job says ``queued``. The job of an optimization
is found among the newest optimize jobs (see :func:`_job_of`). Promote the resulting version with
``POST /v1/programs/{name}/versions/{version}/promote``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from dspex.errors import ConfigurationError, DSPexError, SpecError
from dspex.server.app import ServiceOptions, checked_document, dspex_of, options_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse, not_found
from dspex.server.models import OptimizationDetailOut, OptimizationStart, OptimizationStarted
from dspex.server.routes._common import errors, program_or_404
from dspex.server.sse import SSE_EVENT_SCHEMA, Event, EventStream, EventStreamDoc

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.jobs import JobRecord
    from dspex.store.optimizations import OptimizationRecord

router = APIRouter(prefix="/v1/optimizations", tags=["optimizations"])

OptimizationId = Annotated[str, Path(max_length=200, description="The optimization id (opt-...).")]
_read = require("programs:read")

_EVENTS_DOC = """Server-sent events until the job ends (or the stream's time limit passes):

- `job`: `{"status", "attempts", "progress", "cancel_requested"}` whenever one of them changes; a DSPy
  optimizer's progress is `{"optimizer", "phase", "candidates", "evaluations", "best_score",
  "best_examples", "lm_calls", "cached", "program_calls"}`
- `trial`: a finished trial of the variable search (`number`, `state`, `configuration`, `scores`, `lm_calls`, `cost_usd`...)
- `end`: the optimization as `GET /v1/optimizations/{id}` returns it, without trials
- `timeout`: the stream's time limit passed before the job ended; reconnect to keep following
"""


def _job_of(app: App, optimization_id: str) -> JobRecord | None:
    from dspex.jobs.submit import optimization_job

    return optimization_job(app, optimization_id)


def _record_of(app: App, optimization_id: str) -> OptimizationRecord | None:
    try:
        return app.optimizations.get(optimization_id)
    except ConfigurationError:
        return None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _detail(optimization_id: str, job: JobRecord | None, record: OptimizationRecord | None) -> dict[str, Any]:
    status = record.status if record is not None else (job.status if job is not None else "queued")
    if job is not None and (record is None or (record.status == "running" and job.done)):
        status = job.status  # queued before a worker took it; cancelled or failed jobs end the run
    payload = job.payload if job is not None else {}
    return {
        "id": optimization_id,
        "program": record.program if record is not None else payload.get("program"),
        "status": status,
        "objectives": list(record.objectives) if record is not None else list(payload.get("objectives", [])),
        "budget": record.budget
        if record is not None
        else {
            "optimizer": payload["optimizer"],
            "options": payload.get("options"),
            **({"max_lm_calls": payload["max_lm_calls"]} if payload.get("max_lm_calls") else {}),
        }
        if payload.get("optimizer")
        else {"n_trials": payload.get("n_trials")},
        "best": record.best if record is not None else None,
        "pareto": record.pareto if record is not None else None,
        "result_version_id": record.result_version_id if record is not None else None,
        "error": record.error if record is not None else None,
        "created_at": _iso(record.created_at if record is not None else job.created_at if job else None),
        "updated_at": _iso(record.updated_at) if record is not None else None,
        "job": job.to_json() if job is not None else None,
    }


def _lookup(
    app: App, optimization_id: str, principal: Principal
) -> tuple[JobRecord | None, OptimizationRecord | None]:
    job = _job_of(app, optimization_id)
    record = _record_of(app, optimization_id)
    if job is None and record is None:
        raise not_found(f"no optimization {optimization_id!r}")
    program = record.program if record is not None else job.payload.get("program") if job else None
    principal.check_program(program)
    return job, record


@router.post("", status_code=202, response_model=OptimizationStarted, responses=errors(401, 403, 404, 422))
def start(
    body: OptimizationStart, request: Request, principal: Principal = Depends(require("optimize"))
) -> JSONResponse:
    """Queue an optimization of a registered program on a dataset; a worker (``dspex worker``) runs it.

    The program version and dataset version are pinned now; the space document is checked now, so a bad
    space is a 422 here rather than a failed job later.
    """
    from dspex.jobs.submit import submit_optimization

    principal.check_program(body.program)
    app = dspex_of(request)
    if body.optimizer is not None:
        return _start_dspy(app, body, request, principal)
    if body.space is None or body.n_trials is None:
        missing = "space" if body.space is None else "n_trials"
        raise SpecError(f"the variable search needs {missing!r}; or name a DSPy optimizer", path=missing)
    # The space is data: constraints and derived values name registered functions, models configured
    # ones; checked before anything in it is imported.
    checked_document(request, body.space, "space")
    app.spec_policy("untrusted").check_space_document(body.space)
    program_or_404(app, body.program)
    if app.datasets.repository.get_dataset(body.dataset.partition("@")[0]) is None:
        raise not_found(f"unknown dataset {body.dataset!r}; GET /v1/datasets lists them")
    from dspex.telemetry.context import continue_trace

    try:
        with continue_trace(request.headers.get("traceparent")):  # the job runs in the caller's trace
            job = submit_optimization(
                app,
                program=body.program,
                dataset=body.dataset,
                space=body.space,
                n_trials=body.n_trials,
                split=body.split,
                metric=body.metric,
                objectives=body.objectives,
                seed=body.seed,
                version_id=body.version,
                max_lm_calls=body.max_lm_calls,
                parallel=body.parallel or 1,
                drivers=body.drivers or 1,
                created_by=f"key:{principal.key_id}" if principal.key_id else "local",
            )
    except DSPexError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, LookupError) as exc:
        raise SpecError(f"invalid space document: {type(exc).__name__}: {exc}", path="space") from exc
    return JSONResponse(
        {"optimization_id": job.payload["optimization_id"], "job": job.to_json()}, status_code=202
    )


def _start_dspy(app: App, body: OptimizationStart, request: Request, principal: Principal) -> JSONResponse:
    """Queue one of DSPy's optimizers: its options are plain values, checked by name and type; the
    metric is a registered one; the prompt model a configured one."""
    from dspex.jobs.submit import submit_dspy_optimization
    from dspex.telemetry.context import continue_trace

    given = [name for name in ("space", "n_trials", "parallel", "drivers") if getattr(body, name) is not None]
    if given or body.objectives != ["quality"]:
        field = given[0] if given else "objectives"
        raise SpecError(
            f"{field!r} belongs to the variable search, not to optimizer {body.optimizer!r}", path=field
        )
    program_or_404(app, body.program)
    if app.datasets.repository.get_dataset(body.dataset.partition("@")[0]) is None:
        raise not_found(f"unknown dataset {body.dataset!r}; GET /v1/datasets lists them")
    assert body.optimizer is not None
    with continue_trace(request.headers.get("traceparent")):
        job = submit_dspy_optimization(
            app,
            program=body.program,
            dataset=body.dataset,
            optimizer=body.optimizer,
            options=body.options,
            split=body.split,
            metric=body.metric,
            seed=body.seed,
            version_id=body.version,
            prompt_model=body.prompt_model,
            max_lm_calls=body.max_lm_calls,
            created_by=f"key:{principal.key_id}" if principal.key_id else "local",
        )
    return JSONResponse(
        {"optimization_id": job.payload["optimization_id"], "job": job.to_json()}, status_code=202
    )


@router.get("/{optimization_id}", response_model=OptimizationDetailOut, responses=errors(401, 403, 404))
def show(
    optimization_id: OptimizationId, request: Request, principal: Principal = Depends(_read)
) -> JSONResponse:
    """The optimization: status, best trial, Pareto front, resulting version, its job and every trial."""
    app = dspex_of(request)
    job, record = _lookup(app, optimization_id, principal)
    trials = app.optimizations.trials(optimization_id) if record is not None else []
    return JSONResponse({**_detail(optimization_id, job, record), "trials": [t.to_json() for t in trials]})


@router.get(
    "/{optimization_id}/events",
    response_class=EventStreamDoc,
    responses={
        200: {"description": _EVENTS_DOC, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **errors(401, 403, 404),
    },
)
async def events(
    optimization_id: OptimizationId, request: Request, principal: Principal = Depends(_read)
) -> EventStream:
    """Follow the optimization's progress as server-sent events (see the 200 response)."""
    app = dspex_of(request)
    await asyncio.to_thread(_lookup, app, optimization_id, principal)
    options = options_of(request)
    return EventStream(_follow(app, optimization_id, options), ping_s=options.ping_s)


async def _follow(app: App, optimization_id: str, options: ServiceOptions) -> AsyncIterator[Event]:
    """Poll the job, the record and the trials; send what changed; stop when the job has ended."""
    deadline = time.monotonic() + options.events_timeout_s
    sent_trials: dict[int, str] = {}
    last_job: tuple[Any, ...] | None = None

    def snapshot() -> tuple[JobRecord | None, OptimizationRecord | None, list[Any]]:
        job = _job_of(app, optimization_id)
        record = _record_of(app, optimization_id)
        trials = app.optimizations.trials(optimization_id) if record is not None else []
        return job, record, trials

    while True:
        job, record, trials = await asyncio.to_thread(snapshot)
        if job is not None:
            state = (job.status, job.attempts, job.progress, job.cancel_requested)
            if state != last_job:
                last_job = state
                yield (
                    "job",
                    {
                        "status": job.status,
                        "attempts": job.attempts,
                        "progress": job.progress,
                        "cancel_requested": job.cancel_requested,
                    },
                )
        for trial in trials:
            if trial.state != "running" and sent_trials.get(trial.number) != trial.state:
                sent_trials[trial.number] = trial.state
                yield "trial", trial.to_json()
        ended = job.done if job is not None else (record is None or record.status != "running")
        if ended:
            yield "end", _detail(optimization_id, job, record)
            return
        if time.monotonic() >= deadline:
            yield "timeout", {"after_s": options.events_timeout_s}
            return
        await asyncio.sleep(options.events_poll_s)
