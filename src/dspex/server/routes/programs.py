"""Programs: register from a spec, list, show, versions, promote, roll back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from dspex.errors import ConfigurationError, DSPexError, SpecError
from dspex.server.app import checked_document, dspex_of
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
_promote = require("programs:promote", program_param="name")


def actor_of(principal: Principal) -> str:
    """How the audit trail names the caller."""
    return f"key:{principal.key_id}" if principal.key_id else "local"


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

    Registering an existing name with another spec is a 409 unless ``replace`` is true; replacing the
    spec of a program in production needs the ``programs:promote`` scope. The spec is data: it names
    only the tools and functions the operator registered and the models the operator configured, and
    may set sampling settings only; anything naming code, an interpreter or a host is a 422 before
    anything is imported or built.
    """
    principal.check_program(body.name)
    app = dspex_of(request)
    checked_document(request, body.spec, "spec")
    app.spec_policy("untrusted").check_program_spec(body.spec)
    registry = app.programs
    existing = registry.repository.get_program(body.name)
    if existing is not None and not body.replace:
        stored = existing.source.get("spec") if existing.source.get("kind") == "spec" else None
        if stored != body.spec:
            raise ApiError(
                409,
                "conflict",
                f"program {body.name!r} exists with another source; set replace=true to replace it",
            )
    if (
        body.replace
        and not principal.has("programs:promote")
        and registry.replaces_production(body.name, body.spec)
    ):
        raise ApiError(
            403,
            "forbidden",
            f"program {body.name!r} is in production; replacing its spec needs the 'programs:promote' scope",
        )
    try:
        version = registry.register(
            body.name,
            body.spec,
            description=body.description,
            replace=body.replace,
            actor=actor_of(principal),
        )
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
    principal: Principal = Depends(_promote),
) -> JSONResponse:
    """Make a version production; the previous production version is archived (``programs:promote``)."""
    app = dspex_of(request)
    resolved = version_or_404(app, name, version)
    return JSONResponse(version_json(app.programs.promote(name, resolved.id, actor=actor_of(principal))))


@router.post("/{name}/rollback", response_model=VersionOut, responses=errors(401, 403, 404, 409))
def rollback(name: ProgramName, request: Request, principal: Principal = Depends(_promote)) -> JSONResponse:
    """Archive the production version and bring back the one that was production before it
    (``programs:promote``)."""
    app = dspex_of(request)
    program_or_404(app, name)
    try:
        restored = app.programs.rollback(name, actor=actor_of(principal))
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
