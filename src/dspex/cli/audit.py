"""``dspex audit``: who registered, replaced, promoted or rolled back which program, and when.

dspex audit [--program qa] [--limit 50] [--json]
"""

from __future__ import annotations

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, open_app, text


def audit(
    program: str | None = typer.Option(None, "--program", help="Only this program."),
    limit: int = typer.Option(50, "--limit", min=1, help="How many events, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table."),
) -> None:
    """List the audit trail of program changes, newest first."""
    with open_app() as dspex_app:
        events = dspex_app.programs.audit.list(program=program, limit=limit)
    if as_json:
        emit_json([event.to_json() for event in events])
        return
    table = Table("at", "actor", "action", "program", "before", "after")
    for event in events:
        table.add_row(
            fmt_time(event.at),
            text(event.actor),
            event.action,
            text(event.program or ""),
            (event.before_version or "-")[:12],
            (event.after_version or "-")[:12],
        )
    console().print(table)
