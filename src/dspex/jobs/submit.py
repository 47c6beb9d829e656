"""Submitting jobs: optimizations and batch evaluations, checked before they are queued.

Everything a worker needs is in the job's JSON payload, pinned at submission: the program version id
(not "production", which may move), the dataset version, the space document, the metric by name. Bad
input is refused here, with a ``UserError`` naming what to change, so a queued job fails only for
reasons that arise while it runs. ::

    job = submit_optimization(app, program="qa", dataset="qa-set", space=document, n_trials=30)
    app.jobs.get(job.id).status      # queued -> running -> succeeded; job.payload["optimization_id"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.jobs import JobRecord

__all__ = [
    "EVALUATE",
    "METRICS",
    "OPTIMIZE",
    "optimization_job",
    "submit_dspy_optimization",
    "submit_evaluation",
    "submit_optimization",
]

OPTIMIZE = "optimize"
EVALUATE = "evaluate"
METRICS = ("exact_match", "f1")
PAYLOAD_VERSION = 1


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigurationError(did_you_mean(metric, METRICS, what="metric"))


def _pinned_dataset(app: App, dataset: str, split: str | None) -> str:
    version = app.datasets.resolve(dataset)
    if split is not None and split not in version.splits:
        raise ConfigurationError(
            f"dataset {version.dataset!r} has no split {split!r}; it has {sorted(version.splits) or 'none'}"
        )
    return f"{version.dataset}@{version.id}"


def _join_callers_trace(payload: dict[str, Any]) -> None:
    """Keep the submitter's trace context (a traceparent, its OpenTelemetry span) with the job: the worker
    runs the job in that trace, under a ``job <kind>`` span per attempt."""
    from dspex.telemetry.context import caller_trace

    context = caller_trace()
    if context is not None:
        payload["traceparent"] = context.traceparent


def optimization_job(app: App, optimization_id: str) -> JobRecord | None:
    """The job that runs ``optimization_id`` (an id :func:`submit_optimization` made), or None."""
    if not optimization_id.startswith("opt-"):
        return None
    for job in app.jobs.with_prefix(optimization_id[4:], kind=OPTIMIZE):
        if job.payload.get("optimization_id") == optimization_id and not job.payload.get("join"):
            return job
    return None


def submit_optimization(
    app: App,
    *,
    program: str,
    dataset: str,
    space: Mapping[str, Any],
    n_trials: int,
    split: str | None = None,
    metric: str = "exact_match",
    objectives: Sequence[str] = ("quality",),
    seed: int = 0,
    version_id: str | None = None,
    max_lm_calls: int | None = None,
    parallel: int = 1,
    drivers: int = 1,
    created_by: str | None = None,
    max_attempts: int = 3,
) -> JobRecord:
    """Queue an optimization of ``program`` (see :meth:`dspex.App.optimize`); ``space`` is a space
    document (``dspex.variables.spacefile``). The job's payload carries the optimization id, so a job
    taken up again after its worker died resumes the same run with its completed trials. ``parallel``:
    trials the worker evaluates at once (1 to :data:`~dspex.distributed.optimize.MAX_PARALLEL`).
    ``drivers``: worker processes driving it (1 to 16): the returned job owns the run, and ``drivers - 1``
    more jobs (``"join": true`` in their payload) add their trials to it from whichever workers claim
    them; each joining job waits for the run to start and ends when its budget is spent, or cancelled
    when the run ends cancelled or failed."""
    from dspex.distributed._parallel import check_drivers, check_parallel
    from dspex.optimize.search import OBJECTIVES
    from dspex.variables.spacefile import space_document, space_from_document

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigurationError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if max_lm_calls is not None and max_lm_calls < 1:
        raise ConfigurationError(f"max_lm_calls must be >= 1, got {max_lm_calls!r}")
    check_parallel(parallel)
    check_drivers(drivers)
    wanted = list(dict.fromkeys(objectives))
    if not wanted or wanted[0] != "quality":
        raise ConfigurationError(f"objectives start with 'quality', then any of cost, latency; got {wanted}")
    for objective in wanted:
        if objective not in OBJECTIVES:
            raise ConfigurationError(did_you_mean(objective, OBJECTIVES, what="objective"))
    _check_metric(metric)
    parsed_space, bindings = space_from_document(space, functions=app.tools)
    fields = {
        "space": space_document(parsed_space, bindings),
        "n_trials": n_trials,
        "metric": metric,
        "objectives": wanted,
        "seed": seed,
        "max_lm_calls": max_lm_calls,
        "parallel": parallel,
        "drivers": drivers,
    }
    owner = _enqueue_optimization(app, program, version_id, dataset, split, fields, created_by, max_attempts)
    for _ in range(drivers - 1):  # ids of their own: optimization_job() finds the owner by its id's prefix
        app.jobs.enqueue(
            OPTIMIZE, {**owner.payload, "join": True}, created_by=created_by, max_attempts=max_attempts
        )
    return owner


def submit_dspy_optimization(
    app: App,
    *,
    program: str,
    dataset: str,
    optimizer: str,
    options: Mapping[str, Any] | None = None,
    split: str | None = None,
    metric: str = "exact_match",
    seed: int = 0,
    version_id: str | None = None,
    prompt_model: str | None = None,
    max_lm_calls: int | None = None,
    created_by: str | None = None,
    max_attempts: int = 3,
) -> JobRecord:
    """Queue an optimization of ``program`` by one of DSPy's optimizers (see :meth:`dspex.App.optimize_with`):
        ``optimizer`` is ``miprov2``, ``gepa``, ``simba``, ``copro``, ``bootstrap``, ``bootstrap_rs`` or
        ``ensemble`` and ``options`` its options as plain JSON, checked now (an unknown one is refused with
        the valid ones listed). ``prompt_model`` names a configured model (``[models]``). ``max_lm_calls`` caps
    the LM calls of the job, all its attempts together (the optimizers' own budgets are in their own units):
    the optimizer is stopped there and the best candidate so far kept. The job's kind is
        ``optimize``; its payload carries the optimization id, so the worker that takes the job over after a
        crash resumes the run, its finished evaluations served from the evaluation cache. ::

            job = submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="miprov2",
                                           options={"auto": "light"})
    """
    from dspex.optimize.dspy_optimizers import check_options

    checked = check_options(optimizer, options)
    _check_metric(metric)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigurationError(f"seed must be an integer >= 0, got {seed!r}")
    if prompt_model is not None and prompt_model not in app.models:
        raise ConfigurationError("prompt_model: " + app.models.unknown(prompt_model))
    if max_lm_calls is not None and (
        not isinstance(max_lm_calls, int) or isinstance(max_lm_calls, bool) or max_lm_calls < 1
    ):
        raise ConfigurationError(f"max_lm_calls must be an integer >= 1, got {max_lm_calls!r}")
    fields = {
        "optimizer": optimizer,
        "options": checked,
        "metric": metric,
        "seed": seed,
        "prompt_model": prompt_model,
        "max_lm_calls": max_lm_calls,
    }
    return _enqueue_optimization(app, program, version_id, dataset, split, fields, created_by, max_attempts)


def _enqueue_optimization(
    app: App,
    program: str,
    version_id: str | None,
    dataset: str,
    split: str | None,
    fields: Mapping[str, Any],
    created_by: str | None,
    max_attempts: int,
) -> JobRecord:
    """Queue an ``optimize`` job: the program version and dataset pinned, ``fields`` for its handler, and
    the optimization id (from the job id) a worker taking the job over resumes."""
    import uuid

    version = app.programs.resolve(program, version_id)
    pinned = _pinned_dataset(app, dataset, split)
    job_id = uuid.uuid4().hex
    payload = {
        "v": PAYLOAD_VERSION,
        "program": program,
        "version_id": version.id,
        "dataset": pinned,
        "split": split,
        **fields,
        "optimization_id": f"opt-{job_id[:16]}",
    }
    _join_callers_trace(payload)
    return app.jobs.enqueue(
        OPTIMIZE, payload, job_id=job_id, created_by=created_by, max_attempts=max_attempts
    )


def submit_evaluation(
    app: App,
    *,
    program: str,
    dataset: str,
    split: str | None = None,
    metric: str = "exact_match",
    version_id: str | None = None,
    variables: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    created_by: str | None = None,
    max_attempts: int = 3,
) -> JobRecord:
    """Queue a batch evaluation of ``program`` over ``dataset``; with ``variables`` (a configuration)
    the program is configured through ``space``'s bindings first."""
    _check_metric(metric)
    document = None
    if variables is not None:
        if space is None:
            raise ConfigurationError("variables= needs space= (its bindings say where the values go)")
        from dspex.variables.spacefile import space_document, space_from_document

        parsed_space, bindings = space_from_document(space, functions=app.tools)
        parsed_space.validate(dict(variables))
        document = space_document(parsed_space, bindings)
    version = app.programs.resolve(program, version_id)
    payload = {
        "v": PAYLOAD_VERSION,
        "program": program,
        "version_id": version.id,
        "dataset": _pinned_dataset(app, dataset, split),
        "split": split,
        "metric": metric,
        "variables": dict(variables) if variables is not None else None,
        "space": document,
    }
    _join_callers_trace(payload)
    return app.jobs.enqueue(EVALUATE, payload, created_by=created_by, max_attempts=max_attempts)
