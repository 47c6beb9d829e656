"""DSPy's MIPROv2 with its candidate evaluations on a worker pool or a Ray cluster.

::

    optimizer = PooledMIPROv2.from_app(app, "qa", pool="cluster", metric=exact_match,
                                       auto=None, num_candidates=6, num_threads=32)
    best = optimizer.compile(app.programs.load("qa"), trainset=trainset, valset=valset, num_trials=12)

What runs where. MIPROv2 scores many candidate programs (each a choice of instructions and demos for
the program's predictors): the program as given, one minibatch per trial and the whole valset every few
trials. DSPy routes all of that through the one ``dspy.Evaluate`` that ``compile`` builds and hands to
``_optimize_prompt_parameters``, and scoring needs only each example's prediction and the metric, not
DSPy traces. :class:`PooledMIPROv2` hands it a :class:`PooledEvaluate` instead, which runs the
candidate's examples on the pool's workers (in shards, through :class:`~dspex.optimize.Evaluator`'s
pooled path) and the metric here. What needs traces stays in this process: bootstrapping the demo
candidates (step 1) and the proposer's instruction calls (step 2), which are few next to the
evaluations.

What crosses to a worker: the registered program version (its name and content-hash id, which the worker
builds itself) and the candidate's ``dump_state()`` JSON (per predictor: instructions, field prefixes and
demos) with the LM settings removed. Never pickle, never an LM's endpoint or key: each predictor on the
worker keeps the LM the worker gave it (the pool's initializer, else the settings' LM), which should be
the task model.

Equal results. :class:`PooledEvaluate` returns what ``dspy.Evaluate`` returns: ``score`` is
``round(100 * sum / n, 2)`` over the metric's values, a failed example counts ``failure_score``, and
``max_errors`` failures stop the evaluation (MIPROv2 then scores the candidate 0, as it does in
process). With a deterministic LM the trials, their scores and the chosen program are those of
``dspy.MIPROv2`` in process (tested with the scripted LM). Evaluations of one candidate on examples it
already saw are served from an in-memory cache (``cache=False`` turns it off).

GEPA, SIMBA and the other optimizers run on a pool through the DSPex run (``App.optimize_with("qa",
"simba", pool=...)``, :mod:`dspex.optimize.dspy_run`), which also sends the program calls whose traces
the optimizer reads (GEPA's reflective minibatches, SIMBA's trajectories, bootstrapping) and replays
the traces the workers send back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dspy

from dspex.errors import ConfigurationError
from dspex.jsonable import to_jsonable
from dspex.optimize._remote_dspy import RemoteEvaluate, RemoteMIPROv2
from dspex.optimize._run import program_state
from dspex.optimize.cache import EvalCache
from dspex.pools.remote import PooledProgram

if TYPE_CHECKING:
    from dspex.pools.base import WorkerPool
    from dspex.runtime.app import App

__all__ = ["PooledEvaluate", "PooledMIPROv2", "candidate_on", "candidate_state"]


def _structure(program: Any) -> list[tuple[str, str]]:
    return [(name, str(predictor.signature.signature)) for name, predictor in program.named_predictors()]


def candidate_state(program: Any, base: Any) -> dict[str, Any]:
    """``program``'s ``dump_state()`` as JSON without its predictors' LM settings: what a worker loads
    into its own copy of ``base``'s version. ConfigurationError when ``program`` is not a copy of ``base``
    (other predictors or signatures) or its state is not JSON."""
    if _structure(program) != _structure(base):
        raise ConfigurationError(
            f"the candidate's predictors {_structure(program)} are not those of the registered version "
            f"{_structure(base)}; only instructions and demos may differ from it"
        )
    state = {
        name: {**part, "lm": None} if isinstance(part, dict) and "lm" in part else part
        for name, part in program_state(program, describe_lms=False).items()
    }
    jsonable = to_jsonable(state)
    try:
        json.dumps(jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"the candidate's state is not JSON ({exc}); it cannot cross to a pool"
        ) from None
    if not isinstance(jsonable, dict):
        raise ConfigurationError("the candidate's state is not a JSON object")
    return jsonable


def candidate_on(pool: WorkerPool, name: str, version_id: str, base: Any) -> Callable[[Any], PooledProgram]:
    """Candidate -> the registered ``name`` at ``version_id`` on ``pool`` with the candidate's state
    (:func:`candidate_state` against ``base``, the program as built from that version)."""

    def remote(candidate: Any) -> PooledProgram:
        return PooledProgram(pool, name, version_id, state=candidate_state(candidate, base))

    return remote


class PooledEvaluate(RemoteEvaluate):
    """``dspy.Evaluate`` whose program calls run on ``pool`` (see the module docstring): the program it is
    called with must be a copy of ``base``, the registered ``name`` at ``version_id``, differing only in
    instructions and demos."""

    def __init__(
        self,
        *,
        pool: WorkerPool,
        name: str,
        version_id: str,
        base: Any,
        devset: Sequence[Any],
        metric: Any,
        num_threads: int | None = None,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        provide_traceback: bool | None = None,
        cache: bool | EvalCache = True,
    ) -> None:
        super().__init__(
            remote=candidate_on(pool, name, version_id, base),
            devset=devset,
            metric=metric,
            num_threads=num_threads,
            max_errors=max_errors,
            failure_score=failure_score,
            provide_traceback=provide_traceback,
            cache=cache,
        )
        self.pool = pool
        self.name = name
        self.version_id = version_id
        self.base = base


class PooledMIPROv2(RemoteMIPROv2):
    """``dspy.MIPROv2`` whose candidate evaluations run on ``pool`` (see the module docstring); the
    student must be the registered ``name`` at ``version_id`` (``base``, as built from it). Every other
    argument is MIPROv2's own."""

    def __init__(
        self,
        metric: Any,
        *,
        pool: WorkerPool,
        name: str,
        version_id: str,
        base: Any,
        cache: bool | EvalCache = True,
        **options: Any,
    ) -> None:
        super().__init__(metric, evaluate_with=self._pooled, **options)
        self.pool = pool
        self.program_name = name
        self.version_id = version_id
        self.base = base
        self.cache = cache

    @classmethod
    def from_app(
        cls, app: App, name: str, *, pool: str, metric: Any, version_id: str | None = None, **options: Any
    ) -> PooledMIPROv2:
        """For the registered program ``name`` (``version_id``, else production, else the newest draft)
        on the configured pool ``pool``; ``task_model`` and ``prompt_model`` default to the App's LM."""
        version = app.programs.resolve(name, version_id)
        base = app.programs.build(version)
        if options.get("task_model") is None or options.get("prompt_model") is None:
            lm = app.default_lm(base)
            options = {**options, "task_model": options.get("task_model") or lm}
            options["prompt_model"] = options.get("prompt_model") or lm
        return cls(metric, pool=app.pools.get(pool), name=name, version_id=version.id, base=base, **options)

    def compile(self, student: Any, **kwargs: Any) -> Any:
        if _structure(student) != _structure(self.base):
            raise ConfigurationError(
                f"the student is not program {self.program_name!r} version {self.version_id[:12]}: its "
                f"predictors are {_structure(student)}, the version's {_structure(self.base)}"
            )
        return super().compile(student, **kwargs)

    def _pooled(self, evaluate: dspy.Evaluate) -> PooledEvaluate:
        return PooledEvaluate(
            pool=self.pool,
            name=self.program_name,
            version_id=self.version_id,
            base=self.base,
            devset=evaluate.devset,
            metric=evaluate.metric,
            num_threads=evaluate.num_threads,
            max_errors=evaluate.max_errors,
            failure_score=evaluate.failure_score,
            provide_traceback=evaluate.provide_traceback,
            cache=self.cache,
        )
