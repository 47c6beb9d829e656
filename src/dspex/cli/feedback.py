"""``dspex feedback``: give feedback on a run (a score, a label, a comment), or list what it was given.

    dspex feedback 5b0d6c1e --score 0.8 --label good --comment "right, a bit long"
    dspex feedback 5b0d6c1e --label wrong-format --detail '{"ticket": "SUP-12"}' --actor reviewer:ana
    dspex feedback 5b0d6c1e --list

A score is a number from 0 (worst) to 1 (best); at least one of --score, --label and --comment. The
feedback is stored at once, shown by ``dspex executions show`` and counted in ``dspex watch``'s quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, json_object, open_app, text

if TYPE_CHECKING:
    from dspex.store.feedback import FeedbackRecord

__all__ = ["feedback"]


def feedback(
    execution_id: str = typer.Argument(..., help="Execution id, or a unique prefix of 6+ characters."),
    score: float | None = typer.Option(None, "--score", help="From 0 (worst) to 1 (best)."),
    label: str | None = typer.Option(None, "--label", help="A short tag such as good or wrong-format."),
    comment: str | None = typer.Option(None, "--comment", help="Free text (10,000 characters at most)."),
    detail: str | None = typer.Option(
        None, "--detail", help="A JSON object kept with it: inline, @file or - for stdin."
    ),
    actor: str = typer.Option("local", "--actor", help="Who gives it, e.g. reviewer:ana."),
    list_only: bool = typer.Option(False, "--list", help="Only list the feedback the run was given."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of text."),
) -> None:
    """Give feedback on a run (stored at once, counted in the quality signals), or --list it."""
    if list_only and any(value is not None for value in (score, label, comment, detail)):
        raise typer.BadParameter(
            "--list only lists feedback; leave out --score, --label, --comment, --detail"
        )
    with open_app() as dspex_app:
        if not list_only:
            given = dspex_app.feedback(
                execution_id,
                score=score,
                label=label,
                comment=comment,
                detail=json_object(detail, "--detail") if detail is not None else None,
                actor=actor,
            )
            if as_json:
                emit_json(given.to_json())
                return
            console().print(f"feedback {given.id} stored on execution {given.execution_id}")
            return
        records = dspex_app.feedback.list(execution_id)
    if as_json:
        emit_json([record.to_json() for record in records])
        return
    out = console()
    if not records:
        out.print("no feedback on this execution yet")
        return
    out.print(feedback_table(records))


def feedback_table(records: Sequence[FeedbackRecord]) -> Table:
    """Feedback records as a table: when, who, score, label, comment."""
    table = Table(title="Feedback")
    for column in ("given", "actor", "score", "label", "comment"):
        table.add_column(column, overflow="fold", justify="right" if column == "score" else "left")
    for record in records:
        table.add_row(
            fmt_time(record.created_at),
            text(record.actor),
            "-" if record.score is None else f"{record.score:g}",
            text(record.label or "-"),
            text(record.comment or "-"),
        )
    return table
