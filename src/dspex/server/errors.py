"""How errors become HTTP responses: one JSON shape, ``{"error": {"code", "message", ...}}``.

=====================================================  ======  ==========================================
error                                                  status  why
=====================================================  ======  ==========================================
missing, malformed, unknown or revoked API key         401     ``unauthorized`` (``WWW-Authenticate``)
key lacks the scope, or the program is not its own     403     ``forbidden``
unknown program, version, execution, dataset, job...   404     ``not_found``
a job that already ended is cancelled                  409     ``conflict``
malformed body or query (pydantic)                     422     ``invalid_request``, ``field`` names it
``ValidationError`` (inputs fail the signature)        422     with ``execution_id`` of the failed record
``SpecError``, ``SignatureError``, other ``UserError``  422     the error's own code (``path`` for specs)
``LMError``, retryable                                 503     ``Retry-After`` when the provider said
``LMError``, not retryable                             502     the LM is the upstream that failed
``DeadlineExceeded`` (the run's ``timeout`` passed)     504     ``deadline_exceeded``, with ``execution_id``
the store is down (``DatabaseUnavailable``, any route) 503     ``database_unavailable``, ``Retry-After: 1``
``ExecutionError``, ``StepError`` (the program raised)  502     ``program_failed``, with ``execution_id``
anything else                                          500     ``internal_error``, logged with traceback
=====================================================  ======  ==========================================

A failing program or LM is reported as a bad gateway, not a server error: the request was fine, the
program it named failed, and the execution record (its id is in the body) says how. No request input
maps to 500; a 500 is a bug in dspex.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy.exc
import starlette.responses
from starlette.responses import Response

from dspex.errors import (
    DatabaseUnavailable,
    DeadlineExceeded,
    DSPexError,
    ExecutionError,
    LMError,
    RunError,
    SignatureError,
    SpecError,
    UserError,
    ValidationError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError

__all__ = ["ApiError", "JSONResponse", "error_response", "install_handlers", "not_found"]

log = logging.getLogger("dspex.server")


class JSONResponse(starlette.responses.JSONResponse):
    """A JSON response encoded with orjson (faster than the standard library on the run path)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class ApiError(Exception):
    """An error the service answers with ``status`` and the standard error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = {k: v for k, v in extra.items() if v is not None}


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def dspex_error_response(exc: DSPexError) -> JSONResponse:
    """The response for one of dspex's own errors (see the module docstring)."""
    execution_id = getattr(exc, "execution_id", None)
    if isinstance(exc, ValidationError):
        issues = [{"field": i.field, "message": i.message, "expected": i.expected} for i in exc.issues]
        return error_response(
            422,
            exc.code,
            exc.message,
            field=issues[0]["field"] if issues else None,
            issues=issues or None,
            execution_id=execution_id,
        )
    if isinstance(exc, SpecError):
        return error_response(422, exc.code, str(exc), path=exc.path)
    if isinstance(exc, SignatureError):
        return error_response(422, exc.code, exc.message)
    if isinstance(exc, UserError):
        return error_response(422, exc.code, exc.message, execution_id=execution_id)
    if isinstance(exc, LMError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return error_response(
            503 if exc.retryable else 502,
            exc.code,
            exc.message,
            headers=headers,
            execution_id=execution_id,
            retryable=exc.retryable,
        )
    if isinstance(exc, DeadlineExceeded):
        return error_response(504, exc.code, exc.message, execution_id=execution_id)
    if isinstance(exc, DatabaseUnavailable):
        return error_response(
            503,
            exc.code,
            exc.message,
            headers={"Retry-After": "1"},
            execution_id=execution_id,
            retryable=True,
        )
    if isinstance(exc, RunError):
        return error_response(
            502, "program_failed", exc.message, execution_id=execution_id, detail_code=exc.code
        )
    return error_response(500, "internal_error", "internal error; the server log has the details")


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "inputs", "question") -> "inputs.question"; ("query", "limit") -> "limit"
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def install_handlers(app: FastAPI) -> None:
    """Map every error to the JSON error body (see the module docstring)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)

    async def on_dspex_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DSPexError)
        if isinstance(exc, ExecutionError | LMError | RunError):
            log.info("run failed: %s (%s)", exc.code, getattr(exc, "execution_id", None))
        return dspex_error_response(exc)

    async def on_request_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (bytes that are not text): the body's fault, said as
            # the documented 422 every malformed body gets.
            return error_response(
                422,
                "invalid_request",
                f"body: {exc.detail}",
                field="body",
                issues=[{"field": "body", "message": str(exc.detail)}],
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    async def on_database_error(request: Request, exc: Exception) -> Response:
        # Handled here, not by the catch-all: Starlette re-raises what reaches its 500 handler.
        from dspex.store._engine import database_unavailable, describe_error

        if not database_unavailable(exc):
            return await on_unexpected(request, exc)
        log.warning("%s %s: the database is unavailable (%s)", request.method, request.url.path,
                    describe_error(exc))  # fmt: skip
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry once it is back",
            headers={"Retry-After": "1"},
            retryable=True,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error; the server log has the details")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(DSPexError, on_dspex_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, on_database_error)  # any route, store down
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, on_database_error)  # no pooled connection
    app.add_exception_handler(Exception, on_unexpected)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def validation_response(exc: RequestValidationError) -> JSONResponse:
    issues = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
            loc = ("body",)
        issues.append({"field": _field(loc), "message": message})
    first = issues[0] if issues else {"field": "body", "message": "invalid request"}
    return error_response(
        422,
        "invalid_request",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        issues=issues,
    )
