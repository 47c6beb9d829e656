"""``create_app``: the REST service over one :class:`~dspex.runtime.app.App`.

::

    from dspex import App
    from dspex.server import create_app

    app = App()
    api = create_app(app)                 # API keys required (dspex keys create ...)
    uvicorn.run(api, host="127.0.0.1", port=8000)
    app.close()                           # the caller owns the App: close it after the server stops

The service is a thin shell: routes parse and check the request, call the App facade (``arun``,
``programs``, ``datasets``, ``executions``, ``jobs``...), and render JSON. Errors map to status codes in one
place (:mod:`dspex.server.errors`), auth in another (:mod:`dspex.server.auth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from dspex.server.auth import KeyAuthenticator
from dspex.server.errors import JSONResponse, install_handlers
from dspex.server.limits import BodyLimit
from dspex.server.metrics import Metrics, MetricsMiddleware

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = ["ServiceOptions", "checked_document", "create_app", "dspex_of", "options_of"]


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """Knobs of the service that tests and deployments tune.

    ``events_poll_s``: how often an optimization's event stream reads the database; ``events_timeout_s``:
    the longest such a stream stays open (the client reconnects to follow longer); ``worker_stale_s``: a
    worker whose last heartbeat is older does not count as alive in ``/health``; ``ping_s``: the SSE
    keep-alive comment interval; ``pool``: the worker pool runs execute on (``dspex serve --pool``;
    None: in the server process).
    """

    events_poll_s: float = 1.0
    events_timeout_s: float = 3600.0
    worker_stale_s: float = 90.0
    ping_s: float = 15.0
    pool: str | None = None


def create_app(
    dspex_app: App,
    *,
    auth: bool = True,
    key_ttl_s: float = 5.0,
    options: ServiceOptions | None = None,
) -> FastAPI:
    """The FastAPI application serving ``dspex_app``.

    ``auth=False`` accepts every request as a local administrator; only ``dspex serve --no-auth`` (which
    refuses a non-loopback host) and tests should use it. ``key_ttl_s`` bounds how long a verified (or
    rejected) key is remembered in process, and so how long a revocation takes to apply.
    """
    from importlib.metadata import version

    from dspex.server.routes import (
        adaptive,
        audit,
        batches,
        datasets,
        executions,
        feedback,
        jobs,
        ops,
        optimizations,
        pools,
        programs,
        runs,
        sessions,
        signals,
    )

    api = FastAPI(
        title="DSPex",
        version=version("dspex"),
        description=(
            "Run, record, version and optimize DSPy programs. Authenticate with an API key "
            "(`dspex keys create`): `Authorization: Bearer dspex_...` or `X-API-Key: dspex_...`. "
            'Errors are JSON: `{"error": {"code", "message", ...}}`.'
        ),
        default_response_class=JSONResponse,
    )
    api.state.dspex = dspex_app
    options = options or ServiceOptions()
    if options.pool is not None:
        dspex_app.pools.setting(options.pool)  # an unknown pool is a ConfigurationError listing the valid
    api.state.options = options
    api.state.metrics = Metrics()
    api.state.authenticator = KeyAuthenticator(lambda: dspex_app.keys, ttl_s=key_ttl_s) if auth else None
    install_handlers(api)
    # Runs first: a request's route is found by trying the routes in order, and runs are the hot path.
    routers = (runs, programs, sessions, executions, feedback, datasets, optimizations, jobs, audit, pools)
    for module in (*routers, adaptive, signals, ops, batches):
        api.include_router(module.router)
    from dspex.server.ui import install_ui

    install_ui(api)  # the dashboard at /ui, over the same App and keys
    api.add_middleware(MetricsMiddleware, metrics=api.state.metrics)
    # Outermost, so an oversized body is refused before anything reads it.
    api.add_middleware(BodyLimit, max_bytes=dspex_app.settings.max_body_bytes)
    _document_body_limit(api)
    return api


def _document_body_limit(api: FastAPI) -> None:
    """Every operation may answer 413 (the body limit applies before routing): say so in each."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = build()
            too_large = {
                "description": "The request body is over the server's limit (DSPEX_MAX_BODY_BYTES)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.setdefault("responses", {}).setdefault("413", too_large)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def checked_document(request: Request, value: Any, field: str) -> None:
    """A spec or space document from the request, within the settings' depth and size limits."""
    from dspex.server.limits import check_document

    settings = dspex_of(request).settings
    check_document(value, field, max_depth=settings.max_spec_depth, max_bytes=settings.max_spec_bytes)


def dspex_of(request: Request) -> App:
    """The App a request is served by."""
    app: App = request.app.state.dspex
    return app


def options_of(request: Request) -> ServiceOptions:
    options: ServiceOptions = request.app.state.options
    return options


def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics
