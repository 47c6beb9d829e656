"""``--optimizer`` for ``dspex optimize`` and ``dspex jobs submit-optimization``: DSPy's optimizers.

dspex optimize qa --dataset qa-set --optimizer miprov2 -o auto=light -o num_threads=4
dspex optimize qa --dataset qa-set --optimizer gepa --options '{"max_metric_calls": 300}'
dspex jobs submit-optimization qa --dataset qa-set --optimizer simba -o bsize=16
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dspex.cli._render import console, emit_json, json_object, short, text
from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.optimize.dspy_run import DSPyOptimizationResult, DSPyProgress

OPTIMIZER = typer.Option(
    None,
    "--optimizer",
    help="A DSPy optimizer instead of the variable search: miprov2, gepa, simba, copro, bootstrap, "
    "bootstrap_rs, ensemble (no --space or --budget then; options with -o).",
)
OPTION = typer.Option(
    None,
    "--option",
    "-o",
    help="An option of --optimizer as NAME=VALUE (VALUE read as JSON when it parses: 3, true, null; else "
    "text); repeat it. An unknown name is refused with the valid ones listed.",
)
OPTIONS = typer.Option(
    None, "--options", help="Options of --optimizer as a JSON object (inline, @file or -); -o adds to it."
)
PROMPT_MODEL = typer.Option(
    None, "--prompt-model", help="A configured model (\\[models]) proposing instructions or reflecting."
)


def parse_options(options: str | None, pairs: list[str] | None) -> dict[str, Any]:
    """``--options`` (a JSON object) with each ``-o NAME=VALUE`` on top."""
    parsed = json_object(options, "--options") if options is not None else {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"-o/--option takes NAME=VALUE, e.g. -o num_trials=8; got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        parsed[name.strip()] = value
    return parsed


def check_variable_search(space: Any, budget: int | None) -> None:
    """Without --optimizer the variable search needs --space and --budget."""
    missing = [name for name, value in (("--space", space), ("--budget", budget)) if value is None]
    if missing:
        raise ConfigurationError(
            f"the variable search needs {' and '.join(missing)}; or pick a DSPy optimizer with --optimizer"
        )


def check_no_search_options(space: Any, budget: int | None, objectives: str) -> None:
    given = [name for name, value in (("--space", space), ("--budget", budget)) if value is not None]
    if objectives != "quality":
        given.append("--objectives")
    if given:
        raise ConfigurationError(
            f"{', '.join(given)} belong to the variable search; --optimizer takes its options with -o"
        )


def _line(p: DSPyProgress) -> str:
    best = f"  best {p.best_score:.3f} over {p.best_examples} ex" if p.best_score is not None else ""
    return (
        f"{p.phase}: {p.candidates} candidates, {p.evaluations} evaluations{best}  "
        f"{p.lm_calls} LM calls, {p.cached} cached"
    )


def run_foreground(dspex_app: Any, program: str, optimizer: str, **kwargs: Any) -> DSPyOptimizationResult:
    """``app.optimize_with`` with a live line: phase, candidates, evaluations, best score, LM calls."""
    with Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]{optimizer}[/] {text(program)}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console(),
    ) as progress:
        task = progress.add_task(program, total=None, info="starting")

        def update(p: DSPyProgress) -> None:
            progress.update(task, info=_line(p))

        result: DSPyOptimizationResult = dspex_app.optimize_with(
            program, optimizer, on_progress=update, **kwargs
        )
    return result


def print_result(program: str, result: DSPyOptimizationResult, as_json: bool) -> None:
    if as_json:
        emit_json({"program": program, **result.to_json()})
        return
    out = console()
    cost = f", ${result.cost_usd:.4f}" if result.cost_usd else ""
    scored = "on the devset" if not result.stopped else f"on the {result.scored_on} examples it was scored on"
    out.print(
        f"{result.optimizer}: score {result.score:.3f} {scored}; {result.candidates} candidates, "
        f"{result.evaluations} evaluations, {result.lm_calls} LM calls{cost}, {result.cached} program calls "
        f"from the evaluation cache ({result.duration_s:.1f} s, run {result.id})"
    )
    if result.stopped:
        out.print(f"[yellow]{text(result.stopped)}[/]")
    if result.unchanged:
        out.print(f"the optimizer kept the program as it was (version {short(result.version_id)})")
    elif result.version_id:
        out.print(
            f"new version {short(result.version_id)} in optimizing; promote with "
            f"`dspex programs promote {text(program)} {short(result.version_id)}`"
        )
    if len(result.members) > 1:
        out.print(f"ensemble members: {', '.join(short(m) for m in result.members)}")
