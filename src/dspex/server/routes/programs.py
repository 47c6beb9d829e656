"""Programs: register from a spec, list, show, versions, promote, roll back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from dspex.errors import ConfigurationError, DSPexError, SpecError
from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import ApiError, JSONResponse
from dspex.server.models import CacheSetting, ProgramDetailOut, ProgramOut, ProgramRegister, VersionOut
from dspex.server.routes._common import ERRORS, errors, program_or_404, version_or_404

if TYPE_CHECKING:
    from dspex.store.programs import ProgramRecord, ProgramVersion

router = APIRouter(prefix="/v1/programs", tags=["programs"])

ProgramName = Annotated[str, Path(description="The program's name.", max_length=200)]
_read = require("programs:read", program_param="name")
_write = require("programs:write", program_param="name")


def version_json(version: ProgramVersion) -> dict[str, Any]:
    """A version without its state payload (demos make it large)."""
    data = version.to_json()
    data.pop("state", None)
    return data


def program_json(record: ProgramRecord, versions: list[ProgramVersion]) -> dict[str, Any]:
    return {
        "name": record.name,
        "description": record.description,
        "source": record.source,
        "production_version": next((v.id for v in versions if v.status == "production"), None),
        "versions": len(versions),
        "cache_ttl_s": record.cache_ttl_s,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


@router.get("", response_model=list[ProgramOut], responses=errors(401, 403))
def list_programs(request: Request, principal: Principal = Depends(require("programs:read"))) -> JSONResponse:
    """Every registered program the key may use, by name."""
    registry = dspex_of(request).programs
    records = [r for r in registry.list_programs() if principal.may_use(r.name)]
    return JSONResponse([program_json(r, registry.repository.versions(r.name)) for r in records])


@router.post("", status_code=201, response_model=VersionOut, responses=errors(401, 403, 409, 422))
def register(
    body: ProgramRegister, request: Request, principal: Principal = Depends(require("programs:write"))
) -> JSONResponse:
    """Register a program from a spec (or record its current state again); returns the draft version.

    Registering an existing name with another spec is a 409 unless ``replace`` is true.
    """
    principal.check_program(body.name)
    registry = dspex_of(request).programs
    existing = registry.repository.get_program(body.name)
    if existing is not None and not body.replace:
        stored = existing.source.get("spec") if existing.source.get("kind") == "spec" else None
        if stored != body.spec:
            raise ApiError(
                409,
                "conflict",
                f"program {body.name!r} exists with another source; set replace=true to replace it",
            )
    try:
        version = registry.register(body.name, body.spec, description=body.description, replace=body.replace)
    except DSPexError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, LookupError) as exc:
        # A spec DSPy could not build from (a wrong option type...): the request's fault, said as such.
        raise SpecError(f"the spec does not build a program: {type(exc).__name__}: {exc}") from exc
    return JSONResponse(version_json(version), status_code=201)


@router.get("/{name}", response_model=ProgramDetailOut, responses=errors(401, 403, 404))
def show(name: ProgramName, request: Request, _principal: Principal = Depends(_read)) -> JSONResponse:
    """One program: its source, production and default versions, and how many versions it has."""
    app = dspex_of(request)
    record = program_or_404(app, name)
    versions = app.programs.repository.versions(name)
    try:
        default: str | None = app.programs.resolve(name).id
    except ConfigurationError:  # only archived versions: a run needs an explicit version
        default = None
    return JSONResponse({**program_json(record, versions), "default_version": default})


@router.get("/{name}/versions", response_model=list[VersionOut], responses=errors(401, 403, 404))
def versions(name: ProgramName, request: Request, _principal: Principal = Depends(_read)) -> JSONResponse:
    """The program's versions, newest first (without their state payloads)."""
    app = dspex_of(request)
    program_or_404(app, name)
    return JSONResponse([version_json(v) for v in app.programs.repository.versions(name)])


@router.post(
    "/{name}/versions/{version}/promote", response_model=VersionOut, responses={**ERRORS, **errors(404)}
)
def promote(
    name: ProgramName,
    version: Annotated[
        str, Path(description="A version id or a unique prefix of 6+ characters.", max_length=64)
    ],
    request: Request,
    _principal: Principal = Depends(_write),
) -> JSONResponse:
    """Make a version production; the previous production version is archived."""
    app = dspex_of(request)
    resolved = version_or_404(app, name, version)
    return JSONResponse(version_json(app.programs.promote(name, resolved.id)))


@router.post("/{name}/rollback", response_model=VersionOut, responses=errors(401, 403, 404, 409))
def rollback(name: ProgramName, request: Request, _principal: Principal = Depends(_write)) -> JSONResponse:
    """Archive the production version and bring back the one that was production before it."""
    app = dspex_of(request)
    program_or_404(app, name)
    try:
        restored = app.programs.rollback(name)
    except ConfigurationError as exc:  # nothing to roll back to
        raise ApiError(409, "conflict", exc.message) from exc
    return JSONResponse(version_json(restored))


@router.put("/{name}/cache", response_model=ProgramOut, responses=errors(401, 403, 404, 422))
def set_cache(
    name: ProgramName, body: CacheSetting, request: Request, _principal: Principal = Depends(_write)
) -> JSONResponse:
    """Turn the program-level cache on with a TTL, or off (``ttl_s: null``); every server and worker
    sharing the database applies it within a second."""
    app = dspex_of(request)
    program_or_404(app, name)
    app.set_cache(name, body.ttl_s)
    if body.ttl_s is None:
        app.cache.clear(name)
    record = program_or_404(app, name)
    return JSONResponse(program_json(record, app.programs.repository.versions(name)))
