"""``dspex sessions``: sessions of this project's store (state carried across runs of a program).

dspex sessions create chat [--ttl 3600] [--variables '{"temperature": 0.2}']
dspex sessions run 1b2c... -i question="And its river?" [--pool general]
dspex sessions list [--json]
dspex sessions show 1b2c... [--json]
dspex sessions delete 1b2c...
dspex sessions prune                       # delete expired sessions
"""

from __future__ import annotations

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, json_object, key_values, open_app, short, text

app = typer.Typer(help="Sessions: history, variables and metrics carried across runs.", no_args_is_help=True)
_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of a table.")


@app.command("create")
def create(
    program: str = typer.Argument(..., help="A registered program."),
    ttl: float | None = typer.Option(
        None, "--ttl", help="Idle seconds before it expires (default: settings)."
    ),
    variables: str | None = typer.Option(None, "--variables", help="Variable values as a JSON object."),
    as_json: bool = _JSON,
) -> None:
    """Start a session; prints its id."""
    with open_app() as dspex_app:
        values = json_object(variables, "--variables") if variables is not None else None
        record = dspex_app.sessions.create(program, variables=values, ttl_s=ttl)
    if as_json:
        emit_json(record.to_json(history=False))
    else:
        typer.echo(record.id)


@app.command("run")
def run(
    session_id: str = typer.Argument(..., help="The session's id."),
    input_json: str | None = typer.Option(
        None, "--input", help="Inputs as a JSON object ('@file' reads one)."
    ),
    fields: list[str] = typer.Option([], "-i", "--field", help="One input as key=value (repeatable)."),  # noqa: B008
    pool: str | None = typer.Option(
        None, "--pool", help="Run the turn on this worker pool (default: where \\[routing] puts the program)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Run the session's next turn; the history input is filled from the session."""
    with open_app() as dspex_app:
        inputs = json_object(input_json, "--input") if input_json is not None else {}
        inputs.update(key_values(fields, "-i"))
        result = dspex_app.sessions.run(session_id, inputs, pool=pool)
        turns = dspex_app.sessions.get(session_id).turns
    if as_json:
        emit_json({"execution_id": result.execution_id, "outputs": result.outputs, "turn": turns})
        return
    table = Table(title=f"session {short(session_id)}, turn {turns}")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    for name, value in result.outputs.items():
        table.add_row(text(name), text(value))
    console().print(table)


@app.command("list")
def list_sessions(as_json: bool = _JSON) -> None:
    """Live sessions, most recently used first."""
    with open_app() as dspex_app:
        records = dspex_app.sessions.list()
    if as_json:
        emit_json([r.to_json(history=False) for r in records])
        return
    table = Table(title="sessions")
    for column in ("id", "program", "owner", "turns", "updated", "expires"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id, text(r.program), text(r.owner), str(r.turns), fmt_time(r.updated_at), fmt_time(r.expires_at)
        )
    console().print(table)


@app.command("show")
def show(session_id: str = typer.Argument(..., help="The session's id."), as_json: bool = _JSON) -> None:
    """A session with every turn."""
    with open_app() as dspex_app:
        record = dspex_app.sessions.get(session_id)
    if as_json:
        emit_json(record.to_json())
        return
    table = Table(title=f"session {record.id} of {text(record.program)}: {record.turns} turns")
    for column in ("turn", "inputs", "outputs", "execution"):
        table.add_column(column, overflow="fold")
    for i, turn in enumerate(record.history, 1):
        table.add_row(str(i), text(turn["inputs"]), text(turn["outputs"]), short(turn["execution_id"]))
    console().print(table)
    console().print(f"metrics {text(record.metrics)}")


@app.command("delete")
def delete(session_id: str = typer.Argument(..., help="The session's id.")) -> None:
    """Forget a session's state (its runs stay recorded)."""
    with open_app() as dspex_app:
        dspex_app.sessions.delete(session_id)
    typer.echo(f"deleted session {session_id}")


@app.command("prune")
def prune() -> None:
    """Delete expired sessions."""
    with open_app() as dspex_app:
        count = dspex_app.sessions.prune()
    typer.echo(f"deleted {count} expired sessions")
