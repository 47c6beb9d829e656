"""``dspex pools``: the worker pools of dspex.toml, started to check them, or as a running server has them.

    dspex pools check                      # start every configured pool, show its workers, stop it
    dspex pools check general --json
    dspex pools status --url http://127.0.0.1:8000 --key dspex_...   # a server's pools (admin key)

Pools belong to the process that starts them (``dspex serve --pool``, or ``App.run(..., pool=)``); there
is no pool daemon to ask, so ``status`` asks a server over its API and ``check`` starts the pools here.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, errors, open_app, text
from dspex.errors import ConfigurationError

app = typer.Typer(help="Worker pools: check the configured ones, or show a server's.", no_args_is_help=True)


def _render(pools: list[dict[str, Any]]) -> None:
    out = console()
    for pool in pools:
        state = "healthy" if pool["healthy"] else "UNHEALTHY"
        table = Table(
            title=f"pool {text(pool['name'])}: {pool['size']} workers, {state}, {pool['queued']} queued, "
            f"{pool['completed']} done, {pool['failed']} failed"
        )
        for column in ("worker", "pid", "state", "RSS MB", "tasks", "age s", "heartbeat s"):
            table.add_column(column)
        for worker in pool["workers"]:
            table.add_row(
                text(worker["name"]),
                str(worker["pid"]),
                text(worker["state"]),
                "-" if worker["rss_mb"] is None else f"{worker['rss_mb']:.0f}",
                str(worker["tasks"]),
                f"{worker['age_s']:.1f}",
                "-" if worker["heartbeat_age_s"] is None else f"{worker['heartbeat_age_s']:.1f}",
            )
        out.print(table)
        if pool["replaced"]:
            out.print("replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(pool["replaced"].items())))
        if pool["last_error"]:
            out.print(f"last error: {text(pool['last_error'])}")


@app.command("check")
def check(
    names: list[str] = typer.Argument(None, help="Pools to check (default: every configured one)."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="Print the pools' status as JSON."),
) -> None:
    """Start the pools (each worker ready: imports, initializer), print their workers, stop them.

    Exit codes: 0 every pool started, 2 a pool is unknown, misconfigured or cannot start (it says why).
    """
    with open_app() as dspex_app:
        chosen = list(names or dspex_app.pools.names)
        for name in chosen:
            dspex_app.pools.setting(name)  # unknown names fail before any pool starts
        statuses = [dspex_app.pools.get(name).status().to_json() for name in chosen]
    if as_json:
        emit_json(statuses)
    else:
        _render(statuses)


@app.command("status")
def status(
    url: str = typer.Option(..., "--url", help="The server, e.g. http://127.0.0.1:8000."),
    key: str | None = typer.Option(
        None, "--key", help="An admin API key (default: the DSPEX_SERVICE_KEY environment variable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the pools' status as JSON."),
) -> None:
    """Show a running server's pools (GET /v1/pools): each worker's pid, RSS, tasks and state."""
    with errors():
        token = key or os.environ.get("DSPEX_SERVICE_KEY")
        if not token:
            raise ConfigurationError("give an admin API key with --key or DSPEX_SERVICE_KEY")
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{url.rstrip('/')}/v1/pools", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10.0) as response:
                pools: list[dict[str, Any]] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ConfigurationError(
                f"{url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigurationError(f"cannot reach {url}: {exc}") from None
    if as_json:
        emit_json(pools)
    else:
        _render(pools)
