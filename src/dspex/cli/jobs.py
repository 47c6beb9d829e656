"""``dspex worker`` and ``dspex jobs``: run background jobs, submit them, follow and cancel them.

    dspex jobs submit-optimization qa --dataset qa-set --space space.yaml --budget 40 --parallel 2
    dspex jobs submit-optimization qa --dataset qa-set --space space.yaml --budget 40 --drivers 3   # 3 workers
    dspex jobs submit-optimization qa --dataset qa-set --optimizer miprov2 -o auto=light
    dspex jobs submit-evaluation qa --dataset qa-set --split test --metric f1
    dspex worker                                   # as many as you like, on any machine sharing the DB
    dspex worker --kinds optimize --lease 60 --until-idle
    dspex jobs list --status running
    dspex jobs show 3fa1c09e2b7d4a11...            # payload, progress, attempts, errors, result
    dspex jobs cancel 3fa1c09e2b7d4a11...

A worker stops gracefully on SIGTERM or Ctrl-C: it claims nothing more, and its running job stops at the
next safe point (after the optimization trial in progress) and goes back to the queue, where any worker
resumes it. A second signal stops it at once; the job's lease then expires and another worker takes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from dspex.cli import _optimizers
from dspex.cli._render import console, emit_json, fmt_time, json_object, open_app, parse_names, text
from dspex.cli.optimize import (
    DATASET,
    METRIC,
    OBJECTIVES,
    PARALLEL,
    PROGRAM,
    SEED,
    SPLIT,
    VERSION,
    check_parallel_search,
)
from dspex.distributed._parallel import MAX_DRIVERS
from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from dspex.jobs.worker import Worker, WorkerEvent
    from dspex.runtime.app import App
    from dspex.store.jobs import JobRecord

app = typer.Typer(help="Submit, list, inspect and cancel background jobs.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of text.")
_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_STATUS_STYLE = {"succeeded": "green", "failed": "bold red", "cancelled": "yellow", "running": "cyan"}
_MAX_ATTEMPTS = typer.Option(3, "--max-attempts", min=1, help="Attempts before the job is failed.")
_SPACE = typer.Option(
    None, "--space", help="Space file (YAML or JSON), as for `dspex optimize`. Not with --optimizer."
)
_EVAL_SPACE = typer.Option(None, "--space", help="Space file whose bindings apply --variables.")


# -- dspex worker ----------------------------------------------------------------------------------------


def _print_event(event: WorkerEvent) -> None:
    job = event.job
    program = job.payload.get("program") if isinstance(job.payload, dict) else None
    what = f"{job.kind} {program}" if program else job.kind
    if event.kind == "start":
        typer.echo(f"start     {job.id}  {what}  attempt {job.attempts}/{job.max_attempts}")
        return
    detail = f"  {event.detail}" if event.detail and event.outcome != "succeeded" else ""
    typer.echo(f"{event.outcome or '?':<9} {job.id}  {what}  {event.duration_s or 0.0:.1f}s{detail}")


@contextlib.contextmanager
def _graceful_signals(worker: Worker) -> Iterator[None]:
    """SIGTERM and SIGINT stop ``worker`` gracefully; a second one ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handle(signum: int, _frame: Any) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)
        typer.echo(
            f"{signal.Signals(signum).name}: stopping after the current job's next safe point "
            "(signal again to stop at once)",
            err=True,
        )
        # stop() takes locks the interrupted main thread may hold: call it from another thread.
        threading.Thread(target=worker.stop, name="dspex-worker-stop", daemon=True).start()

    for sig in signals:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _job_logging() -> Iterator[None]:
    """Warnings and errors of ``dspex.jobs`` (failed jobs, lost leases) on stderr, unless the host process
    configured logging itself."""
    logger = logging.getLogger("dspex.jobs")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def worker(
    kinds: str | None = typer.Option(
        None, "--kinds", help="Comma-separated job kinds to run (default: optimize,evaluate)."
    ),
    lease: float = typer.Option(
        30.0,
        "--lease",
        min=0.1,
        help="Seconds a job stays claimed without a heartbeat (renewed every third).",
    ),
    poll: float = typer.Option(1.0, "--poll", min=0.01, help="Seconds between looks at an empty queue."),
    max_jobs: int | None = typer.Option(None, "--max-jobs", min=1, help="Exit after this many jobs."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Exit when no job is due."),
    worker_id: str | None = typer.Option(None, "--id", help="Worker id (default: host:pid:random)."),
    pool: str | None = typer.Option(
        None, "--pool", help="Run evaluation jobs' examples on this worker pool (its workers, every core)."
    ),
) -> None:
    """Run background jobs from the queue, one at a time, printing a line when each starts and ends.

    Exit codes: 0 when stopped (signal, --max-jobs, --until-idle), whatever the jobs' outcomes (see
    `dspex jobs list`); 2 bad options or settings.
    """
    import optuna

    from dspex.jobs.worker import Worker

    optuna.logging.set_verbosity(logging.WARNING)  # one line per trial per job would drown the job lines
    wanted = parse_names(kinds, "--kinds")
    with open_app() as dspex_app, _job_logging():
        runner = Worker(
            dspex_app,
            worker_id=worker_id,
            kinds=wanted,
            lease_s=lease,
            poll_s=poll,
            on_event=_print_event,
            pool=pool,
        )
        typer.echo(f"worker {runner.worker_id} waiting for jobs ({', '.join(runner.kinds)})")
        with _graceful_signals(runner):
            processed = runner.run(max_jobs=max_jobs, stop_when_idle=until_idle)
        typer.echo(f"worker {runner.worker_id} stopped after {processed} job(s)")


# -- dspex jobs --------------------------------------------------------------------------------------------


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _progress(job: JobRecord) -> str:
    """A short summary of a job's progress: trials of an optimization, examples of an evaluation."""
    p = job.progress or {}
    if "optimizer" in p:
        best = p.get("best_score")
        return (
            f"{p['optimizer']} {p.get('phase', '')}: {p.get('candidates', 0)} candidates"
            + (f", best {best:.3f}" if best is not None else "")
            + f", {p.get('lm_calls', 0)} LM calls"
        )
    if "n_trials" in p:
        best = p.get("best_score")
        return f"{p.get('finished', 0)}/{p['n_trials']} trials" + (
            f", best {best:.3f}" if best is not None else ""
        )
    if "total" in p:
        score = p.get("score")
        return f"{p.get('done', 0)}/{p['total']} examples" + (f", {score:.3f}" if score is not None else "")
    return "-"


def _get(dspex_app: App, job_id: str) -> JobRecord:
    job = dspex_app.jobs.get(job_id)
    if job is None:
        raise ConfigurationError(f"no job {job_id!r}; `dspex jobs list` shows them")
    return job


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(None, "--status", help=f"Only this status: {', '.join(_STATUSES)}."),
    kind: str | None = typer.Option(None, "--kind", help="Only this kind: optimize, evaluate."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many jobs, newest first."),
    as_json: bool = _JSON,
) -> None:
    """The jobs, newest first, with their status, attempts and progress."""
    if status is not None and status not in _STATUSES:
        with open_app():  # the same `error: ...` line and exit code 2 as every other bad option
            raise ConfigurationError(did_you_mean(status, _STATUSES, what="job status"))
    with open_app() as dspex_app:
        found = dspex_app.jobs.list(status=status, kind=kind, limit=limit)
        counts = dspex_app.jobs.counts()
    if as_json:
        emit_json([job.to_json() for job in found])
        return
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    table = Table(title=f"Jobs ({len(found)} shown; {summary or 'none'})")
    for column in ("id", "kind", "program", "status", "attempts", "progress", "created", "finished"):
        table.add_column(column, justify="right" if column == "attempts" else "left")
    for job in found:
        table.add_row(
            job.id,
            job.kind,
            text(job.payload.get("program", "-")),
            _status(job.status) + (" (cancelling)" if job.cancel_requested and not job.done else ""),
            f"{job.attempts}/{job.max_attempts}",
            _progress(job),
            fmt_time(job.created_at),
            fmt_time(job.finished_at),
        )
    console().print(table)


@app.command("show")
def show(
    job_id: str = typer.Argument(..., help="Job id (from `dspex jobs list`)."), as_json: bool = _JSON
) -> None:
    """One job: its payload, progress, attempts, errors and result."""
    with open_app() as dspex_app:
        job = _get(dspex_app, job_id)
    if as_json:
        emit_json(job.to_json())
        return
    out = console()
    out.print(
        f"[bold]{job.id}[/]  {job.kind}  status {_status(job.status)}  attempts {job.attempts}/{job.max_attempts}"
        f"  priority {job.priority}" + ("  [yellow]cancel requested[/]" if job.cancel_requested else "")
    )
    out.print(
        f"created {fmt_time(job.created_at)}  started {fmt_time(job.started_at)}  "
        f"finished {fmt_time(job.finished_at)}  due {fmt_time(job.run_after)}"
    )
    if job.lease_owner:
        out.print(f"worker {text(job.lease_owner)}  lease until {fmt_time(job.lease_expires_at)}")
    out.print(f"progress: {_progress(job)}  {text(job.progress) if job.progress else ''}")
    out.print("payload:", markup=False)
    out.print(json.dumps(job.payload, indent=2, ensure_ascii=False), markup=False, highlight=False)
    for entry in (job.error or {}).get("attempts", []):
        retry = "retryable" if entry.get("retryable") else "not retryable"
        out.print(
            f"[red]attempt {entry.get('attempt', '?')} failed[/] ({retry}): "
            f"{text(entry.get('type', 'Error'))}: {text(entry.get('message', ''))}"
        )
    if job.result is not None:
        out.print("result:", markup=False)
        out.print(json.dumps(job.result, indent=2, ensure_ascii=False), markup=False, highlight=False)


@app.command("cancel")
def cancel(
    job_id: str = typer.Argument(..., help="Job id (from `dspex jobs list`)."), as_json: bool = _JSON
) -> None:
    """Cancel a job: a queued one at once, a running one at its worker's next safe point."""
    with open_app() as dspex_app:
        _get(dspex_app, job_id)
        job = dspex_app.jobs.cancel(job_id)
    if as_json:
        emit_json(job.to_json())
    elif job.status == "cancelled":
        typer.echo(f"job {job.id} cancelled")
    else:
        typer.echo(f"job {job.id}: cancel requested; its worker stops it after the step in progress")


def _queued(job: JobRecord, as_json: bool, what: str) -> None:
    if as_json:
        emit_json(job.to_json())
        return
    typer.echo(
        f"queued job {job.id}: {what}; run it with `dspex worker`, follow it with `dspex jobs show {job.id}`"
    )


@app.command("submit-optimization")
def submit_optimization(
    program: str = PROGRAM,
    dataset: str = DATASET,
    space_file: Path | None = _SPACE,
    budget: int | None = typer.Option(
        None, "--budget", min=1, help="Finished trials to run (complete + pruned). Not with --optimizer."
    ),
    split: str | None = SPLIT,
    metric: str = METRIC,
    objectives: str = OBJECTIVES,
    seed: int = SEED,
    version: str | None = VERSION,
    max_lm_calls: int | None = typer.Option(
        None,
        "--max-lm-calls",
        min=1,
        help="The variable search starts no trial past this many LM calls; a DSPy optimizer is stopped "
        "at it (a hard cap over all the job's attempts) and the best candidate so far is kept.",
    ),
    parallel: int = PARALLEL,
    drivers: int = typer.Option(
        1,
        "--drivers",
        min=1,
        max=MAX_DRIVERS,
        help=f"Worker processes driving the search (1 to {MAX_DRIVERS}): this job owns the run and "
        "DRIVERS - 1 more jobs add trials to it from whichever workers claim them. Not with --optimizer.",
    ),
    optimizer: str | None = _optimizers.OPTIMIZER,
    option: list[str] | None = _optimizers.OPTION,
    options: str | None = _optimizers.OPTIONS,
    prompt_model: str | None = _optimizers.PROMPT_MODEL,
    max_attempts: int = _MAX_ATTEMPTS,
    as_json: bool = _JSON,
) -> None:
    """Queue an optimization (what `dspex optimize` runs in the foreground) for a worker: the variable
    search (--space, --budget) or one of DSPy's optimizers (--optimizer, -o NAME=VALUE). The program
    version and dataset version are pinned now; a job retried after its worker died resumes the run."""
    from dspex.cli.optimize import load_space_file
    from dspex.jobs import submit_dspy_optimization
    from dspex.jobs import submit_optimization as submit
    from dspex.variables.spacefile import space_document

    wanted = [part.strip() for part in objectives.split(",")]
    if optimizer is not None:
        with open_app() as dspex_app:
            _optimizers.check_no_search_options(space_file, budget, objectives)
            check_parallel_search(parallel, optimizer)
            if drivers != 1:
                raise ConfigurationError(
                    "--drivers belongs to the variable search; a DSPy optimizer runs in one process"
                )
            job = submit_dspy_optimization(
                dspex_app,
                program=program,
                dataset=dataset,
                optimizer=optimizer,
                options=_optimizers.parse_options(options, option),
                split=split,
                metric=metric,
                seed=seed,
                version_id=version,
                prompt_model=prompt_model,
                max_lm_calls=max_lm_calls,
                max_attempts=max_attempts,
            )
        _queued(job, as_json, f"optimization {job.payload['optimization_id']} of {program} ({optimizer})")
        return
    with open_app() as dspex_app:
        _optimizers.check_variable_search(space_file, budget)
        assert space_file is not None
        assert budget is not None
        space, bindings = load_space_file(space_file)
        job = submit(
            dspex_app,
            program=program,
            dataset=dataset,
            space=space_document(space, bindings),
            n_trials=budget,
            split=split,
            metric=metric,
            objectives=wanted,
            seed=seed,
            version_id=version,
            max_lm_calls=max_lm_calls,
            parallel=parallel,
            drivers=drivers,
            max_attempts=max_attempts,
        )
    at_once = f", {parallel} at once" if parallel != 1 else ""
    at_once += f", {drivers} drivers" if drivers != 1 else ""
    _queued(
        job, as_json, f"optimization {job.payload['optimization_id']} of {program} ({budget} trials{at_once})"
    )


@app.command("submit-evaluation")
def submit_evaluation(
    program: str = PROGRAM,
    dataset: str = DATASET,
    split: str | None = SPLIT,
    metric: str = METRIC,
    version: str | None = typer.Option(
        None, "--version", help="Program version (default: production, else newest draft)."
    ),
    variables: str | None = typer.Option(
        None,
        "--variables",
        help="A configuration as JSON ('{\"temperature\": 0.2}', @file or -); needs --space.",
    ),
    space_file: Path | None = _EVAL_SPACE,
    max_attempts: int = _MAX_ATTEMPTS,
    as_json: bool = _JSON,
) -> None:
    """Queue a batch evaluation of a program version on a dataset for a worker."""
    from dspex.cli.optimize import load_space_file
    from dspex.jobs import submit_evaluation as submit
    from dspex.variables.spacefile import space_document

    with open_app() as dspex_app:
        configuration = json_object(variables, "--variables") if variables is not None else None
        document = space_document(*load_space_file(space_file)) if space_file is not None else None
        job = submit(
            dspex_app,
            program=program,
            dataset=dataset,
            split=split,
            metric=metric,
            version_id=version,
            variables=configuration,
            space=document,
            max_attempts=max_attempts,
        )
    _queued(job, as_json, f"evaluation of {program} on {job.payload['dataset']}")
