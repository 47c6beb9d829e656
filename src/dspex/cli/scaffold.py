"""``dspex scaffold``: let the LM write a pipeline spec for a task, test it, and register the best as a draft.

    dspex scaffold "Answer arithmetic word problems" --tests tests.jsonl --name math
    dspex scaffold "Classify support tickets" --tests cases.jsonl --name triage --iterations 5 --json

``tests.jsonl`` holds one ``{"inputs": {...}, "expected": {...}}`` per line. The LM comes from the settings
(``DSPEX_LM``...). The spec it writes is data, checked by the spec parser (catalog modules and registered
tools only; nothing it writes runs as code); every proposal and test run is recorded. The best spec becomes
a ``draft`` version of the program: review it with ``dspex programs show NAME`` and promote it yourself.
Exit codes: 0 a draft was registered, 1 no acceptable spec was found, 2 bad arguments or tests file.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, open_app, text


def scaffold(
    task: str = typer.Argument(..., help="What the pipeline should do, in words."),
    tests: Path = typer.Option(  # noqa: B008 - typer declares options as defaults
        ..., "--tests", help="Test cases, JSON Lines: {inputs, expected} per line."
    ),
    name: str = typer.Option("scaffolded", "--name", help="The program to register the best spec as."),
    iterations: int = typer.Option(3, "--iterations", help="Proposals at most (1-20)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result and every attempt as JSON."),
) -> None:
    """Write, test and refine a pipeline spec for TASK; register the best as a draft program."""
    from dspex.agents import scaffold as run_scaffold

    with open_app() as dspex_app:
        result = run_scaffold(dspex_app, task, tests, name=name, iterations=iterations)
    if as_json:
        emit_json(
            {
                "program": result.program,
                "version_id": result.version_id,
                "score": result.score,
                "spec": result.spec,
                "attempts": [a.to_json() for a in result.attempts],
            }
        )
        return
    table = Table(title=f"scaffold {text(result.program)}")
    table.add_column("iteration")
    table.add_column("score")
    table.add_column("rejected because", overflow="fold")
    for attempt in result.attempts:
        score = "-" if attempt.score is None else f"{attempt.score:.2f}"
        table.add_row(str(attempt.iteration), score, text(attempt.error or ""))
    out = console()
    out.print(table)
    out.print(
        f"registered draft {result.version_id[:12]} of {text(result.program)} (score {result.score:.2f})"
    )
