"""API keys: scoped, optionally limited to named programs, stored hashed, shown once.

Table ``api_keys``: one row per key. A key is ``dspex_<id>_<secret>``: ``id`` (public, 12 hex
characters) finds the row, and only the SHA-256 of the 32-byte random ``secret`` is stored, compared in
constant time. A plain hash is enough for a random 256-bit secret (slow password hashes exist for
low-entropy passwords). The full key is returned once, by :meth:`ApiKeyRepository.create`, and never
again: not by ``list``, not in logs, not in errors.

Scopes: ``programs:read``, ``programs:write``, ``programs:promote`` (promote, roll back or replace a
program in production), ``runs:execute``, ``feedback`` (give feedback on runs, without reading them or
running anything: for a rating widget or a labelling tool; ``runs:execute`` may give feedback too),
``optimize``, ``admin`` (``admin`` implies every scope). ``programs``: ``None`` (every program) or the
names the key may touch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dspex.errors import ConfigurationError, did_you_mean
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import api_keys

__all__ = ["SCOPES", "ApiKeyRecord", "ApiKeyRepository", "hash_secret", "parse_key"]

SCOPES = (
    "programs:read",
    "programs:write",
    "programs:promote",
    "runs:execute",
    "feedback",
    "optimize",
    "admin",
)
_KEY = re.compile(r"^dspex_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None."""
    match = _KEY.match(token)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One API key, without its secret."""

    id: str
    name: str
    scopes: tuple[str, ...]
    programs: tuple[str, ...] | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    secret_hash: str = ""

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ApiKeyRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            scopes=tuple(row["scopes"]),
            programs=tuple(row["programs"]) if row["programs"] is not None else None,
            created_at=aware(row["created_at"]),
            revoked_at=aware(row["revoked_at"]),
            last_used_at=aware(row["last_used_at"]),
            secret_hash=row["secret_hash"],
        )

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str, program: str | None = None) -> bool:
        """True when the key has ``scope`` (or ``admin``) and may touch ``program``."""
        if scope not in self.scopes and "admin" not in self.scopes:
            return False
        return program is None or self.programs is None or program in self.programs

    def to_json(self) -> dict[str, Any]:
        """The key as JSON: never its secret or hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "programs": list(self.programs) if self.programs is not None else None,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


class ApiKeyRepository:
    """Creates, lists, revokes and verifies API keys. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, scopes: Iterable[str], *, programs: Iterable[str] | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """A new key: its record and the full key, which is shown this once and never stored."""
        if not name or len(name) > 200:
            raise ConfigurationError("an API key needs a name of 1-200 characters, e.g. 'ci-runner'")
        chosen = tuple(dict.fromkeys(scopes))
        if not chosen:
            raise ConfigurationError(f"an API key needs at least one scope: {', '.join(SCOPES)}")
        for scope in chosen:
            if scope not in SCOPES:
                raise ConfigurationError(did_you_mean(scope, SCOPES, what="scope"))
        limited = tuple(dict.fromkeys(programs)) if programs is not None else None
        if limited is not None and not limited:
            raise ConfigurationError("programs= limits a key to named programs; pass None for every program")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self.db.write() as connection:
            connection.execute(
                sa.insert(api_keys).values(
                    id=key_id,
                    name=name,
                    secret_hash=hash_secret(secret),
                    scopes=list(chosen),
                    programs=list(limited) if limited is not None else None,
                    created_at=utcnow(),
                )
            )
            row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        return ApiKeyRecord.from_row(row._mapping), f"dspex_{key_id}_{secret}"

    def list(self, *, include_revoked: bool = False) -> list[ApiKeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.db.read() as connection:
            return [ApiKeyRecord.from_row(row._mapping) for row in connection.execute(query)]

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return ApiKeyRecord.from_row(row._mapping) if row is not None else None

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key (by id, or the whole key); revoking twice keeps the first revocation time."""
        parsed = parse_key(key_id)
        key_id = parsed[0] if parsed else key_id
        with self.db.write() as connection:
            connection.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise ConfigurationError(f"unknown API key id {key_id!r}; list them with `dspex keys list`")
        return ApiKeyRecord.from_row(row._mapping)

    def verify(self, token: str) -> ApiKeyRecord | None:
        """The active key ``token`` is, or None (malformed, unknown, wrong secret or revoked)."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        record = self.get(parsed[0])
        if record is None or not record.active:
            return None
        if not hmac.compare_digest(record.secret_hash, hash_secret(parsed[1])):
            return None
        return record

    def touch(self, key_id: str) -> None:
        """Record that the key was used now (callers throttle this; it is a write)."""
        with self.db.write() as connection:
            connection.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=utcnow())
            )
