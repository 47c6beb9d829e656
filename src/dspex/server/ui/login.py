"""Log in with an API key (it becomes a session cookie, never stored as such) and log out."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dspex.server.ui._web import Viewer, form_of, read_form, render, signer_of, viewer
from dspex.server.ui.session import CSRF_COOKIE, SESSION_COOKIE
from dspex.store.keys import parse_key

router = APIRouter(prefix="/ui")


def _safe_next(target: str | None) -> str:
    """Only a path of the dashboard itself: a login never sends the browser to another site."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


def _login_page(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status_code=status,
        csrf=token,
        error=error,
        next=_safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the key and the form's token; on success set the session cookie and go on."""
    form = await read_form(request, max_bytes=8192)
    token = form.get("csrf", "")
    if not token or not hmac.compare_digest(token, request.cookies.get(CSRF_COOKIE, "")):
        return _login_page(request, error="The form expired; try again.", status=403)
    key = form.get("key", "").strip()
    authenticator = request.app.state.authenticator
    key_id: str | None = None
    if authenticator is not None:
        if parse_key(key) is None:
            return _login_page(
                request, error="That is not an API key: keys look like dspex_<id>_<secret>.", status=401
            )
        principal = await authenticator.authenticate(key)
        if principal is None:
            return _login_page(request, error="Unknown or revoked API key.", status=401)
        if not principal.has("programs:read"):
            return _login_page(
                request, error="The dashboard needs a key with the 'programs:read' scope.", status=403
            )
        key_id = principal.key_id
    cookie, _ = signer_of(request).issue(key_id)
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(signer_of(request).ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    response.delete_cookie(CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
async def logout(request: Request, view: Viewer = Depends(viewer)) -> Response:
    await form_of(request, view)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response
