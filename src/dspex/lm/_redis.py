"""The Redis connection that shared rate limits and circuit breakers use (``DSPEX_REDIS_URL``).

``redis`` is imported here, lazily, so ``import dspex`` never pays for it. One client (a thread-safe
connection pool) serves every limiter or breaker of a :class:`~dspex.lm.limits.Limits` or
:class:`~dspex.lm.breaker.Breakers` object; Redis errors become a retryable :class:`~dspex.errors.LMError`
that names the server (never its password) and what to check::

    client = connect("redis://127.0.0.1:6379/0")
    with redis_errors(client, "rate limiter"):
        client.ping()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dspex.errors import ConfigurationError, LMError

if TYPE_CHECKING:
    import redis

__all__ = ["connect", "redacted", "redis_errors", "server_time"]

SOCKET_TIMEOUT_S = 5.0  # a Redis that does not answer in this long fails the call rather than hang it


def redacted(url: str) -> str:
    """``url`` without its password, for messages and status views."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); nothing is sent until first use."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"Redis URL {redacted(url)!r} is not one: use redis://host:port/db, rediss://... or unix:///path "
            "(DSPEX_REDIS_URL)"
        )
    import redis

    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )


def _url_of(client: redis.Redis) -> str:
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


@contextlib.contextmanager
def redis_errors(client: redis.Redis, what: str) -> Iterator[None]:
    """Turn a Redis failure inside the block into a retryable ``LMError`` saying which server and why.

    The original error is chained. redis-py reconnects on the next command, so the caller may retry.
    """
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise LMError(
            f"the {what} cannot use Redis at {_url_of(client)}: {type(exc).__name__}: {exc}; "
            "check that Redis is up and DSPEX_REDIS_URL points at it",
            retryable=True,
        ) from exc


def server_time(client: redis.Redis) -> float:
    """Redis's clock (``TIME``) in seconds since the epoch: the one clock every process agrees on."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000
