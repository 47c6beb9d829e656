"""``dspex optimize`` and ``dspex optimizations``: search a registered program's variables, inspect runs.

    dspex optimize qa --dataset qa-set --space space.yaml --budget 30
    dspex optimize qa --dataset qa-set --split dev --metric f1 --space space.yaml --budget 40 \\
        --objectives quality,cost --json
    dspex optimize qa --dataset qa-set --space space.yaml --budget 40 --parallel 4   # 4 trials at once
    dspex optimize qa --dataset qa-set --optimizer miprov2 -o auto=light     # one of DSPy's optimizers
    dspex optimize qa --dataset qa-set --optimizer miprov2 -o auto=light --pool general  # candidates on a pool
    dspex optimizations list --program qa
    dspex optimizations show opt-3fa1c09e2b7d4a11          # trials, best, Pareto front, score chart
    dspex optimizations join opt-3fa1c09e2b7d4a11 --parallel 2   # one more driver of a running job's run
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dspex.cli import _optimizers
from dspex.cli._render import console, emit_json, fmt_time, open_app, short, text
from dspex.distributed._parallel import MAX_PARALLEL
from dspex.errors import ConfigurationError, SpecError

if TYPE_CHECKING:
    from dspex.optimize.search import OptimizationResult, TrialProgress
    from dspex.store.optimizations import OptimizationRecord, TrialRecord
    from dspex.variables import Bindings, VariableSpace

app = typer.Typer(
    help="Inspect optimization runs and their trials; join a running one.", no_args_is_help=True
)

_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of tables.")
_SPACE_HELP = """\
The space file (YAML or JSON) has two keys, in the JSON forms of VariableSpace.describe() and
Bindings.to_json():

\b
variables:
  v: 1
  variables:
    - {name: model, kind: model, choices: [openai/gpt-4o-mini, openai/gpt-4o]}
    - {name: temperature, kind: float, low: 0.0, high: 1.5, step: 0.1}
    - {name: demos, kind: int, low: 0, high: 8}
bindings:
  version: 1
  bindings:
    - {variable: model, target: model, predictors: "*"}
    - {variable: temperature, target: lm_setting, setting: temperature, predictors: "*"}
    - {variable: demos, target: demos, predictors: "*"}
"""
_BAR_WIDTH = 40


# -- the space file --------------------------------------------------------------------------------------


def load_space_file(path: Path) -> tuple[VariableSpace, Bindings]:
    """The space and bindings of a space file; SpecError naming the file, the path and the line."""
    from dspex.modules._yaml import load_yaml, nearest_line
    from dspex.variables.spacefile import space_from_document

    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"--space: cannot read {str(path)!r}: {exc.strerror}") from None

    def fail(message: str, where: str, line: int | None = None) -> SpecError:
        return SpecError(f"{path}: {message}", path=where or None, line=line or nearest_line(lines, where))

    lines: dict[str, int] = {}
    try:
        data, lines = load_yaml(source)
    except SpecError as exc:
        raise fail(exc.message, "", exc.line) from None
    try:
        return space_from_document(data)
    except SpecError as exc:
        raise fail(exc.message, exc.path or "") from None


# -- optimize --------------------------------------------------------------------------------------------


# Shared with `dspex jobs submit-optimization` and `submit-evaluation`, which queue the same work.
PROGRAM = typer.Argument(..., help="Name of a registered program.")
DATASET = typer.Option(..., "--dataset", help="Dataset name (its latest version) or name@version.")
SPLIT = typer.Option(
    None, "--split", help="Split to score on (default: dev/val/validation if present, else all)."
)
METRIC = typer.Option("exact_match", "--metric", help="exact_match or f1 (on the 'answer' field).")
OBJECTIVES = typer.Option(
    "quality", "--objectives", help="quality, optionally with cost and/or latency: quality,cost"
)
SEED = typer.Option(0, "--seed", help="Sampler seed; the same inputs resume the same run.")
VERSION = typer.Option(
    None, "--version", help="Program version to start from (default: production, else newest draft)."
)
PARALLEL = typer.Option(
    1,
    "--parallel",
    min=1,
    max=MAX_PARALLEL,
    help=f"Trials evaluated at once (1 to {MAX_PARALLEL}); where their examples run is the routing's "
    "(or the worker's --pool). Not with --optimizer.",
)


def check_parallel_search(parallel: int, optimizer: str | None) -> None:
    """``--parallel`` belongs to the variable search (DSPy's optimizers take their threads with -o)."""
    if optimizer is not None and parallel != 1:
        raise ConfigurationError(
            "--parallel belongs to the variable search; --optimizer takes its threads with -o num_threads=N"
        )


def optimize(
    program: str = PROGRAM,
    dataset: str = DATASET,
    space_file: Path | None = typer.Option(  # noqa: B008
        None, "--space", help="Space file (YAML or JSON); see below. Not with --optimizer."
    ),
    budget: int | None = typer.Option(
        None, "--budget", min=1, help="Finished trials to run (complete + pruned). Not with --optimizer."
    ),
    split: str | None = SPLIT,
    metric: str = METRIC,
    objectives: str = OBJECTIVES,
    seed: int = SEED,
    version: str | None = VERSION,
    parallel: int = PARALLEL,
    join: bool = typer.Option(
        False,
        "--join",
        help="Add this process's trials to the run the same command started elsewhere with --shared or "
        "--parallel N (any machine sharing the database); that one ends the run and saves the version. "
        "Not with --optimizer.",
    ),
    shared: bool = typer.Option(
        False,
        "--shared",
        help="Let other processes join this run (--join). Without it (and with --parallel 1) this process "
        "drives the run alone, with the serial optimizer's start-up bracket. Not with --optimizer.",
    ),
    optimizer: str | None = _optimizers.OPTIMIZER,
    option: list[str] | None = _optimizers.OPTION,
    options: str | None = _optimizers.OPTIONS,
    prompt_model: str | None = _optimizers.PROMPT_MODEL,
    max_lm_calls: int | None = typer.Option(
        None,
        "--max-lm-calls",
        min=1,
        help="The variable search starts no trial past this many LM calls; a DSPy optimizer is stopped "
        "at it (a hard cap) and the best candidate so far is kept.",
    ),
    pool: str | None = typer.Option(
        None,
        "--pool",
        help="A configured pool (\\[pools.NAME]) whose workers evaluate the examples: the variable search's "
        "trials, or an --optimizer's program calls (candidate evaluations, and traced calls: bootstrapping, "
        "gepa's reflective minibatches, simba's trajectories; proposals and reflections stay here). "
        "Default: the routing rules for the variable search, this process for --optimizer.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress display)."),
) -> None:
    """Search the program's variables on a dataset (--space, --budget), or run one of DSPy's optimizers
    (--optimizer miprov2|gepa|simba|copro|bootstrap|bootstrap_rs|ensemble, options with -o NAME=VALUE);
    the result becomes a new version in 'optimizing', which `dspex programs promote PROGRAM VERSION` puts
    in production. The same command again resumes an interrupted run: a DSPy optimizer's evaluations
    already made come from the evaluation cache in the database.

    Model choices are built from the settings' endpoint (DSPEX_API_BASE, DSPEX_API_KEY). Exit codes:
    0 success, 1 the run failed, 2 bad arguments, space file, program, dataset, metric or option.
    """
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # the progress display says what its INFO lines would
    wanted = tuple(part.strip() for part in objectives.split(","))
    if optimizer is not None:
        with open_app() as dspex_app:
            _optimizers.check_no_search_options(space_file, budget, objectives)
            check_parallel_search(parallel, optimizer)
            if join or shared:
                raise ConfigurationError(
                    f"{'--join' if join else '--shared'} belongs to the variable search; a DSPy optimizer "
                    "runs in one process"
                )
            kwargs: dict[str, Any] = {
                "dataset": dataset,
                "options": _optimizers.parse_options(options, option),
                "split": split,
                "metric": metric,
                "seed": seed,
                "version_id": version,
                "prompt_model": prompt_model,
                "max_lm_calls": max_lm_calls,
                "pool": pool,
            }
            if as_json:
                # DSPy's optimizers print (and draw tqdm bars) on stdout; --json keeps stdout for the JSON.
                with contextlib.redirect_stdout(sys.stderr):
                    dspy_result = dspex_app.optimize_with(program, optimizer, **kwargs)
            else:
                dspy_result = _optimizers.run_foreground(dspex_app, program, optimizer, **kwargs)
        _optimizers.print_result(program, dspy_result, as_json)
        return
    with open_app() as dspex_app:
        _optimizers.check_variable_search(space_file, budget)
        assert space_file is not None
        assert budget is not None
        space, bindings = load_space_file(space_file)
        out = console()

        def run(on_trial: Any) -> OptimizationResult:
            return _run(
                dspex_app,
                program,
                dataset,
                space,
                bindings,
                budget,
                split,
                metric,
                wanted,
                seed,
                version,
                on_trial,
                parallel=parallel,
                join=join,
                shared=shared,
                max_lm_calls=max_lm_calls,
                pool=pool,
            )

        result = run(None) if as_json else with_progress(out, program, budget, run)
    _print_result(out, program, result, as_json, joined=join)


def _print_result(out: Any, program: str, result: OptimizationResult, as_json: bool, *, joined: bool) -> None:
    if as_json:
        emit_json(_result_json(program, result))
        return
    _print_trials(out, list(result.trials), result.objectives)
    best = result.best
    out.print(
        f"best: trial {best.number}  {text(best.configuration)}  scores {text(best.scores)}  "
        f"({result.lm_calls} LM calls, run {result.id})"
    )
    if len(result.pareto) > 1:
        out.print(f"Pareto front: trials {', '.join(str(t.number) for t in result.pareto)}")
    if result.version_id:
        out.print(
            f"{'its' if joined else 'new'} version {short(result.version_id)} in optimizing; promote with "
            f"`dspex programs promote {text(program)} {short(result.version_id)}`"
        )
    elif joined:
        out.print(f"the budget of run {result.id} is spent; the driver that owns it saves the version")


def with_progress(
    out: Any, program: str, budget: int, run: Callable[[Callable[[TrialProgress], None]], OptimizationResult]
) -> OptimizationResult:
    """``run(on_trial)`` under a live bar: finished trials of the run (every driver's), the last trial,
    the best score and the LM calls."""
    with Progress(
        TextColumn("[bold]optimizing[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=out,
    ) as progress:
        task = progress.add_task(text(program), total=budget, info="")

        def update(p: TrialProgress) -> None:
            best = p.best.scores["quality"] if p.best is not None and p.best.scores else None
            last = _trial_score(p.trial)
            progress.update(
                task,
                completed=min(p.finished, p.n_trials),
                info=f"trial {p.trial.number} {p.trial.state}"
                + (f" {last:.3f}" if last is not None else "")
                + (f"  best {best:.3f}" if best is not None else "")
                + f"  {p.lm_calls} LM calls",
            )

        return run(update)


def _run(
    dspex_app: Any,
    program: str,
    dataset: str,
    space: Any,
    bindings: Any,
    budget: int,
    split: str | None,
    metric: str,
    objectives: tuple[str, ...],
    seed: int,
    version: str | None,
    on_trial: Any = None,
    *,
    parallel: int = 1,
    join: bool = False,
    shared: bool = False,
    max_lm_calls: int | None = None,
    pool: str | None = None,
) -> OptimizationResult:
    result: OptimizationResult = dspex_app.optimize(
        program,
        dataset=dataset,
        split=split,
        metric=metric,
        space=space,
        bindings=bindings,
        n_trials=budget,
        objectives=objectives,
        seed=seed,
        version_id=version,
        on_trial=on_trial,
        parallel=parallel,
        join=join,
        shared=shared,
        max_lm_calls=max_lm_calls,
        pool=pool,
    )
    return result


def _result_json(program: str, result: OptimizationResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "program": program,
        "objectives": list(result.objectives),
        "best": result.best.to_json(),
        "pareto": [t.to_json() for t in result.pareto],
        "trials": [t.to_json() for t in result.trials],
        "lm_calls": result.lm_calls,
        "version_id": result.version_id,
    }


# -- optimizations join ----------------------------------------------------------------------------------


@app.command("join")
def join_run(
    optimization_id: str = typer.Argument(..., help="The id of a running optimization job's run (opt-...)."),
    parallel: int = PARALLEL,
    pool: str | None = typer.Option(
        None, "--pool", help="A configured pool for this driver's trials (default: the routing rules)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress display)."),
) -> None:
    """Add this process's trials to a running optimization job (its inputs come from the job), until its
    budget is spent; start it on as many machines as share the database. Trials stay contiguous and
    unique; a driver that dies has its running trials redone by the others. The job's worker ends the run
    and saves the version. Exit codes: 0 done, 1 the run failed, 2 no such running variable search."""
    import logging

    import optuna

    from dspex.jobs.handlers import join_optimization

    optuna.logging.set_verbosity(logging.WARNING)
    with open_app() as dspex_app:
        job = _job_of(dspex_app, optimization_id)
        program = str(job.payload.get("program", "?"))
        budget = int(job.payload.get("n_trials") or 1)
        out = console()

        def run(on_trial: Any) -> OptimizationResult:
            return join_optimization(
                dspex_app, job.payload["optimization_id"], parallel=parallel, pool=pool, on_trial=on_trial
            )

        result = run(None) if as_json else with_progress(out, program, budget, run)
    _print_result(out, program, result, as_json, joined=True)


def _job_of(dspex_app: Any, optimization_id: str) -> Any:
    from dspex.jobs.submit import optimization_job

    job = optimization_job(dspex_app, optimization_id)
    if job is None:
        raise ConfigurationError(
            f"no optimization job {optimization_id!r} (`dspex jobs list` shows them); a run started by "
            "`dspex optimize` is joined by the same command with --join"
        )
    return job


# -- optimizations list / show ---------------------------------------------------------------------------


def _run_json(record: OptimizationRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


@app.command("list")
def list_runs(
    program: str | None = typer.Option(None, "--program", help="Only runs of this program."),
    as_json: bool = _JSON,
) -> None:
    """The optimization runs, newest first."""
    with open_app() as dspex_app:
        runs = dspex_app.optimizations.runs(program)
        counts = {r.id: dspex_app.optimizations.count(r.id) for r in runs}
    if as_json:
        emit_json([{**_run_json(r), "finished_trials": counts[r.id]} for r in runs])
        return
    table = Table(title=f"Optimization runs ({len(runs)})")
    for column in ("id", "program", "status", "objectives", "trials", "best quality", "version", "updated"):
        table.add_column(column, justify="right" if column in ("trials", "best quality") else "left")
    for r in runs:
        best = (r.best or {}).get("scores") or {}
        table.add_row(
            r.id,
            text(r.program or "-"),
            r.status,
            ",".join(r.objectives),
            f"{counts[r.id]}/{r.budget.get('n_trials', '?')}",
            f"{best['quality']:.3f}" if "quality" in best else "-",
            short(r.result_version_id),
            fmt_time(r.updated_at),
        )
    console().print(table)


@app.command("show")
def show(
    optimization_id: str = typer.Argument(..., help="Run id (from `dspex optimizations list`)."),
    as_json: bool = _JSON,
) -> None:
    """One run: its record, every trial, the best and the Pareto front, and a chart of score by trial."""
    with open_app() as dspex_app:
        record = _find(dspex_app, optimization_id)
        trials = dspex_app.optimizations.trials(record.id)
    if as_json:
        emit_json({**_run_json(record), "trials": [t.to_json() for t in trials]})
        return
    out = console()
    out.print(
        f"[bold]{record.id}[/]  program {text(record.program or '-')}  status {record.status}  "
        f"objectives {','.join(record.objectives)}  budget {text(record.budget)}"
    )
    out.print(f"created {fmt_time(record.created_at)}  updated {fmt_time(record.updated_at)}")
    if record.error:
        out.print(f"[red]error:[/] {text(record.error)}")
    _print_trials(out, trials, tuple(record.objectives))
    if record.best:
        out.print(
            f"best: trial {record.best['number']}  {text(record.best.get('configuration'))}  "
            f"scores {text(record.best.get('scores'))}"
        )
    if record.pareto and len(record.pareto) > 1:
        out.print(f"Pareto front: trials {', '.join(str(t['number']) for t in record.pareto)}")
    if record.result_version_id:
        out.print(
            f"version {short(record.result_version_id)}; promote with "
            f"`dspex programs promote {text(record.program or 'PROGRAM')} {short(record.result_version_id)}`"
        )


def _find(dspex_app: Any, optimization_id: str) -> OptimizationRecord:
    runs = dspex_app.optimizations.runs()
    exact = [r for r in runs if r.id == optimization_id]
    matches = exact or [r for r in runs if r.id.startswith(optimization_id)]
    if len(matches) == 1:
        found: OptimizationRecord = matches[0]
        return found
    if matches:
        raise ConfigurationError(
            f"optimization id prefix {optimization_id!r} is ambiguous; give more characters"
        )
    raise ConfigurationError(f"no optimization {optimization_id!r}; `dspex optimizations list` shows them")


# -- rendering -------------------------------------------------------------------------------------------


def _trial_score(trial: TrialRecord) -> float | None:
    """The quality of a complete trial, or the last minibatch score of a pruned one."""
    if trial.scores is not None and "quality" in trial.scores:
        return float(trial.scores["quality"])
    if trial.intermediate:
        return float(trial.intermediate[max(trial.intermediate)])
    return None


def score_chart(trials: list[TrialRecord], width: int = _BAR_WIDTH) -> list[str]:
    """One line per trial: a bar proportional to its quality, and ``<- best`` where the running best rises.

    A pruned trial's bar is its last minibatch score drawn with ``░``; a failed trial has no bar.
    """
    scores = [_trial_score(t) for t in trials]
    top = max([1.0, *(s for s in scores if s is not None)])
    lines, best = [], None
    for trial, score in zip(trials, scores, strict=True):
        if score is None:
            lines.append(f"{trial.number:>4} {'':<{width}} {trial.state}")
            continue
        filled = round(score / top * width)
        bar = ("█" if trial.state == "complete" else "░") * filled
        marker = ""
        if trial.state == "complete" and (best is None or score > best):
            best = score
            marker = "  <- best"
        label = f"{score:.3f}" + (" (pruned)" if trial.state == "pruned" else "")
        lines.append(f"{trial.number:>4} {bar:<{width}} {label}{marker}")
    return lines


def _print_trials(out: Any, trials: list[TrialRecord], objectives: tuple[str, ...]) -> None:
    table = Table(title=f"Trials ({len(trials)})")
    for column in ("#", "state", "configuration", *objectives, "LM calls", "s"):
        table.add_column(column, justify="left" if column in ("state", "configuration") else "right")
    for t in trials:
        scores = t.scores or {}
        table.add_row(
            str(t.number),
            t.state,
            text(t.configuration) if t.configuration is not None else text(t.error or "-"),
            *(f"{scores[o]:.4g}" if o in scores else "-" for o in objectives),
            str(t.lm_calls),
            f"{t.duration_s:.2f}" if t.duration_s is not None else "-",
        )
    out.print(table)
    out.print("Score by trial (quality; ░ pruned at a minibatch):", markup=False)
    for line in score_chart(trials):
        out.print(line, markup=False, highlight=False)
