"""Job handlers: what a worker does for each kind of job (see :mod:`dspex.jobs.submit` for the payloads).

A handler takes the App, the claimed job and its :class:`~dspex.jobs.JobContext`, and returns the job's
JSON result; it raises :class:`~dspex.jobs.JobInterrupted` when the context says stop, and any other
exception when the job failed (the worker classifies it: a ``UserError`` is not retried). ::

    HANDLERS["optimize"](app, job, context)    # -> {"optimization_id": ..., "best": {...}, ...}

- ``optimize``: :meth:`dspex.App.optimize` with the payload's pinned program version, dataset version and
  space. The optimization id comes from the payload, so a job taken up again by another worker (its first
  worker died, or stopped) resumes the same run with its finished trials. It stops at the end of the
  trial in progress when the job is cancelled (the run is recorded ``cancelled``), or when the lease is
  lost or the worker stops (the run stays ``running`` for the next worker). The payload's ``parallel``
  (default 1) is the trials evaluated at once (:class:`~dspex.distributed.optimize.ParallelOptimizer`);
  the trials in flight when it stops finish and are recorded first. A payload with ``"join": true``
  (``submit_optimization(drivers=N)``) is one more driver of the owner job's run (:func:`_run_joined`);
  when the owner's attempt fails and the owner job is retried, its joining jobs go back to the queue and
  join the resumed run.
  A payload with an ``optimizer`` (``submit_dspy_optimization``) runs that DSPy optimizer instead
  (:meth:`dspex.App.optimize_with`): its progress is the candidates evaluated, the best score so far and
  the LM calls; it stops at the next program call when asked to; taken up again, it resumes from the
  evaluation cache (:mod:`dspex.optimize.dspy_run` says what a resumed run repeats). Its program calls
  (candidate evaluations, and the traced calls of bootstrapping, GEPA's minibatches and SIMBA) run where a
  variable search evaluates its trials (below), and the result's ``placement`` says where. The payload
  never names a pool, nor any LM setting of the workers.
- ``evaluate``: the pinned program version, configured with the payload's variables through the space's
  bindings when given, scored by :class:`~dspex.optimize.Evaluator` on the dataset's split; it stops at
  the next finished example when asked to.

Where the examples run: on the worker's own pool (``dspex worker --pool``), else where the router's
``[routing]`` rules send the program (:meth:`dspex.runtime.router.Router.batch`), else in the worker's
process. A configured evaluation runs on a pool too: each pool worker applies the configuration to its
own copy. The result's ``placement`` says where and why (``{"target", "pool"?, "reason"}``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from dspex.errors import ConfigurationError, did_you_mean
from dspex.jobs._context import JobContext, JobInterrupted
from dspex.jobs.submit import EVALUATE, METRICS, OPTIMIZE, PAYLOAD_VERSION

if TYPE_CHECKING:
    from dspex.optimize.dspy_run import DSPyProgress
    from dspex.optimize.search import OptimizationResult, TrialProgress
    from dspex.runtime.app import App
    from dspex.runtime.router import Route
    from dspex.store.jobs import JobRecord

__all__ = [
    "HANDLERS",
    "Handler",
    "join_optimization",
    "run_dspy_optimization",
    "run_evaluation",
    "run_optimization",
]

Handler = Callable[["App", "JobRecord", JobContext], dict[str, Any]]
RESULT_VERSION = 1
_T = TypeVar("_T")


# -- payload access -------------------------------------------------------------------------------------


def _payload(job: JobRecord) -> Mapping[str, Any]:
    payload = job.payload
    if not isinstance(payload, Mapping):
        raise ConfigurationError(f"job {job.id}: the payload is not a JSON object")
    version = payload.get("v")
    if version != PAYLOAD_VERSION:
        raise ConfigurationError(
            f"job {job.id}: payload version {version!r} is not {PAYLOAD_VERSION}; "
            "submit it again with this dspex version"
        )
    return payload


def _optional(job: JobRecord, name: str, kind: type[_T]) -> _T | None:
    """A payload field of the expected JSON type, or None; a malformed payload is a ConfigurationError,
    which the worker does not retry."""
    value = _payload(job).get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):  # JSON true is no count
        raise ConfigurationError(
            f"job {job.id}: payload field {name!r} must be a JSON {kind.__name__}, got {value!r}"
        )
    return value


def _field(job: JobRecord, name: str, kind: type[_T]) -> _T:
    """A required payload field (see :func:`_optional`)."""
    value = _optional(job, name, kind)
    if value is None:
        raise ConfigurationError(f"job {job.id}: the payload has no {name!r}")
    return value


def _metric(job: JobRecord) -> str:
    metric = _field(job, "metric", str)
    if metric not in METRICS:
        raise ConfigurationError(f"job {job.id}: " + did_you_mean(metric, METRICS, what="metric"))
    return metric


# -- optimize ---------------------------------------------------------------------------------------------


def _trial_json(trial: Any) -> dict[str, Any]:
    return {"trial": trial.number, "configuration": trial.configuration, "scores": trial.scores}


def run_dspy_optimization(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
    """Run (or resume) the job's DSPy optimizer; the result names the run, its score on the devset, its
    LM calls and usage, and the saved program version."""
    from dspex.optimize.search import OptimizationStopped

    optimizer = _field(job, "optimizer", str)
    options = _optional(job, "options", dict) or {}
    optimization_id = _field(job, "optimization_id", str)
    context.check()
    context.report({"optimization_id": optimization_id, "optimizer": optimizer, "phase": "start"})

    def on_progress(progress: DSPyProgress) -> None:
        context.report({"optimization_id": optimization_id, **progress.to_json()})

    def should_stop() -> None:
        reason = context.stop_reason
        if reason is not None:
            raise OptimizationStopped(f"job {job.id}: {reason}", cancelled=reason == "cancel")

    route = _dspy_route(app, job, optimizer, context)
    try:
        result = app.optimize_with(
            _field(job, "program", str),
            optimizer,
            dataset=_field(job, "dataset", str),
            options=options,
            split=_optional(job, "split", str),
            metric=_metric(job),
            seed=_field(job, "seed", int),
            version_id=_field(job, "version_id", str),
            prompt_model=_optional(job, "prompt_model", str),
            max_lm_calls=_optional(job, "max_lm_calls", int),
            optimization_id=optimization_id,
            on_progress=on_progress,
            should_stop=should_stop,
            pool=route.pool,
        )
    except OptimizationStopped as exc:
        reason = context.stop_reason or ("cancel" if exc.cancelled else "release")
        done = {"optimization_id": optimization_id, "optimizer": optimizer}
        raise JobInterrupted(reason, str(exc), result=done) from exc
    return {
        "v": RESULT_VERSION,
        "program": job.payload["program"],
        **result.to_json(),
        "best": {"scores": {"quality": result.score}},
        "placement": route.placement(),
    }


def _dspy_route(app: App, job: JobRecord, optimizer: str, context: JobContext) -> Route:
    """Where a DSPy optimizer job's candidate evaluations run: the worker's own pool, else the routing
    rules (:meth:`~dspex.runtime.router.Router.batch`), for an optimizer that can evaluate on a pool
    (``OPTIMIZERS[name].pooled``); the others evaluate in the worker's process, and the placement says why."""
    from dspex.optimize.dspy_optimizers import OPTIMIZERS
    from dspex.runtime.router import Route

    spec = OPTIMIZERS.get(optimizer)
    if spec is None or not spec.pooled:  # no pool is started (nor routed to) for it
        return Route(None, f"{optimizer} runs its program calls in process (it cannot use a pool)")
    return app.router.batch(_field(job, "program", str), _field(job, "version_id", str), pool=context.pool)


def _search_arguments(app: App, job: JobRecord) -> dict[str, Any]:
    """:meth:`dspex.App.optimize`'s arguments from a variable-search job's payload (all but its callbacks,
    placement and parallelism)."""
    from dspex.variables.spacefile import space_from_document

    space, bindings = space_from_document(_field(job, "space", dict), functions=app.tools)
    return {
        "dataset": _field(job, "dataset", str),
        "space": space,
        "bindings": bindings,
        "n_trials": _field(job, "n_trials", int),
        "split": _optional(job, "split", str),
        "metric": _metric(job),
        "objectives": [str(o) for o in _field(job, "objectives", list)],
        "seed": _field(job, "seed", int),
        "version_id": _field(job, "version_id", str),
        "max_lm_calls": _optional(job, "max_lm_calls", int),
        "optimization_id": _field(job, "optimization_id", str),
    }


def run_optimization(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
    """Run (or resume) the job's optimization; the result names the run, its best trial and the saved
    program version. A payload naming an ``optimizer`` goes to :func:`run_dspy_optimization`."""
    from dspex.distributed._parallel import check_parallel
    from dspex.optimize.search import OptimizationStopped

    if _optional(job, "optimizer", str) is not None:
        return run_dspy_optimization(app, job, context)

    arguments = _search_arguments(app, job)
    n_trials, optimization_id = arguments["n_trials"], arguments["optimization_id"]
    # Trials at once (a payload queued before `parallel` existed has none: one at a time).
    parallel = check_parallel(_optional(job, "parallel", int) or 1, f"job {job.id}: payload field 'parallel'")
    context.check()
    # A job taken up again resumes: its progress starts from the trials the run already finished.
    context.report(
        {
            "optimization_id": optimization_id,
            "finished": app.optimizations.count(optimization_id),
            "n_trials": n_trials,
        }
    )

    def on_trial(progress: TrialProgress) -> None:
        best = progress.best.scores if progress.best is not None else None
        context.report(
            {
                "optimization_id": optimization_id,
                "finished": progress.finished,
                "n_trials": progress.n_trials,
                "fraction": min(1.0, progress.finished / progress.n_trials),
                "lm_calls": progress.lm_calls,
                "best_score": float(best["quality"]) if best else None,
                "best_trial": progress.best.number if progress.best is not None else None,
                "last_trial": progress.trial.number,
                "last_state": progress.trial.state,
            }
        )
        should_stop()

    def should_stop() -> None:
        reason = context.stop_reason
        if reason is not None:
            raise OptimizationStopped(f"job {job.id}: {reason}", cancelled=reason == "cancel")

    route = app.router.batch(_field(job, "program", str), arguments["version_id"], pool=context.pool)
    if _optional(job, "join", bool):
        return _run_joined(app, job, context, arguments, parallel, route, on_trial, should_stop)
    try:
        result = app.optimize(
            _field(job, "program", str),
            **arguments,
            on_trial=on_trial,
            should_stop=should_stop,
            pool=route.pool,
            parallel=parallel,
            shared=(_optional(job, "drivers", int) or 1) > 1,  # its joining jobs add their trials
        )
    except OptimizationStopped as exc:
        done = {"optimization_id": optimization_id, "finished": app.optimizations.count(optimization_id)}
        reason = context.stop_reason or ("cancel" if exc.cancelled else "release")
        raise JobInterrupted(reason, str(exc), result={**done, "n_trials": n_trials}) from exc
    return {
        "v": RESULT_VERSION,
        "optimization_id": result.id,
        "program": job.payload["program"],
        "version_id": result.version_id,
        "best": _trial_json(result.best),
        "pareto": [_trial_json(t) for t in result.pareto],
        "lm_calls": result.lm_calls,
        "finished": result.finished,
        "n_trials": n_trials,
        "parallel": parallel,
        "placement": route.placement(),
    }


def _run_joined(
    app: App,
    job: JobRecord,
    context: JobContext,
    arguments: dict[str, Any],
    parallel: int,
    route: Any,
    on_trial: Callable[[TrialProgress], None],
    should_stop: Callable[[], None],
) -> dict[str, Any]:
    """A joining job (``submit_optimization(drivers=N)``): one more driver of the owner job's run. It waits
    for the run to start (given back to the queue while the owner job is queued, so that a worker takes the
    owner first), adds trials until the budget is spent, and is cancelled when the run ends cancelled, or
    failed for good; a run that failed while its owner job has attempts left sends this job back to the
    queue, to join the run its owner resumes. A run that already ended (its owner job done), or an owner
    job that ended before starting it, leaves nothing to do; so does a run that ends between this job's
    look at it and its join (the join's "nothing to join" is that outcome, not the job's failure)."""

    from dspex.jobs.submit import optimization_job
    from dspex.optimize.search import OptimizationStopped

    optimization_id = arguments["optimization_id"]
    done = {"v": RESULT_VERSION, "optimization_id": optimization_id, "program": job.payload["program"]}
    pause = threading.Event()
    while True:
        context.check()
        runs = [r for r in app.optimizations.runs(_field(job, "program", str)) if r.id == optimization_id]
        if runs and runs[0].status == "running":
            break
        owner = optimization_job(app, optimization_id)
        if owner is None or owner.done:
            if runs:  # ended, and no attempt of its owner job is left to start it again
                return {**done, "joined": False, "reason": f"the run is {runs[0].status}"}
            status = owner.status if owner is not None else "gone"
            return {**done, "joined": False, "reason": f"its owner job is {status} and never started the run"}
        if owner.status == "queued":  # not started yet, or to be retried after a failed attempt
            raise JobInterrupted("release", f"optimization {optimization_id}: its owner job is queued")
        # The owner job is running: its run appears (or starts again, or ends) within moments.
        pause.wait(0.1)
    try:
        result = app.optimize(
            _field(job, "program", str),
            **arguments,
            on_trial=on_trial,
            should_stop=should_stop,
            pool=route.pool,
            parallel=parallel,
            join=True,
        )
    except ConfigurationError as exc:
        # The run was running when looked at above, but ended before this driver joined it (its owner's
        # attempt failed, or the budget was spent, in between): the join refuses an ended run. The outcome
        # is the one of a run found ended a moment earlier, not a failed job; other misuse fails the job.
        status = app.optimizations.get(optimization_id).status
        if status == "running":
            raise
        if status == "failed" and _owner_runs_again(app, optimization_id, context, pause):
            raise JobInterrupted(
                "release",
                f"optimization {optimization_id} failed as this job joined it and its owner job runs it "
                "again; this joining job goes back to the queue to join it",
            ) from exc
        return {**done, "joined": False, "reason": f"the run is {status}"}
    except OptimizationStopped as exc:
        if context.stop_reason is not None:  # this job was cancelled, lost its lease, or its worker stops
            raise JobInterrupted(context.stop_reason, str(exc), result={**done, "joined": True}) from exc
        status = app.optimizations.get(optimization_id).status
        if status == "failed" and _owner_runs_again(app, optimization_id, context, pause):
            # The owner job's attempt failed and it will resume the run: this job waits in the queue
            # (its attempt not counted) and joins the resumed run, instead of leaving the owner alone.
            raise JobInterrupted(
                "release",
                f"optimization {optimization_id} failed and its owner job runs it again; this joining job "
                "goes back to the queue to join it",
                result={**done, "joined": True},
            ) from exc
        raise JobInterrupted(
            "cancel", f"optimization {optimization_id} ended {status}", result={**done, "joined": True}
        ) from exc
    return {
        **done,
        "joined": True,
        "finished": result.finished,
        "n_trials": arguments["n_trials"],
        "parallel": parallel,
        "placement": route.placement(),
    }


def _owner_runs_again(app: App, optimization_id: str, context: JobContext, pause: threading.Event) -> bool:
    """Whether the owner job of a run that ended failed will run it again: it is queued for another
    attempt, or already resumed it. Waits while its failing attempt is being recorded."""
    from dspex.jobs.submit import optimization_job

    while True:
        context.check()
        owner = optimization_job(app, optimization_id)
        if owner is None or owner.done:
            return False
        if owner.status == "queued" or app.optimizations.get(optimization_id).status == "running":
            return True
        pause.wait(0.1)


def join_optimization(
    app: App,
    optimization_id: str,
    *,
    parallel: int = 1,
    pool: str | None = None,
    on_trial: Callable[[TrialProgress], None] | None = None,
) -> OptimizationResult:
    """Add this process's trials to the running optimization job ``optimization_id`` (another driver of
    its run, :class:`~dspex.distributed.optimize.ParallelOptimizer` ``join=True``), with the inputs pinned
    in the job's payload, until its budget is spent; the job's worker ends the run and saves the version.
    ``pool``: a configured pool for this driver's trials (default: the routing rules). ::

        result = join_optimization(app, "opt-3fa1c09e2b7d4a11", parallel=2)   # `dspex optimizations join`
    """
    from dspex.jobs.submit import optimization_job

    job = optimization_job(app, optimization_id)
    if job is None:
        raise ConfigurationError(
            f"no optimization job {optimization_id!r} (`dspex jobs list` shows them); a run started by "
            "`dspex optimize` is joined by the same command with --join"
        )
    if _optional(job, "optimizer", str) is not None:
        raise ConfigurationError(
            f"optimization {optimization_id!r} runs DSPy's {job.payload['optimizer']}, which one process "
            "drives; only a variable search can be joined"
        )
    if job.status != "running":
        hint = "; join it once a worker runs it (`dspex worker`)" if job.status == "queued" else ""
        raise ConfigurationError(f"the job of optimization {optimization_id!r} is {job.status}{hint}")
    return app.optimize(
        _field(job, "program", str),
        **_search_arguments(app, job),
        on_trial=on_trial,
        pool=pool,
        parallel=parallel,
        join=True,
    )


# -- evaluate ---------------------------------------------------------------------------------------------


def run_evaluation(app: App, job: JobRecord, context: JobContext) -> dict[str, Any]:
    """Score the job's program version on its dataset; the result has the score, counts, LM calls and
    token usage."""
    from dspex.optimize import Evaluator
    from dspex.optimize.metrics import exact_match, f1
    from dspex.variables.spacefile import space_from_document

    name = _field(job, "program", str)
    version_id = _field(job, "version_id", str)
    dataset = _field(job, "dataset", str)
    split = _optional(job, "split", str)
    metric = _metric(job)
    variables = _optional(job, "variables", dict)
    configuration: dict[str, Any] | None = None
    applied: dict[str, Any] | None = None
    if variables is not None:
        document = _field(job, "space", dict)
        space, _ = space_from_document(document, functions=app.tools)
        configuration = space.validate(variables).to_json()
        applied = {"space": document, "values": configuration}  # applied on the pool's workers, or here
    placed = app.router.evaluation(name, version_id, pool=context.pool, configuration=applied)
    program: Any = placed.program
    lm = None if placed.route.pool is not None else app.default_lm(program)
    examples = app.examples(dataset, split)[1]
    context.check()

    def progress(done: int, total: int, score: float) -> None:
        context.report({"done": done, "total": total, "fraction": done / total, "score": score})
        context.check()  # raising here stops the evaluation: in-flight examples are dropped

    evaluator = Evaluator({"exact_match": exact_match, "f1": f1}[metric], progress=progress)
    result = evaluator.run(program, examples, lm=lm)
    return {
        "v": RESULT_VERSION,
        "program": name,
        "version_id": version_id,
        "dataset": dataset,
        "split": split,
        "metric": metric,
        "variables": configuration,
        "score": result.score,
        "scores": dict(result.scores),
        "n": result.n,
        "total": result.total,
        "errors": result.errors,
        "lm_calls": result.lm_calls,
        "usage": {model: dict(counts) for model, counts in result.usage.items()},
        "duration_s": round(result.duration_s, 3),
        "placement": placed.route.placement(),
    }


HANDLERS: Mapping[str, Handler] = {OPTIMIZE: run_optimization, EVALUATE: run_evaluation}
