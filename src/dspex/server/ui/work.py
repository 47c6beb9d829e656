"""Pages of background work: optimizations (score by trial, Pareto front, best configuration, live while
running; a form to start one) and jobs (state, progress, attempts, cancel). Starting needs ``optimize``;
cancelling too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dspex.distributed._parallel import MAX_PARALLEL
from dspex.errors import DSPexError
from dspex.server.routes.optimizations import _detail, _follow, _lookup
from dspex.server.sse import EventStream
from dspex.server.ui._web import UiError, Viewer, form_of, render, viewer
from dspex.server.ui.views import parameter_importance, pareto_points

router = APIRouter(prefix="/ui")

JOBS_SHOWN = 200


@router.get("/optimizations", response_class=HTMLResponse)
def optimizations(request: Request, view: Viewer = Depends(viewer)) -> Response:
    app = view.app
    records = [r for r in reversed(app.optimizations.runs()) if view.principal.may_use(r.program)]
    queued = [
        j
        for j in app.jobs.list(status="queued", kind="optimize", limit=JOBS_SHOWN)
        if view.principal.may_use(j.payload.get("program")) and not j.payload.get("join")  # its owner shows
    ]
    programs = [r.name for r in app.programs.list_programs() if view.principal.may_use(r.name)]
    return render(
        request,
        "optimizations.html",
        view=view,
        records=records,
        queued=queued,
        programs=programs,
        datasets=[d.name for d in app.datasets.list()],
        can_start=view.can("optimize"),
        max_parallel=MAX_PARALLEL,
    )


def _as_int(form: dict[str, str], name: str, low: int, high: int) -> int:
    text = form.get(name, "").strip()
    if not text.lstrip("-").isdigit() or not low <= int(text) <= high:
        raise UiError(
            422, "Invalid form", f"{name} must be a whole number from {low} to {high}, got {text!r}"
        )
    return int(text)


@router.post("/optimizations")
async def start_optimization(request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Queue a variable search from the form (program, dataset, space as JSON, trials, trials at once,
    seed), with the
    checks of ``POST /v1/optimizations``: the space is data, checked before anything in it is imported."""
    from dspex.jobs.submit import submit_optimization
    from dspex.server.limits import check_document

    form = await form_of(request, view, max_bytes=view.app.settings.max_spec_bytes + 4096)
    program, dataset = form.get("program", ""), form.get("dataset", "")
    view.require("optimize", program)
    app = view.app
    if app.programs.repository.get_program(program) is None:
        raise UiError(422, "Invalid form", f"program: unknown program {program!r}")
    if app.datasets.repository.get_dataset(dataset.partition("@")[0]) is None:
        raise UiError(422, "Invalid form", f"dataset: unknown dataset {dataset!r}")
    try:
        space = json.loads(form.get("space", ""))
    except ValueError as exc:
        raise UiError(422, "Invalid form", f"space must be a JSON document: {exc}") from exc
    if not isinstance(space, dict):
        raise UiError(422, "Invalid form", "space must be a JSON object with 'variables' (and 'bindings')")
    n_trials = _as_int(form, "n_trials", 1, 1000)
    seed = _as_int(form, "seed", 0, 2**31 - 1)
    # A form from before the field existed (or a script posting the old fields) means one at a time.
    parallel = _as_int(form, "parallel", 1, MAX_PARALLEL) if form.get("parallel", "").strip() else 1
    settings = app.settings
    try:
        check_document(space, "space", max_depth=settings.max_spec_depth, max_bytes=settings.max_spec_bytes)
        app.spec_policy("untrusted").check_space_document(space)
        job = submit_optimization(
            app,
            program=program,
            dataset=dataset,
            space=space,
            n_trials=n_trials,
            seed=seed,
            parallel=parallel,
            created_by=f"key:{view.principal.key_id}" if view.principal.key_id else "local",
        )
    except DSPexError as exc:
        raise UiError(422, "Invalid form", str(exc)) from exc
    except (TypeError, ValueError, KeyError, AttributeError, LookupError) as exc:
        raise UiError(422, "Invalid form", f"space: {type(exc).__name__}: {exc}") from exc
    return RedirectResponse(f"/ui/optimizations/{job.payload['optimization_id']}", status_code=303)


@router.get("/optimizations/{optimization_id}", response_class=HTMLResponse)
def optimization(optimization_id: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Status, best configuration, trials; the charts are drawn from ``trials_json`` and the live
    stream adds what arrives."""
    if len(optimization_id) > 200:
        raise UiError(400, "Bad id", "an optimization id has at most 200 characters")
    app = view.app
    job, record = _lookup(app, optimization_id, view.principal)
    detail = _detail(optimization_id, job, record)
    records = app.optimizations.trials(optimization_id) if record is not None else []
    trials = [t.to_json() for t in records]
    objective = (detail["objectives"] or ["quality"])[0]
    live = job is not None and not job.done
    # Quality against cost when the models have prices, else against latency.
    axis = "cost_usd" if any(t.get("cost_usd") is not None for t in trials) else "duration_s"
    return render(
        request,
        "optimization.html",
        view=view,
        detail=detail,
        trials=trials,
        pareto=pareto_points(trials, quality=objective, cost=axis),
        importance=parameter_importance(records, objective),
        complete=sum(t.state == "complete" for t in records),
        axis=axis,
        chart=_script_json({"trials": trials, "objectives": detail["objectives"], "axis": axis}),
        live=live,
        can_cancel=live and view.can("optimize"),
        job=job,
    )


@router.get("/optimizations/{optimization_id}/importance", response_class=HTMLResponse)
def importance(optimization_id: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """The parameter importance fragment, recomputed from the trials so far: the page polls it while the
    optimization runs, and the fragment stops polling once it has ended."""
    if len(optimization_id) > 200:
        raise UiError(400, "Bad id", "an optimization id has at most 200 characters")
    app = view.app
    job, record = _lookup(app, optimization_id, view.principal)
    detail = _detail(optimization_id, job, record)
    records = app.optimizations.trials(optimization_id) if record is not None else []
    return render(
        request,
        "_importance.html",
        view=view,
        detail=detail,
        importance=parameter_importance(records, (detail["objectives"] or ["quality"])[0]),
        complete=sum(t.state == "complete" for t in records),
        live=job is not None and not job.done,
    )


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can close or bend it."""
    text = json.dumps(value, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@router.get("/live/optimizations/{optimization_id}")
async def live_optimization(
    optimization_id: str, request: Request, view: Viewer = Depends(viewer)
) -> Response:
    """The optimization's events as JSON (``job``, ``trial``, ``end``): the page's script draws them."""
    app = view.app
    await asyncio.to_thread(_lookup, app, optimization_id, view.principal)
    options = request.app.state.options
    return EventStream(_follow(app, optimization_id, options), ping_s=options.ping_s)


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, view: Viewer = Depends(viewer)) -> Response:
    status = request.query_params.get("status") or None
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    if status is not None and status not in statuses:
        raise UiError(400, "Bad filter", f"status must be one of {', '.join(statuses)}, got {status!r}")
    found = view.app.jobs.list(status=status, limit=JOBS_SHOWN)
    rows: list[Any] = [j for j in found if view.principal.may_use(j.payload.get("program"))]
    return render(
        request,
        "jobs.html",
        view=view,
        jobs=rows,
        status=status,
        statuses=statuses,
        can_cancel=view.can("optimize"),
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Cancel a job (``optimize``): a queued one at once, a running one at its next heartbeat."""
    view.require("optimize")
    await form_of(request, view)
    job = view.app.jobs.get(job_id)
    if job is None:
        raise UiError(404, "Not found", f"no job {job_id!r}")
    view.check_program(job.payload.get("program"))
    if job.done:
        raise UiError(409, "Already ended", f"job {job_id} already ended: {job.status}")
    view.app.jobs.cancel(job_id)
    back = request.headers.get("referer", "")
    target = "/ui/jobs"
    if "/ui/optimizations/" in back and job.payload.get("optimization_id"):
        target = f"/ui/optimizations/{job.payload['optimization_id']}"
    return RedirectResponse(target, status_code=303)
