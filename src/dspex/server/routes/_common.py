"""What several route modules share: lookups that answer 404, error responses for the OpenAPI document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from dspex.server.errors import ApiError, not_found
from dspex.server.models import ErrorBody

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.server.auth import Principal
    from dspex.store.programs import ProgramRecord, ProgramVersion

__all__ = [
    "ERRORS",
    "errors",
    "program_or_404",
    "restricted_program",
    "single_query_values",
    "version_or_404",
]

_DESCRIPTIONS = {
    401: "Missing, malformed, unknown or revoked API key",
    403: "The key lacks the scope, or may not use this program",
    404: "Not found",
    409: "Conflict with the resource's state",
    422: "Invalid request (the field at fault is named)",
    502: "The program or its LM failed (the execution record says why)",
    503: "The LM is unavailable for now (retryable); or the database is down",
    504: "The run's deadline (timeout) passed before it finished (the execution record says where)",
}


async def single_query_values(request: Request) -> None:
    """A dependency of the routers with query parameters: one given more than once is a 422. Each of
    this API's takes one value, and the framework would otherwise keep the last one silently."""
    query = request.query_params
    if len(query.multi_items()) == len(query):
        return
    name = next(key for key in query if len(query.getlist(key)) > 1)
    field = f"query.{name}"
    message = f"given {len(query.getlist(name))} times; each query parameter takes one value"
    raise ApiError(
        422,
        "invalid_request",
        f"{field}: {message}",
        field=field,
        issues=[{"field": field, "message": message}],
    )


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error statuses, all with the standard error body.

    Errors are JSON on every route, streams included (FastAPI would otherwise document them with the
    route's own media type, ``text/event-stream``), so ``application/json`` is named explicitly.
    """
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status], "content": json_body}
        for status in statuses
    }


ERRORS = errors(401, 403, 422)


def program_or_404(app: App, name: str) -> ProgramRecord:
    record = app.programs.repository.get_program(name)
    if record is None:
        raise not_found(f"unknown program {name!r}; GET /v1/programs lists them")
    return record


def version_or_404(app: App, name: str, version: str | None) -> ProgramVersion:
    """The version a run would use; 404 for an unknown program or version (an ambiguous prefix is 422)."""
    program_or_404(app, name)
    if version is not None:
        repository = app.programs.repository
        exact = repository.get_version(version)
        known = exact is not None and exact.program == name
        if not known and not any(
            len(version) >= 6 and v.id.startswith(version) for v in repository.versions(name)
        ):
            raise not_found(
                f"unknown version {version!r} of program {name!r}; GET /v1/programs/{name}/versions"
            )
    return app.programs.resolve(name, version)


def restricted_program(principal: Principal, program: str | None) -> None:
    """A key limited to some programs must name one of them when it lists records across programs."""
    if principal.programs is not None and program is None:
        raise ApiError(
            403,
            "forbidden",
            f"this API key is limited to programs {sorted(principal.programs)}; pass ?program=NAME",
        )
    principal.check_program(program)
