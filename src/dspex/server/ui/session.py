"""The dashboard's login session and CSRF tokens.

Logging in with an API key sets a cookie that holds no key: ``<payload>.<mac>``, where the payload is
base64url JSON ``{"k": key id, "e": expiry (Unix s), "n": random nonce}`` and the mac its HMAC-SHA256
under a secret that lives only in the server process (:class:`SessionSigner`). The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure``
over HTTPS. Each request re-reads the key by id, so a revoked key's sessions end at once, and the scopes
are always the key's current ones. A server restart (a new secret) ends every session: log in again.
Several servers behind one address would each need the same secret; that is not supported yet.

CSRF: every form that changes something carries ``csrf``, the HMAC of the session's nonce under the
same secret (htmx requests send it as ``X-CSRF-Token``); the login form itself, before any session,
uses a double-submit token (a random cookie repeated in the form).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Session", "SessionSigner"]

SESSION_COOKIE = "dspex_session"
CSRF_COOKIE = "dspex_login_csrf"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session cookie: whose key, until when, and its nonce (the CSRF token's seed)."""

    key_id: str | None
    expires: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and checks session cookies and CSRF tokens with a per-process secret."""

    def __init__(self, *, ttl_s: float = 12 * 3600, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _mac(self, purpose: str, data: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{data}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str | None) -> tuple[str, Session]:
        """A new cookie value for ``key_id`` (None: the local administrator of a server without auth)."""
        session = Session(key_id, time.time() + self.ttl_s, secrets.token_urlsafe(16))
        payload = _b64(json.dumps({"k": key_id, "e": session.expires, "n": session.nonce}).encode())
        return f"{payload}.{self._mac('session', payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session of a well-signed, unexpired cookie; None for anything else."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1000:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("e"), int | float):
            return None
        key_id, nonce = data.get("k"), data.get("n")
        if not isinstance(nonce, str) or not (key_id is None or isinstance(key_id, str)):
            return None
        if data["e"] < time.time():
            return None
        return Session(key_id, float(data["e"]), nonce)

    def csrf(self, session: Session) -> str:
        """The CSRF token of the forms of ``session``."""
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))
