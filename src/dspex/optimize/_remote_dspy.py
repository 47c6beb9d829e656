"""DSPy's candidate evaluations elsewhere: ``dspy.Evaluate`` whose program calls run on workers.

::

    evaluate = RemoteEvaluate(remote=lambda candidate: app.pooled(...), devset=valset, metric=metric)
    optimizer = RemoteMIPROv2(metric, evaluate_with=lambda local: RemoteEvaluate(...), auto="light")

:class:`RemoteEvaluate` returns what ``dspy.Evaluate`` returns (``score`` is ``round(100 * sum / n, 2)``
over the metric's values, a failed example counts ``failure_score``, ``max_errors`` failures stop it),
but it sends the candidate to ``remote`` (a function giving the candidate as a
:class:`~dspex.optimize.evaluate.RemoteProgram`: a registered version on a pool with the candidate's
state) and runs the examples there in shards through :class:`~dspex.optimize.Evaluator`; the metric runs
here. Traces do not come back: it is for evaluations that only need each example's prediction (MIPROv2's
minibatch and full evaluations); the calls whose traces are read (bootstrapping, GEPA's reflective
minibatches, SIMBA's trajectories) go one by one, or in shards sent ahead, through the DSPex run's
program wrapper (:func:`send_one`, :class:`Prefetch` with ``traced``, :func:`traced_prediction`).
:class:`RemoteMIPROv2` is ``dspy.MIPROv2`` with the ``dspy.Evaluate`` that ``compile`` builds for its
trials swapped for the one ``evaluate_with`` makes. The pooled versions bound to a worker pool are :mod:`dspex.distributed.prompts`; the DSPex run of an optimizer uses these from
:func:`~dspex.optimize.dspy_run.optimize_with_dspy` (``remote=``).

Optimizers that build their ``dspy.Evaluate`` where nothing can swap it (GEPA's ``DspyAdapter``, COPRO,
BootstrapFewShotWithRandomSearch) are reached through DSPy's callbacks instead:
:class:`TraceFreeEvaluations` marks the program of each evaluation whose traces nobody reads, and the
DSPex run's program wrapper sends the evaluation's examples to the pool in shards when it starts
(:class:`Prefetch`) and each call of the marked program takes its example's result (or, not sent ahead,
goes alone with :func:`predict_remotely`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import dspy
from dspy.evaluate.evaluate import EvaluationResult
from dspy.utils.callback import BaseCallback, with_callbacks

from dspex.errors import ConfigurationError
from dspex.optimize.cache import EvalCache
from dspex.optimize.evaluate import Evaluator, RemoteProgram
from dspex.optimize.result import EvaluationResult as DSPexEvaluation

__all__ = [
    "Prefetch",
    "RemoteEvaluate",
    "RemoteMIPROv2",
    "TraceFreeEvaluations",
    "predict_remotely",
    "send_one",
    "traced_prediction",
    "worker_prediction",
]


class RemoteEvaluate(dspy.Evaluate):  # type: ignore[misc]  # dspy is untyped
    """``dspy.Evaluate`` whose program calls run where ``remote(program)`` says (see the module
    docstring). Subclasses may override :meth:`_remote_program` (what is sent) and :meth:`_evaluated`
    (what the caller learns from each evaluation)."""

    def __init__(
        self,
        *,
        remote: Callable[[Any], RemoteProgram],
        devset: Sequence[Any],
        metric: Any,
        num_threads: int | None = None,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        provide_traceback: bool | None = None,
        cache: bool | EvalCache = True,
    ) -> None:
        super().__init__(
            devset=list(devset),
            metric=metric,
            num_threads=num_threads,
            display_progress=False,
            display_table=False,
            max_errors=max_errors,
            failure_score=failure_score,
            provide_traceback=provide_traceback,
        )
        self.remote = remote
        self.cache = cache

    def _remote_program(self, program: Any) -> RemoteProgram:
        return self.remote(program)

    def _evaluated(self, program: Any, result: DSPexEvaluation) -> None:
        """Called with each finished evaluation (its records: cached or not, score, error)."""

    def _admit(self, remote: RemoteProgram, devset: list[Any]) -> tuple[list[Any], Callable[[bool], None]]:
        """The examples to send (all of them; a subclass under a budget may send fewer) and what to call
        once the evaluation ended (with whether it finished)."""
        return devset, lambda finished: None

    @with_callbacks  # type: ignore[untyped-decorator]  # dspy's callbacks decorator is untyped
    def __call__(
        self,
        program: Any,
        metric: Any = None,
        devset: list[Any] | None = None,
        num_threads: int | None = None,
        display_progress: bool | None = None,
        display_table: bool | int | None = None,
        callback_metadata: dict[str, Any] | None = None,
        save_as_csv: str | None = None,
        save_as_json: str | None = None,
    ) -> EvaluationResult:
        if display_table or save_as_csv or save_as_json:
            raise ConfigurationError(
                "a pooled evaluation returns its results; it does not draw tables or write files "
                "(display_table, save_as_csv, save_as_json)"
            )
        metric = metric if metric is not None else self.metric
        devset = list(devset if devset is not None else self.devset)
        if not devset:
            raise ValueError("devset must contain at least one example, got an empty devset.")
        threads = num_threads or self.num_threads or dspy.settings.num_threads or 1
        max_errors = self.max_errors if self.max_errors is not None else dspy.settings.max_errors
        remote = self._remote_program(program)
        devset, done = self._admit(remote, devset)
        # dspy stops once failures reach max_errors; the Evaluator once they pass it.
        evaluator = Evaluator(
            metric,
            concurrency=max(1, int(threads)),
            cache=self.cache,
            max_errors=None if max_errors is None else max(0, int(max_errors) - 1),
            failure_score=float(self.failure_score),
        )
        finished = False
        try:
            result = evaluator.run(remote, devset)
            self._evaluated(program, result)
            finished = True
        finally:
            done(finished)
        by_index = {r.index: r for r in result.records}
        results = []
        for index, example in enumerate(devset):
            record = by_index[index]
            prediction = (
                dspy.Prediction(**record.prediction) if record.prediction is not None else dspy.Prediction()
            )
            results.append((example, prediction, record.score))
        ncorrect = sum(score for *_, score in results)
        return EvaluationResult(score=round(100 * ncorrect / len(devset), 2), results=results)


class RemoteMIPROv2(dspy.MIPROv2):  # type: ignore[misc]  # dspy is untyped
    """``dspy.MIPROv2`` whose trial evaluations are ``evaluate_with(evaluate)``, given the
    ``dspy.Evaluate`` that ``compile`` built (its devset, metric, threads and error settings). Every
    other argument is MIPROv2's own."""

    def __init__(
        self, metric: Any, *, evaluate_with: Callable[[dspy.Evaluate], dspy.Evaluate], **options: Any
    ) -> None:
        super().__init__(metric, **options)
        self.evaluate_with = evaluate_with

    def _optimize_prompt_parameters(
        self,
        program: Any,
        instruction_candidates: dict[int, list[str]],
        demo_candidates: list[Any] | None,
        evaluate: dspy.Evaluate,
        valset: list[Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        return super()._optimize_prompt_parameters(
            program,
            instruction_candidates,
            demo_candidates,
            self.evaluate_with(evaluate),
            valset,
            *args,
            **kwargs,
        )


def predict_remotely(remote: RemoteProgram, inputs: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """One program call on ``remote`` (a one-example shard; ``threads``: how many such calls a worker runs
    at once, for the caller's concurrency spread over the workers): the prediction as JSON, the worker's LM calls
    replayed into the usage tracker in context (so a run's LM calls and its cap count them). A failed
    call raises :class:`~dspex.errors.ExecutionError` with the worker's error, as a local failure would
    raise; a shard whose worker died is sent once more (predicting has no side effects to repeat)."""
    return worker_prediction(send_one(remote, inputs, threads))


def send_one(remote: RemoteProgram, inputs: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """One program call on ``remote`` (a one-example shard): the worker's result as it sent it. A shard
    whose worker died is sent once more (predicting has no side effects to repeat)."""
    from dspex.errors import WorkerError
    from dspex.jsonable import to_jsonable

    payload = [to_jsonable(inputs)]
    try:
        outcome = remote.predict_batch(payload, threads).result()
    except WorkerError:
        outcome = remote.predict_batch(payload, threads).result()
    result: dict[str, Any] = outcome["outcome"]["results"][0]
    return result


def traced_prediction(
    result: dict[str, Any], predictors: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """A traced example's result from a worker (see :func:`worker_prediction`): its prediction and its
    trace as JSON steps by predictor name (None: a step's predictor was not one of the program's). A
    parse failure is raised as DSPy's ``AdapterParseError`` with the signature of the failing predictor
    of ``predictors`` (name -> this process's predictor), as the call in process would raise it, so that
    GEPA's ``bootstrap_trace_data`` records the same ``FailedPrediction``."""
    from dspy.utils.exceptions import AdapterParseError

    parse = result.get("error", {}).get("parse")
    if isinstance(parse, dict) and parse.get("predictor") in predictors:
        _count_usage(result)
        raise AdapterParseError(
            adapter_name=str(parse.get("adapter")),
            signature=predictors[parse["predictor"]].signature,
            lm_response=parse.get("lm_response"),
            parsed_result=parse.get("parsed_result"),
        )
    prediction = worker_prediction(result)
    steps = result.get("trace")
    return prediction, (list(steps) if isinstance(steps, list) else None)


def worker_prediction(result: dict[str, Any]) -> dict[str, Any]:
    """One example's result from a worker's shard: its LM calls replayed into the usage tracker in
    context, then its prediction as JSON, or its error raised as :class:`~dspex.errors.ExecutionError`."""
    from dspex.errors import ExecutionError

    _count_usage(result)
    if "error" in result:
        error = result["error"]
        raise ExecutionError(f"{error['type']}: {error['message']}")
    prediction: dict[str, Any] = dict(result["prediction"])
    return prediction


def _count_usage(result: dict[str, Any]) -> None:
    """An example's LM calls on a worker, replayed into the usage tracker in context."""
    tracker = dspy.settings.usage_tracker
    if tracker is not None:
        for lm, usage in result.get("usage", ()):
            tracker.add_usage(lm, usage)


class Prefetch:
    """A marked evaluation's examples sent to the pool ahead, in shards (as an
    :class:`~dspex.optimize.Evaluator` sends them), when the evaluation starts: each program call then
    :meth:`take` s its example's result instead of sending a task of its own. What no call took (the
    evaluation stopped early) is :meth:`settle` d when it ends, so that its LM calls are counted."""

    def __init__(
        self,
        slots: dict[str, tuple[Future[Any], int]],
        *,
        traced: bool = False,
        lost: Callable[[int], None] | None = None,
    ) -> None:
        self._slots = slots  # input digest -> (its shard's future, its index in the shard)
        self._taken: set[str] = set()
        self._lock = threading.Lock()
        self.traced = traced  # the results carry traces (a traced evaluation's calls take them)
        self.lms: dict[str, Any] | None = None  # traced: the LM settings they were made with
        self._lost = lost  # told of results a dead worker lost (the LM-call cap releases them)

    @classmethod
    def send(
        cls,
        remote: RemoteProgram,
        inputs: dict[str, dict[str, Any]],
        threads: int,
        *,
        traced: bool = False,
        lost: Callable[[int], None] | None = None,
    ) -> Prefetch:
        """``inputs`` (digest -> an example's inputs) in about two shards per worker."""
        from dspex.jsonable import to_jsonable

        digests = list(inputs)
        size = max(threads, -(-len(digests) // (max(1, int(remote.workers)) * 2)))
        slots: dict[str, tuple[Future[Any], int]] = {}
        for start in range(0, len(digests), size):
            shard = digests[start : start + size]
            future = remote.predict_batch([to_jsonable(inputs[d]) for d in shard], threads)
            slots.update({digest: (future, index) for index, digest in enumerate(shard)})
        return cls(slots, traced=traced, lost=lost)

    def take(self, digest: str) -> dict[str, Any] | None:
        """The worker's result for the example (waiting for its shard), once; None when it was not sent
        ahead, was taken already, or its worker died (the caller then sends it alone)."""
        from dspex.errors import WorkerError

        with self._lock:
            if digest not in self._slots or digest in self._taken:
                return None
            self._taken.add(digest)
            future, index = self._slots[digest]
        try:
            result: dict[str, Any] = future.result()["outcome"]["results"][index]
        except WorkerError:
            if self._lost is not None:
                self._lost(1)
            return None
        return result

    def settle(self) -> list[tuple[str, dict[str, Any]]]:
        """Wait for every shard; the results no call took, by digest."""
        from dspex.errors import WorkerError

        with self._lock:
            left = [(d, slot) for d, slot in self._slots.items() if d not in self._taken]
            self._taken.update(d for d, _ in left)
        results = []
        for digest, (future, index) in left:
            try:
                results.append((digest, future.result()["outcome"]["results"][index]))
            except WorkerError:  # a lost shard made no call anyone can count
                if self._lost is not None:
                    self._lost(1)
                continue
        return results


class TraceFreeEvaluations(BaseCallback):  # type: ignore[misc]  # dspy's BaseCallback is untyped
    """A DSPy callback that marks the program of each ``dspy.Evaluate`` call whose traces nobody reads, so
    that its program calls may run remotely (``mark`` set to True on the program, an instance of
    ``kind``, from the evaluation's start to its end). Two kinds of evaluation are marked:

    - a plain one: ``dspy.Evaluate`` with ``metric`` as its own metric, called without a metric of the
      call's own and on a program whose ``forward`` is its class's. That is how COPRO scores its
      candidates, BootstrapFewShotWithRandomSearch (and so ``ensemble``) its candidate programs, and
      GEPA's ``DspyAdapter.evaluate(..., capture_traces=False)`` the seed candidate on the valset and
      merge subsamples. An evaluation that collects traces goes through ``bootstrap_trace_data``
      instead, which passes a metric of its own and patches the program's ``forward``.
    - for GEPA, one whose every example is in ``trace_free`` (the valset's examples that are not in the
      trainset, by :func:`~dspex.optimize.cache.example_hash`; empty for the other optimizers). GEPA
      reads the traces of its trainset minibatches for its reflective dataset; its valset evaluations of
      new candidates also go through ``bootstrap_trace_data`` but keep only outputs and scores, so their
      traces come back empty.

    Any other evaluation of a ``kind`` program (GEPA's trainset minibatches, through
    ``bootstrap_trace_data``) is given to ``on_traced``: its calls want their traces, and may take them
    from examples sent ahead with ``"trace": true``.
    """

    def __init__(
        self,
        metric: Any,
        kind: type,
        mark: str,
        trace_free: frozenset[str],
        *,
        on_mark: Callable[[Any, list[Any]], None] | None = None,
        on_unmark: Callable[[Any], None] | None = None,
        on_traced: Callable[[Any, list[Any]], None] | None = None,
    ) -> None:
        self.metric = metric
        self.kind = kind
        self.mark = mark
        self.trace_free = trace_free
        self.on_mark = on_mark  # (program, devset) once marked: send the examples ahead
        self.on_unmark = on_unmark  # (program) when its evaluation ends (marked or traced)
        self.on_traced = on_traced  # (program, devset) for an evaluation not marked: its traces are read
        self._marked: dict[str, Any] = {}  # call id -> the program marked for that evaluation
        self._traced: dict[str, Any] = {}  # call id -> the program of an evaluation whose traces are read
        self._lock = threading.Lock()

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        from dspex.optimize.cache import example_hash

        program = inputs.get("program")
        if not isinstance(program, self.kind):
            return
        plain = (
            inputs.get("metric") is None
            and getattr(instance, "metric", None) is self.metric
            and "forward" not in vars(program)
        )
        devset = inputs.get("devset") or getattr(instance, "devset", None) or []
        if plain or (devset and all(example_hash(e) in self.trace_free for e in devset)):
            setattr(program, self.mark, True)
            with self._lock:
                self._marked[call_id] = program
            if self.on_mark is not None:
                self.on_mark(program, list(devset))
        elif self.on_traced is not None and devset:
            with self._lock:
                self._traced[call_id] = program
            self.on_traced(program, list(devset))

    def on_evaluate_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            program = self._marked.pop(call_id, None)
            traced = self._traced.pop(call_id, None)
        if program is not None:  # a copy the optimizer keeps (its best candidate) must not stay marked
            setattr(program, self.mark, False)
            if self.on_unmark is not None:
                self.on_unmark(program)
        if traced is not None and self.on_unmark is not None:
            self.on_unmark(traced)
