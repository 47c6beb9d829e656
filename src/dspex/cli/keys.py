"""``dspex keys``: API keys of the REST service (stored hashed; the key is shown once, at creation).

dspex keys create ci-runner --scope runs:execute --scope programs:read --program qa
dspex keys list [--all] [--json]
dspex keys revoke 3fa1c09e2b7d
"""

from __future__ import annotations

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, open_app, text

app = typer.Typer(help="Create, list and revoke API keys of the REST service.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of a table.")


@app.command("create")
def create(
    name: str = typer.Argument(..., help="What the key is for, e.g. ci-runner."),
    scopes: list[str] = typer.Option(  # noqa: B008
        ...,
        "--scope",
        help="programs:read, programs:write, programs:promote, runs:execute, feedback, optimize or admin "
        "(repeat for several).",
    ),
    programs: list[str] | None = typer.Option(  # noqa: B008
        None, "--program", help="Limit the key to this program (repeat for several; default: every one)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Create a key and print it ONCE: only its hash is stored, so it cannot be shown again."""
    with open_app() as dspex_app:
        record, key = dspex_app.keys.create(name, scopes, programs=programs or None)
    if as_json:
        emit_json({**record.to_json(), "key": key})
        return
    typer.echo(key)
    typer.echo(
        f"created API key {record.id} ({record.name}; scopes {', '.join(record.scopes)}"
        f"{'; programs ' + ', '.join(record.programs) if record.programs else ''}).\n"
        "warning: this is the only time the key is shown; store it in a secret manager now.",
        err=True,
    )


@app.command("list")
def list_keys(
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."), as_json: bool = _JSON
) -> None:
    """List keys (never their secrets)."""
    with open_app() as dspex_app:
        records = dspex_app.keys.list(include_revoked=include_revoked)
    if as_json:
        emit_json([r.to_json() for r in records])
        return
    if not records:
        console().print("no API keys yet: dspex keys create NAME --scope runs:execute")
        return
    table = Table(title=f"API keys ({len(records)})")
    for column in ("id", "name", "scopes", "programs", "created", "last used", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            text(r.name),
            ", ".join(r.scopes),
            text(", ".join(r.programs)) if r.programs is not None else "all",
            fmt_time(r.created_at),
            fmt_time(r.last_used_at),
            fmt_time(r.revoked_at),
        )
    console().print(table)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (from `dspex keys list`)."), as_json: bool = _JSON
) -> None:
    """Revoke a key. A running server stops accepting it within its key memo's TTL (5 s by default)."""
    with open_app() as dspex_app:
        record = dspex_app.keys.revoke(key_id)
    if as_json:
        emit_json(record.to_json())
        return
    console().print(f"revoked API key {record.id} ({text(record.name)}) at {fmt_time(record.revoked_at)}")
