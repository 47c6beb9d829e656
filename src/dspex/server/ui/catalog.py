"""Pages of what is registered: programs (versions, a diff of two, promote and roll back) and datasets
(versions and examples). Promote and roll back need the ``programs:promote`` scope: the buttons are not
shown without it, and the POSTs are refused."""

from __future__ import annotations

import itertools

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dspex.errors import ConfigurationError
from dspex.server.routes.programs import actor_of
from dspex.server.ui._web import UiError, Viewer, form_of, render, viewer
from dspex.server.ui.views import version_diff

router = APIRouter(prefix="/ui")

EXAMPLES_SHOWN = 50


@router.get("/programs", response_class=HTMLResponse)
def programs(request: Request, view: Viewer = Depends(viewer)) -> Response:
    registry = view.app.programs
    rows = []
    for record in registry.list_programs():
        if not view.principal.may_use(record.name):
            continue
        versions = registry.repository.versions(record.name)
        production = next((v.id for v in versions if v.status == "production"), None)
        rows.append({"record": record, "versions": len(versions), "production": production})
    return render(request, "programs.html", view=view, rows=rows)


@router.get("/programs/{name}", response_class=HTMLResponse)
def program(name: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """A program's versions, newest first, and the diff of the two chosen (``?a=&b=``; by default the
    production version against the newest other one)."""
    view.check_program(name)
    repository = view.app.programs.repository
    record = repository.get_program(name)
    if record is None:
        raise UiError(404, "Not found", f"no program {name!r}")
    versions = repository.versions(name)
    by_id = {v.id: v for v in versions}
    query = request.query_params
    a_id, b_id = query.get("a"), query.get("b")
    for field, value in (("a", a_id), ("b", b_id)):
        if value and value not in by_id:
            raise UiError(400, "Unknown version", f"{field}={value!r} is not a version of {name!r}")
    if not (a_id and b_id) and len(versions) >= 2:
        production = next((v for v in versions if v.status == "production"), versions[-1])
        other = next(v for v in versions if v.id != production.id)
        a_id, b_id = a_id or production.id, b_id or other.id
    diff = None
    if a_id and b_id:
        left, right = by_id[a_id], by_id[b_id]
        diff = version_diff(left.state, right.state, left.variables, right.variables)
    groups = {part: list(lines) for part, lines in itertools.groupby(diff or [], key=lambda d: d.part)}
    return render(
        request,
        "program.html",
        view=view,
        record=record,
        versions=versions,
        a=a_id,
        b=b_id,
        diff=groups if diff is not None else None,
        can_promote=view.can("programs:promote"),
    )


@router.post("/programs/{name}/promote")
async def promote(name: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Make the posted version production (``programs:promote``)."""
    view.require("programs:promote", name)
    form = await form_of(request, view)
    version = form.get("version", "")
    found = view.app.programs.repository.get_version(version) if version else None
    if found is None or found.program != name:
        raise UiError(400, "Unknown version", f"version={version!r} is not a version of {name!r}")
    view.app.programs.promote(name, found.id, actor=actor_of(view.principal))
    return RedirectResponse(f"/ui/programs/{name}", status_code=303)


@router.post("/programs/{name}/rollback")
async def rollback(name: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """Archive production and bring back the one before it (``programs:promote``)."""
    view.require("programs:promote", name)
    await form_of(request, view)
    if view.app.programs.repository.get_program(name) is None:
        raise UiError(404, "Not found", f"no program {name!r}")
    try:
        view.app.programs.rollback(name, actor=actor_of(view.principal))
    except ConfigurationError as exc:
        raise UiError(409, "Nothing to roll back to", exc.message) from exc
    return RedirectResponse(f"/ui/programs/{name}", status_code=303)


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request, view: Viewer = Depends(viewer)) -> Response:
    return render(request, "datasets.html", view=view, datasets=view.app.datasets.list())


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset(name: str, request: Request, view: Viewer = Depends(viewer)) -> Response:
    """A dataset's versions and the first examples of one (``?version=``, the newest by default)."""
    data = view.app.datasets
    if data.repository.get_dataset(name) is None:
        raise UiError(404, "Not found", f"no dataset {name!r}")
    versions = data.versions(name)
    chosen = request.query_params.get("version") or (versions[0].id if versions else None)
    version = next((v for v in versions if v.id == chosen), None)
    if chosen and version is None:
        raise UiError(400, "Unknown version", f"version={chosen!r} is not a version of {name!r}")
    examples = list(itertools.islice(data.repository.examples(version.id), EXAMPLES_SHOWN)) if version else []
    return render(
        request,
        "dataset.html",
        view=view,
        name=name,
        versions=versions,
        version=version,
        examples=examples,
        shown=EXAMPLES_SHOWN,
    )
