"""What every dashboard page shares: the templates, who is looking (from the session cookie), CSRF
checks on changes, and the HTML answers for a missing login, a missing scope and a missing thing."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import Request
from starlette.responses import HTMLResponse

from dspex.server.auth import LOCAL, Principal
from dspex.server.ui.session import SESSION_COOKIE, Session, SessionSigner

if TYPE_CHECKING:
    import jinja2

    from dspex.runtime.app import App

__all__ = ["UiError", "Viewer", "form_of", "render", "viewer"]


class UiError(Exception):
    """An answer of the dashboard other than the page: a status, a title and a message (rendered as HTML)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class LoginRequired(Exception):
    """No valid session: the browser goes to the login page (an htmx request is told to go there)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at a page: the App, the key's principal and the session (for CSRF tokens)."""

    app: App
    principal: Principal
    session: Session
    signer: SessionSigner

    @property
    def csrf(self) -> str:
        return self.signer.csrf(self.session)

    def can(self, scope: str) -> bool:
        return self.principal.has(scope)

    def require(self, scope: str, program: str | None = None) -> None:
        """Refuse (403) an action the key may not do: the page hides it, and the server refuses it too."""
        if not self.principal.has(scope):
            raise UiError(403, "Not allowed", f"this API key lacks the {scope!r} scope")
        if not self.principal.may_use(program):
            raise UiError(403, "Not allowed", f"this API key may not use program {program!r}")

    def check_program(self, program: str | None) -> None:
        if not self.principal.may_use(program):
            raise UiError(403, "Not allowed", f"this API key may not use program {program!r}")


def signer_of(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.ui_signer
    return signer


def viewer(request: Request) -> Viewer:
    """The dependency of every page: a logged-in viewer with the ``programs:read`` scope.

    Without auth (``dspex serve --no-auth``, loopback only) everyone is the local administrator.
    """
    app: App = request.app.state.dspex
    signer = signer_of(request)
    session = signer.read(request.cookies.get(SESSION_COOKIE))
    if request.app.state.authenticator is None:
        if session is None:  # a fixed per-process session: CSRF tokens still guard the forms
            session = Session(None, 0.0, "local")
        return Viewer(app, LOCAL, session, signer)
    if session is None or session.key_id is None:
        raise LoginRequired()
    record = app.keys.get(session.key_id)
    if record is None or not record.active:  # revoked since login: the session ends with the key
        raise LoginRequired()
    principal = Principal.of(record)
    if not principal.has("programs:read"):
        raise UiError(403, "Not allowed", "the dashboard needs a key with the 'programs:read' scope")
    return Viewer(app, principal, session, signer)


async def form_of(request: Request, viewer: Viewer, *, max_bytes: int = 65536) -> dict[str, str]:
    """The submitted form's fields (URL-encoded), after checking its CSRF token."""
    fields = await read_form(request, max_bytes=max_bytes)
    token = fields.get("csrf") or request.headers.get("x-csrf-token")
    if not viewer.signer.check_csrf(viewer.session, token):
        raise UiError(403, "Form expired", "the form's CSRF token is missing or wrong; reload the page")
    return fields


async def read_form(request: Request, *, max_bytes: int = 65536) -> dict[str, str]:
    body = await request.body()
    if len(body) > max_bytes:
        raise UiError(413, "Too large", f"the form is over {max_bytes} bytes")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UiError(400, "Bad form", f"the form could not be read: {exc}") from exc
    return {name: values[-1] for name, values in parsed.items()}


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dspex.server.ui", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ms"] = _ms
    env.filters["usd"] = _usd
    env.filters["short"] = lambda value: (value or "")[:12]
    env.filters["pretty"] = _pretty
    env.filters["num"] = lambda value: _NONE if value is None else f"{value:,}"
    return env


_NONE = "\u2013"  # an en dash: what a table shows for no value


def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return _NONE
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return _NONE if value is None else f"{value:,.1f} ms"


def _usd(value: float | None) -> str:
    return _NONE if value is None else f"${value:,.6f}"


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page rendered with ``context`` (plus the request and, when logged in, the viewer)."""
    env: jinja2.Environment = request.app.state.ui_templates
    html = env.get_template(template).render(request=request, root="/ui", **context)
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


# Scripts, styles, data and forms from this server only (so nothing can load from a CDN, and injected
# markup could not run a script); no framing (the buttons cannot be clickjacked); pages not cached.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def environment() -> jinja2.Environment:
    return _environment()
