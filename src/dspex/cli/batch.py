"""``dspex batch``: run a registered program over a JSONL file of inputs, resumably.

    dspex batch run qa --input in.jsonl --output out.jsonl                  # inline, or where [routing] says
    dspex batch run qa --input in.jsonl --output out.jsonl --pool cluster   # on a pool (processes or Ray)
    dspex batch run qa --input in.jsonl --output out.jsonl                  # again: skips what succeeded

Each input is one recorded run; each result one JSON line of the output (``index``, ``key``, ``status``,
``execution_id``, ``outputs`` or ``error``). See :mod:`dspex.distributed.batch`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dspex.cli._render import console, emit_json, open_app

app = typer.Typer(
    help="Run a program over many inputs (JSONL in, JSONL out, resumable).", no_args_is_help=True
)


@app.command("run")
def run(
    program: str = typer.Argument(..., help="Name of a registered program."),
    input_path: Path = typer.Option(  # noqa: B008 - typer declares options as defaults
        ..., "--input", help="JSONL file: one JSON object of inputs per line."
    ),
    output_path: Path = typer.Option(  # noqa: B008 - typer declares options as defaults
        ..., "--output", help="JSONL file the results are appended to; a rerun skips inputs it holds as done."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Version id or unique prefix (default: production, else the newest draft)."
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="Run on this pool (\\[pools.NAME]; backend = 'ray' for a Ray cluster)."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Inputs in flight at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON, without a progress bar."),
) -> None:
    """Run PROGRAM on each input line, writing one result line per input; exit 1 if any failed."""
    from dspex.distributed.batch import BatchProgress, BatchReport, run_batch_file

    with open_app() as dspex_app:

        def run(progress: BatchProgress | None) -> BatchReport:
            return run_batch_file(
                dspex_app,
                program,
                input_path,
                output_path,
                version_id=version,
                pool=pool,
                concurrency=concurrency,
                progress=progress,
            )

        if as_json:
            report = run(None)
            emit_json(report.to_json())
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console(), transient=False) as bar:
                task = bar.add_task(f"batch {program}", total=None)

                def progress(done: int, to_run: int) -> None:
                    bar.update(task, completed=done, total=to_run if to_run >= 0 else None)

                report = run(progress)
            console().print(
                f"{report.succeeded} succeeded, {report.failed} failed, {report.skipped} skipped as done "
                f"(of {report.total}) in {report.wall_s:.1f} s -> {output_path}"
            )
    if report.failed:
        raise typer.Exit(1)
