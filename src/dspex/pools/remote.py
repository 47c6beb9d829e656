"""``PooledProgram``: a registered program version on a pool, for the evaluation engine.

::

    remote = app.pooled("qa", pool="general")                # production version (or version_id=)
    result = Evaluator(exact_match, concurrency=128).run(remote, devset)

The evaluator sends shards of examples (inputs as JSON) to the pool's workers; each worker runs its shard
on ``concurrency / workers`` threads and sends predictions back; metrics run in the caller's process, so
any metric works. Examples run in parallel on every worker: DSPy's per-call CPU, which caps one process,
is spread over the cores.

A traced call (``traced=True``, a DSPy optimizer's program call whose trace it reads: GEPA's reflective
minibatches, SIMBA's trajectories, bootstrapping) also brings back the DSPy trace of each example, by
predictor name, and a parse failure as a structured error (:meth:`PooledProgram.with_trace`). ``lms``
carries the sampling settings of the candidate's LMs: per predictor and for the LM in context, only the
numeric keyword arguments of :data:`SAMPLING_KWARGS` (temperature, rollout id...), which the worker applies
as ``its_own_lm.copy(**settings)``. Never a model, an endpoint, a key or any other string: the worker's LM
is the one its pool gave it (:func:`check_sampling` checks on both sides).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError
from dspex.jsonable import canonical_hash, to_jsonable

if TYPE_CHECKING:
    from dspex.pools.base import WorkerPool

__all__ = ["SAMPLING_KWARGS", "PooledProgram", "check_sampling", "trace_steps"]

# The LM keyword arguments a candidate may set for a worker's LM: numbers that change how it samples,
# nothing that reaches the network or Python (a model, an endpoint, a key, a callback are strings/objects).
SAMPLING_KWARGS = frozenset(
    {"temperature", "rollout_id", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "seed"}
)


def trace_steps(trace: Any, names: dict[int, str]) -> list[dict[str, Any]] | None:
    """A DSPy trace as JSON steps ``{"predictor", "inputs", "outputs"}`` by predictor name (``names``:
    predictor id -> name), the shape a worker sends back and the optimizer's candidate cache stores; None
    when a step's predictor is not one of ``names`` (it could not be replayed)."""
    steps = []
    for predictor, inputs, outputs in trace or ():
        name = names.get(id(predictor))
        if name is None:
            return None
        steps.append({"predictor": name, "inputs": to_jsonable(inputs), "outputs": to_jsonable(outputs)})
    return steps


def check_sampling(settings: Any) -> dict[str, dict[str, Any]]:
    """``{"context": {kwarg: number}, "predictors": {name: {kwarg: number}}}`` checked (both may be
    missing): only :data:`SAMPLING_KWARGS`, only finite numbers. ConfigurationError otherwise."""
    import math

    if settings is None:
        return {}
    if not isinstance(settings, dict) or set(settings) - {"context", "predictors"}:
        raise ConfigurationError("LM settings must be an object with 'context' and 'predictors' only")

    def one(where: str, kwargs: Any) -> dict[str, Any]:
        if not isinstance(kwargs, dict):
            raise ConfigurationError(f"LM settings of {where} must be an object")
        for key, value in kwargs.items():
            if key not in SAMPLING_KWARGS:
                raise ConfigurationError(
                    f"LM setting {key!r} of {where} cannot cross to a worker; allowed: "
                    + ", ".join(sorted(SAMPLING_KWARGS))
                )
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric or not math.isfinite(value):
                raise ConfigurationError(
                    f"LM setting {key!r} of {where} must be a finite number, got {value!r}"
                )
        return dict(kwargs)

    checked: dict[str, Any] = {}
    if "context" in settings:
        checked["context"] = one("the context LM", settings["context"])
    if "predictors" in settings:
        predictors = settings["predictors"]
        if not isinstance(predictors, dict):
            raise ConfigurationError("LM settings' 'predictors' must be an object")
        checked["predictors"] = {str(n): one(f"predictor {n!r}", k) for n, k in predictors.items()}
    return checked


@dataclass(frozen=True)
class PooledProgram:
    """Program ``name`` at ``version_id`` on ``pool`` (see the module docstring)."""

    pool: WorkerPool
    name: str
    version_id: str
    # {"space": a space document, "values": a configuration's JSON}: the worker applies it to its copy
    configuration: dict[str, Any] | None = None
    # a DSPy optimizer's candidate: its ``dump_state()`` JSON without LMs, loaded into the worker's copy
    state: dict[str, Any] | None = None
    traced: bool = False  # each example's DSPy trace comes back, by predictor name
    lms: dict[str, Any] | None = None  # sampling settings of the candidate's LMs (check_sampling)

    @property
    def workers(self) -> int:
        return self.pool.size

    @property
    def fingerprint(self) -> str:
        """The evaluation cache's configuration id: the version is a content hash of the program."""
        configured = f":{canonical_hash(self.configuration)}" if self.configuration is not None else ""
        stated = f":state:{canonical_hash(self.state)}" if self.state is not None else ""
        sampled = f":lms:{canonical_hash(self.lms)}" if self.lms else ""
        return f"pooled:{self.name}@{self.version_id}{configured}{stated}{sampled}"

    def with_lms(self, lms: dict[str, Any] | None) -> PooledProgram:
        """This candidate, its LMs sampling with ``lms`` (:func:`check_sampling`)."""
        from dataclasses import replace

        return replace(self, lms=check_sampling(lms) or None)

    def with_trace(self, lms: dict[str, Any] | None) -> PooledProgram:
        """This candidate, traced, its LMs sampling with ``lms`` (:func:`check_sampling`)."""
        from dataclasses import replace

        return replace(self, traced=True, lms=check_sampling(lms) or None)

    def predict_batch(self, inputs: list[dict[str, Any]], threads: int) -> Future[dict[str, Any]]:
        """Queue a shard; the future's ``["outcome"]["results"]`` has one ``{"prediction"}`` or
        ``{"error"}`` per input, in order (traced: with its ``"trace"``)."""
        task: dict[str, Any] = {
            "kind": "predict_batch",
            "program": {"name": self.name, "version_id": self.version_id},
            "examples": inputs,
            "threads": threads,
            "configuration": self.configuration,
            "state": self.state,
        }
        if self.traced:
            task["trace"] = True
        if self.lms:
            task["lms"] = self.lms
        return self.pool.submit(task)
