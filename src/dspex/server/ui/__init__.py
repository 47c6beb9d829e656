"""The dashboard at ``/ui``: server-rendered pages over the same App facade the REST API uses.

Jinja2 templates and htmx (live rows over server-sent events), charts drawn by Chart.js; both scripts are
vendored under ``static/vendor`` with their licences, so nothing loads from another site. Log in with an
API key: the key becomes a signed, HTTP-only, SameSite session cookie (:mod:`.session`); forms that
change something carry a CSRF token; what a key's scopes do not allow is neither shown nor accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["install_ui"]


def install_ui(api: FastAPI) -> None:
    """Serve the dashboard from ``api`` (``create_app`` calls this): pages under ``/ui``, assets under
    ``/ui/static``."""
    from importlib.resources import files

    from fastapi import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.staticfiles import StaticFiles

    from dspex.server.ui import catalog, live_ops, login, runs, work
    from dspex.server.ui._web import LoginRequired, UiError, environment, render
    from dspex.server.ui.session import SessionSigner

    api.state.ui_signer = SessionSigner()
    api.state.ui_templates = environment()
    static = str(files("dspex.server.ui") / "static")
    api.mount("/ui/static", StaticFiles(directory=static), name="ui-static")
    for module in (login, runs, catalog, work, live_ops):
        api.include_router(module.router, include_in_schema=False)

    async def login_required(request: Request, _exc: Exception) -> Response:
        target = f"/ui/login?next={request.url.path}"
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.method != "GET":
            return HTMLResponse("log in again: /ui/login", status_code=401)
        return RedirectResponse(target, status_code=303)

    async def ui_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UiError)
        return render(request, "error.html", status_code=exc.status, title=exc.title, message=exc.message)

    api.add_exception_handler(LoginRequired, login_required)
    api.add_exception_handler(UiError, ui_error)
