"""``dspex serve``: the REST service (FastAPI on uvicorn) over this project's database and settings.

dspex keys create ci --scope runs:execute --scope programs:read
dspex serve --host 0.0.0.0 --port 8000
dspex serve --no-auth                  # local only: no API keys, refuses any non-loopback host
dspex serve --pool general             # runs execute on the general worker pool (every core)
"""

from __future__ import annotations

import ipaddress
import os
import signal
from typing import Any

import typer

from dspex.cli._render import errors
from dspex.errors import ConfigurationError

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 for every one)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0 picks a free one)."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Local-only mode without API keys; refuses a non-loopback --host."
    ),
    log_level: str = typer.Option("info", "--log-level", help=f"One of {', '.join(_LOG_LEVELS)}."),
    max_body_bytes: int | None = typer.Option(
        None,
        "--max-body-bytes",
        help="Largest request body (default DSPEX_MAX_BODY_BYTES, 8 MiB); 413 beyond.",
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="Execute runs on this worker pool (\\[pools.NAME] in dspex.toml; 'general')."
    ),
) -> None:
    """Serve the REST API (OpenAPI document at /openapi.json, docs at /docs)."""
    with errors():
        if log_level not in _LOG_LEVELS:
            raise ConfigurationError(f"--log-level is one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
        if no_auth and not is_loopback(host):
            raise ConfigurationError(
                f"--no-auth serves without API keys and only on a loopback host (127.0.0.1, ::1, localhost); "
                f"got --host {host}. Create a key with `dspex keys create` to serve on the network"
            )
        try:
            import uvicorn

            from dspex.server import create_app
        except ImportError as exc:  # the server extra is not installed
            raise ConfigurationError(
                f"dspex serve needs the server extra: pip install 'dspex[server]' ({exc})"
            ) from None
        # uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler it found: with
        # Python's default one the process would end there, before the App closes (its pools' workers and
        # published status file, its recorder). This handler makes SIGTERM an exception, from start-up on;
        # once the App is closed, the process ends by the signal, as a process manager expects of it.
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            _serve(uvicorn.run, create_app, host, port, log_level, no_auth, pool, max_body_bytes)
        except _Terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            raise  # not reached: the signal ended the process
        finally:
            signal.signal(signal.SIGTERM, previous)


def _serve(
    run: Any,
    create_app: Any,
    host: str,
    port: int,
    log_level: str,
    no_auth: bool,
    pool: str | None,
    max_body_bytes: int | None,
) -> None:
    from dspex._heap import freeze_startup_heap
    from dspex.runtime.app import App
    from dspex.server import ServiceOptions
    from dspex.settings import Settings

    with App(Settings.load(max_body_bytes=max_body_bytes)) as dspex_app:
        if no_auth:
            typer.echo("warning: serving WITHOUT authentication (--no-auth), on this machine only", err=True)
        api = create_app(dspex_app, auth=not no_auth, options=ServiceOptions(pool=pool))
        if pool is not None:  # start it now: a pool that cannot start says why before serving
            started = dspex_app.pools.get(pool)
            typer.echo(f"runs execute on pool {pool!r}: {started.size} workers", err=True)
        freeze_startup_heap()  # this process's start-up ends here: see dspex._heap
        # The access log prints method, path and status: never headers, so never a key.
        run(api, host=host, port=port, log_level=log_level, proxy_headers=False)


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (closing the App), then end by the signal."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise _Terminated
