"""Pages of what runs the runs: adaptive programs (arms, traffic shares, reward over time, events),
this server's worker pools (workers, memory, tasks) and its LM resilience (circuit breakers, rate limits,
retry budgets); pools and resilience are ``admin`` only, as operational detail."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, Response

from dspex.server.ui._web import UiError, Viewer, render, viewer
from dspex.server.ui.work import _script_json
from dspex.store.adapt import UnknownAdaptive

router = APIRouter(prefix="/ui")


@router.get("/adaptive", response_class=HTMLResponse)
def adaptive_list(request: Request, view: Viewer = Depends(viewer)) -> Response:
    records = [r for r in view.app.adapt.list() if view.principal.may_use(r.program)]
    return render(request, "adaptive_list.html", view=view, records=records)


@router.get("/adaptive/{name}", response_class=HTMLResponse)
def adaptive(name: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """One adaptive program: its arms (share, posterior, rewards), reward over time, recent events."""
    if len(name) > 200:
        raise UiError(400, "Bad name", "an adaptive program's name has at most 200 characters")
    record = view.app.adapt.repository.find(name)
    if record is None:
        raise UiError(404, "Not found", f"no adaptive program {name!r}")
    view.check_program(record.program)
    try:
        status = view.app.adapt.get(name).status()
    except UnknownAdaptive as exc:  # deleted between the two reads
        raise UiError(404, "Not found", str(exc)) from exc
    return render(
        request,
        "adaptive.html",
        view=view,
        status=status,
        chart=_script_json({"series": status["reward_over_time"]}),
    )


@router.get("/pools", response_class=HTMLResponse)
def pools(request: Request, view: Viewer = Depends(viewer)) -> Response:
    view.require("admin")  # pids and memory are operational detail, as in GET /v1/pools
    return render(request, "pools.html", view=view, pools=[s.to_json() for s in view.app.pools.status()])


@router.get("/lms", response_class=HTMLResponse)
def lms(request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Circuit breakers (state, calls, failures, when they opened), rate limits and their use in the last
    minute, and retry budgets: what ``dspex lms status`` and ``/health`` report, shared through Redis when
    the limits are."""
    view.require("admin")
    status = view.app.resilience.status()
    for breaker in status["breakers"]:  # seconds since the epoch, as the breakers keep it
        opened = breaker["opened_at"]
        breaker["opened_at"] = None if opened is None else dt.datetime.fromtimestamp(opened, dt.UTC)
    return render(request, "lms.html", view=view, status=status)
