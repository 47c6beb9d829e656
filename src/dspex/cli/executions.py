"""``dspex executions``: the record of every run: list, show (with the trace tree), stats, prune.

    dspex executions list --program qa --status failed --since 1h
    dspex executions show 5b0d6c1e-...                       # summary, inputs, outputs, span tree
    dspex executions stats --program qa --since 7d
    dspex executions prune --older-than 30d --keep 1000 --yes

Times accept ISO 8601 (``2026-01-31``, ``2026-01-31T09:30:00+02:00``; naive means UTC) or an age
(``30m``, ``1h``, ``2d``, ``1w``: that long ago).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.table import Table
from rich.tree import Tree

from dspex.cli._render import (
    console,
    emit_json,
    fmt_cost,
    fmt_ms,
    fmt_time,
    open_app,
    parse_age_days,
    parse_when,
    short,
    text,
)
from dspex.cli.feedback import feedback_table
from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.executions import ExecutionFilter, ExecutionRecord, ExecutionStatus

app = typer.Typer(help="Inspect and prune the record of runs.", no_args_is_help=True)

_STATUSES = ("running", "succeeded", "failed", "cancelled", "abandoned")
_STATUS_STYLE = {"succeeded": "green", "failed": "bold red", "cancelled": "yellow", "abandoned": "magenta"}
_KIND_STYLE = {"module": "bold", "lm": "cyan", "tool": "magenta", "evaluate": "blue"}
_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of tables.")
_PROGRAM = typer.Option(None, "--program", help="Only this program.")
_VERSION = typer.Option(None, "--version", help="Only this program version (id or unique prefix).")
_SINCE = typer.Option(None, "--since", help="Started at or after: ISO 8601 or an age such as 1h, 2d.")


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, '')}]{status}[/]"


def _version_id(dspex_app: App, program: str | None, version: str | None) -> str | None:
    """A full version id from an id or prefix; the executions table only matches whole ids."""
    if version is None:
        return None
    registry = dspex_app.programs
    if program is not None:
        return registry.resolve(program, version).id
    matches = {
        v.id
        for record in registry.list_programs()
        for v in registry.versions(record.name)
        if len(version) >= 6 and v.id.startswith(version)
    }
    if len(matches) == 1:
        return matches.pop()
    if len(matches) > 1:
        raise ConfigurationError(
            f"version prefix {version!r} is ambiguous; give more characters or --program"
        )
    if len(version) == 64:  # a version whose program was deleted still has its executions
        return version
    raise ConfigurationError(
        f"no program version starts with {version!r}; dspex programs show NAME lists them"
    )


def _filter(
    dspex_app: App,
    *,
    program: str | None = None,
    version: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
    min_cost: float | None = None,
    max_cost: float | None = None,
    min_ms: float | None = None,
    max_ms: float | None = None,
) -> ExecutionFilter:
    from dspex.store.executions import ExecutionFilter

    if status is not None and status not in _STATUSES:
        raise ConfigurationError(did_you_mean(status, _STATUSES, what="execution status"))
    return ExecutionFilter(
        program=program,
        version_id=_version_id(dspex_app, program, version),
        status=cast("ExecutionStatus | None", status),
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        min_cost_usd=min_cost,
        max_cost_usd=max_cost,
        min_duration_ms=min_ms,
        max_duration_ms=max_ms,
    )


def _summary_json(record: ExecutionRecord) -> dict[str, Any]:
    data = record.to_json()
    data.pop("trace", None)  # list leaves traces out; `show ID --json` has the full record
    return data


@app.command("list")
def list_executions(
    program: str | None = _PROGRAM,
    version: str | None = _VERSION,
    status: str | None = typer.Option(None, "--status", help=f"Only this status: {', '.join(_STATUSES)}."),
    since: str | None = _SINCE,
    until: str | None = typer.Option(None, "--until", help="Started before: ISO 8601 or an age such as 1h."),
    min_cost: float | None = typer.Option(None, "--min-cost", min=0, help="Cost at least this many USD."),
    max_cost: float | None = typer.Option(None, "--max-cost", min=0, help="Cost at most this many USD."),
    min_ms: float | None = typer.Option(None, "--min-ms", min=0, help="Took at least this many ms."),
    max_ms: float | None = typer.Option(None, "--max-ms", min=0, help="Took at most this many ms."),
    limit: int = typer.Option(20, "--limit", min=1, max=10_000, help="Show at most this many, newest first."),
    as_json: bool = _JSON,
) -> None:
    """List executions, newest first, filtered by program, version, status, time, cost and duration."""
    with open_app() as dspex_app:
        where = _filter(
            dspex_app,
            program=program,
            version=version,
            status=status,
            since=since,
            until=until,
            min_cost=min_cost,
            max_cost=max_cost,
            min_ms=min_ms,
            max_ms=max_ms,
        )
        records = dspex_app.executions.find(where, limit=limit)
        total = dspex_app.executions.count(where)
    if as_json:
        emit_json([_summary_json(r) for r in records])
        return
    table = Table(title="Executions (newest first)")
    table.add_column("id", no_wrap=True, min_width=36)  # whole: `show` takes the full id
    for column in ("program", "version", "status", "started", "ms", "tokens", "cost USD"):
        table.add_column(
            column,
            justify="right" if column in ("ms", "tokens", "cost USD") else "left",
            no_wrap=column == "started",
        )
    for r in records:
        table.add_row(
            r.id,
            text(r.program or "-"),
            short(r.version_id),
            _status(r.status),
            fmt_time(r.started_at),
            fmt_ms(r.duration_ms),
            "-" if r.total_tokens is None else str(r.total_tokens),
            fmt_cost(r.cost_usd),
        )
    out = console()
    out.print(table)
    out.print(f"{len(records)} of {total} matching executions shown")


@app.command("show")
def show(
    execution_id: str = typer.Argument(..., help="Execution id (as printed by run and list)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record (with the trace) as JSON."),
) -> None:
    """Show one execution: summary, inputs, outputs, error, the trace as a tree of spans, and feedback."""
    with open_app() as dspex_app:
        dspex_app.flush()
        record = dspex_app.executions.get(execution_id)
        if record is None:
            raise ConfigurationError(
                f"no execution {execution_id!r}; dspex executions list shows the recent ones"
            )
        given = dspex_app.feedback.list(record.id)
    if as_json:
        emit_json({**record.to_json(), "feedback": [f.to_json() for f in given]})
        return
    out = console()
    summary = Table(title=f"Execution {record.id}", show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", overflow="fold")
    rows = [
        ("program", text(record.program or "-")),
        ("version", record.version_id or "-"),
        ("status", _status(record.status)),
        ("started", fmt_time(record.started_at)),
        ("ended", fmt_time(record.ended_at)),
        ("duration ms", fmt_ms(record.duration_ms)),
        ("tokens", "-" if record.total_tokens is None else str(record.total_tokens)),
        ("cost USD", fmt_cost(record.cost_usd)),
        ("runner", text(record.runner)),
    ]
    if record.variables:
        rows.append(("variables", text(record.variables)))
    for label, value in rows:
        summary.add_row(label, value)
    out.print(summary)
    out.print(_fields("inputs", record.inputs))
    if record.outputs is not None:
        out.print(_fields("outputs", record.outputs))
    if record.error:
        error = record.error
        kind = text(
            f"{error.get('type', 'Error')} ({error['code']})" if "code" in error else error.get("type")
        )
        out.print(f"[bold red]error[/] {kind}: {text(error.get('message', ''))}")
    if record.trace is None:
        out.print("[dim]trace: none (not recorded, or dropped by retention)[/]")
    else:
        out.print(trace_tree(record.trace))
    if given:
        out.print(feedback_table(given))


def _fields(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for name, value in values.items():
        table.add_row(text(name), text(value))
    return table


def trace_tree(trace: dict[str, Any]) -> Tree:
    """The span list (parents before children) as a rich Tree: kind, name, duration, tokens and cost."""
    tree = Tree("[bold]trace[/]")
    nodes: dict[int, Tree] = {}
    for span in trace.get("spans", []):
        parent = nodes.get(span["parent"]) if span.get("parent") is not None else None
        nodes[span["index"]] = (parent or tree).add(_span_label(span))
    if not nodes:
        tree.add("[dim]no spans[/]")
    return tree


def _span_label(span: dict[str, Any]) -> str:
    kind = span.get("kind", "?")
    parts = [f"[{_KIND_STYLE.get(kind, 'dim')}]{text(kind)}[/]", text(span.get("name", ""))]
    start, end = span.get("start_ms"), span.get("end_ms")
    parts.append(f"{end - start:,.1f} ms" if start is not None and end is not None else "unfinished")
    usage = span.get("usage")
    if usage:
        parts.append(
            f"{usage.get('total_tokens', 0)} tokens ({usage.get('prompt_tokens', 0)} in, "
            f"{usage.get('completion_tokens', 0)} out)"
        )
    if kind == "lm":
        parts.append(f"cost {fmt_cost(span.get('cost_usd'))} USD")
    if span.get("error"):
        parts.append(f"[bold red]error: {text(span['error'].get('message', ''))}[/]")
    return "  ".join(parts)


@app.command("stats")
def stats(
    program: str | None = _PROGRAM,
    version: str | None = _VERSION,
    since: str | None = _SINCE,
    as_json: bool = _JSON,
) -> None:
    """Per program version: runs, error rate, latency percentiles (ms), tokens and cost."""
    with open_app() as dspex_app:
        dspex_app.flush()
        where = _filter(dspex_app, program=program, version=version, since=since)
        rows = dspex_app.executions.stats(where)
    if as_json:
        emit_json([dataclasses.asdict(row) for row in rows])
        return
    table = Table(title="Executions per program version")
    columns = ("program", "version", "runs", "failed", "error rate", "p50 ms", "p95 ms", "p99 ms")
    for column in (*columns, "tokens", "cost USD"):
        table.add_column(column, justify="left" if column in ("program", "version") else "right")
    for row in rows:
        table.add_row(
            text(row.program or "-"),
            short(row.version_id),
            str(row.count),
            str(row.failed),
            f"{row.error_rate:.1%}",
            fmt_ms(row.p50_ms),
            fmt_ms(row.p95_ms),
            fmt_ms(row.p99_ms),
            str(row.total_tokens),
            fmt_cost(row.cost_usd),
        )
    out = console()
    if rows:
        out.print(table)
    else:
        out.print("no executions match")


@app.command("prune")
def prune(
    older_than: str | None = typer.Option(
        None, "--older-than", help="Prune runs started longer ago than this (30d, 12h); default: settings."
    ),
    keep: int | None = typer.Option(
        None, "--keep", min=0, help="Keep only the newest N runs of each program; default: settings."
    ),
    traces_only: bool | None = typer.Option(
        None,
        "--traces-only/--whole-rows",
        help="Drop only the traces and keep the summary rows, or delete whole rows; default: settings.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = _JSON,
) -> None:
    """Apply retention to the execution records (defaults: DSPEX_RETENTION_* settings). Running runs stay."""
    with open_app() as dspex_app:
        settings = dspex_app.settings
        days = (
            parse_age_days(older_than, "--older-than") if older_than is not None else settings.retention_days
        )
        keep_n = keep if keep is not None else settings.retention_per_program
        only_traces = traces_only if traces_only is not None else settings.retention_traces_only
        if days is None and keep_n is None:
            raise ConfigurationError(
                "nothing to prune by: give --older-than and/or --keep, or set DSPEX_RETENTION_DAYS / "
                "DSPEX_RETENTION_PER_PROGRAM"
            )
        rules = [f"started more than {days:g} days ago"] if days is not None else []
        if keep_n is not None:
            rules.append(f"beyond the newest {keep_n} of each program")
        what = "drop the traces of" if only_traces else "delete"
        question = f"{what} ended executions {' or '.join(rules)}?"
        # The prompt goes to stderr so that --json output on stdout stays parseable.
        if not yes and not typer.confirm(question[0].upper() + question[1:], err=True):
            typer.echo("aborted; nothing pruned", err=True)
            raise typer.Exit(1)
        affected = dspex_app.prune(older_than_days=days, keep_per_program=keep_n, traces_only=only_traces)
    if as_json:
        emit_json(
            {
                "affected": affected,
                "older_than_days": days,
                "keep_per_program": keep_n,
                "traces_only": only_traces,
            }
        )
        return
    executions = f"{affected} execution{'s' if affected != 1 else ''}"
    console().print(f"traces dropped from {executions}" if only_traces else f"{executions} deleted")
