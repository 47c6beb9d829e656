"""API-key authentication and scope checks.

A request carries its key as ``Authorization: Bearer dspex_<id>_<secret>`` or ``X-API-Key: dspex_...``.
Missing, malformed, unknown and revoked keys get 401 (with ``WWW-Authenticate: Bearer``); a key without
the endpoint's scope, or limited to other programs, gets 403. ``admin`` implies every scope.

Keys are checked with :meth:`ApiKeyRepository.verify <dspex.store.keys.ApiKeyRepository.verify>` and the
answer (positive or negative) is memoised in process for ``ttl_s`` seconds (default 5), keyed by the
SHA-256 of the presented token, never the token, so the hot path does not read the database on every
request. Consequence: a revoked key keeps working for at most ``ttl_s`` seconds on a server that saw it
recently. ``last_used_at`` is written at most once a minute per key. Nothing here logs a key: log lines
name the public key id at most.

Without auth (``create_app(..., auth=False)``, ``dspex serve --no-auth``: loopback only) every request acts
as a local administrator.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from dspex.server.errors import ApiError
from dspex.store.keys import parse_key

if TYPE_CHECKING:
    from dspex.store.keys import ApiKeyRecord, ApiKeyRepository

__all__ = ["LOCAL", "KeyAuthenticator", "Principal", "require"]

log = logging.getLogger("dspex.server.auth")

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer dspex_...`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, `dspex_...`.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dspex"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's id, name, scopes and programs (``None``: every program)."""

    key_id: str | None
    name: str
    scopes: frozenset[str]
    programs: frozenset[str] | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> Principal:
        programs = frozenset(record.programs) if record.programs is not None else None
        return cls(record.id, record.name, frozenset(record.scopes), programs)

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_use(self, program: str | None) -> bool:
        return program is None or self.programs is None or program in self.programs

    def check_program(self, program: str | None) -> None:
        """403 unless the key may touch ``program``."""
        if not self.may_use(program):
            raise ApiError(403, "forbidden", f"this API key may not use program {program!r}")


LOCAL = Principal(None, "local", frozenset({"admin"}), None)


class KeyAuthenticator:
    """Verifies keys against the store with a short in-process memo (see the module docstring)."""

    def __init__(
        self,
        keys: Callable[[], ApiKeyRepository],
        *,
        ttl_s: float = 5.0,
        touch_every_s: float = 60.0,
        max_entries: int = 10_000,
    ) -> None:
        self._keys = keys
        self.ttl_s = ttl_s
        self.touch_every_s = touch_every_s
        self.max_entries = max_entries
        self._memo: dict[bytes, tuple[Principal | None, float]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of an active key, or None."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        hit = self._memo.get(digest)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            record = await asyncio.to_thread(self._keys().verify, token)
            principal = Principal.of(record) if record is not None else None
            with self._lock:
                if len(self._memo) >= self.max_entries:  # bounded: garbage tokens cannot grow it
                    self._memo.clear()
                self._memo[digest] = (principal, now + self.ttl_s)
        if principal is not None and principal.key_id is not None:
            await self._touch(principal.key_id, now)
        return principal

    async def _touch(self, key_id: str, now: float) -> None:
        last = self._touched.get(key_id)
        if last is not None and now - last < self.touch_every_s:
            return
        self._touched[key_id] = now
        try:
            await asyncio.to_thread(self._keys().touch, key_id)
        except Exception:  # bookkeeping; a busy database must not fail the request
            log.warning("could not record the use of API key %s", key_id, exc_info=True)

    def forget(self) -> None:
        """Drop the memo (after revoking a key in this process, for instance)."""
        with self._lock:
            self._memo.clear()


def _token(request: Request, bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    if api_key:
        return api_key
    if request.headers.get("authorization") is not None:
        raise ApiError(
            401,
            "unauthorized",
            "malformed Authorization header; send 'Authorization: Bearer dspex_...'",
            headers=_CHALLENGE,
        )
    raise ApiError(
        401,
        "unauthorized",
        "missing API key; send 'Authorization: Bearer dspex_...' or 'X-API-Key: dspex_...'",
        headers=_CHALLENGE,
    )


def require(
    scope: str, *alternatives: str, program_param: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's :class:`Principal`, checked for ``scope`` or one of ``alternatives``
    (and for the program named by the path parameter ``program_param``, when given)."""

    async def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
        api_key: str | None = Security(_api_key),
    ) -> Principal:
        authenticator: KeyAuthenticator | None = request.app.state.authenticator
        if authenticator is None:
            return LOCAL
        token = _token(request, bearer, api_key)
        if parse_key(token) is None:
            raise ApiError(
                401,
                "unauthorized",
                "malformed API key; keys look like dspex_<id>_<secret>",
                headers=_CHALLENGE,
            )
        principal = await authenticator.authenticate(token)
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
        if not any(principal.has(s) for s in (scope, *alternatives)):
            either = "".join(f" (or {s!r})" for s in alternatives)
            raise ApiError(403, "forbidden", f"this API key lacks the {scope!r}{either} scope")
        if program_param is not None:
            principal.check_program(request.path_params.get(program_param))
        return principal

    return dependency
