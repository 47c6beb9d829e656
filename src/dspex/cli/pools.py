"""``dspex pools``: the worker pools of dspex.toml, started to check them, or as the processes running them
have them.

    dspex pools check                      # start every configured pool, show its workers, stop it
    dspex pools check general --json
    dspex pools status                     # every process of this project running pools (no server needed)
    dspex pools status --url http://127.0.0.1:8000 --key dspex_...   # a server's pools over its API

Pools belong to the process that starts them (``dspex serve --pool``, ``dspex worker --pool``, or
``App.run(..., pool=)``); there is no pool daemon to ask. Each such process publishes its pools' status
under the home directory (:mod:`dspex.pools.published`), which ``status`` reads; with ``--url`` it asks a
server over its API instead. ``check`` starts the pools here.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, errors, open_app, text
from dspex.errors import ConfigurationError

app = typer.Typer(
    help="Worker pools: check the configured ones, or show the running ones.", no_args_is_help=True
)


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
    url: str | None = typer.Option(
        None, "--url", help="Ask this server (GET /v1/pools) instead of reading the home directory."
    ),
    key: str | None = typer.Option(
        None,
        "--key",
        help="With --url: an admin API key (default: the DSPEX_SERVICE_KEY environment variable).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the pools' status as JSON."),
) -> None:
    """Show the pools that processes of this project run: each worker's pid, RSS, tasks and state.

    Without --url, from what every process running pools publishes under the home directory (a process
    gone or silent for 10 s is marked stale). Exit code 0 (also when no pool runs).
    """
    if url is not None:
        _status_of_server(url, key, as_json)
        return
    from dspex.pools.published import read_published
    from dspex.settings import Settings

    with errors():
        home = Settings.load().home
        entries = read_published(home)
    if as_json:
        emit_json(entries)
        return
    out = console()
    if not entries:
        out.print(f"no process runs pools under {text(str(home))}")
        return
    for entry in entries:
        if "error" in entry:
            out.print(f"{text(entry['file'])}: {text(entry['error'])}")
            continue
        state = " (STALE: its process is gone)" if entry["gone"] else " (STALE)" if entry["stale"] else ""
        out.print(
            f"process {entry['pid']} on {text(entry['host'])}: {text(entry['command'])}, "
            f"updated {entry['age_s']:.1f} s ago{state}"
        )
        _render(entry["pools"])


def _status_of_server(url: str, key: str | None, as_json: bool) -> None:
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
