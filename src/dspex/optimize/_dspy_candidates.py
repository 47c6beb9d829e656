"""The program a DSPy optimizer sees in a DSPex run (:mod:`dspex.optimize.dspy_run`): the candidate cache
around it, the run's shared state (counters, scores per candidate, the stop check) and its progress, and
the remote evaluations of a run on a pool.

- :class:`CandidateCache`: ``inner`` behind the evaluation cache, keyed by candidate fingerprint and
  inputs, with the predictor trace stored and replayed; a call of an evaluation whose traces nobody
  reads (marked :data:`TRACE_FREE`: GEPA's valset evaluations, COPRO's and the random search's
  scoring) runs on the pool instead, its evaluation's examples sent ahead in shards
  (:meth:`CandidateCache.prefetch`), cached under its own key. On a pool, any other call runs there
  too, traced (:meth:`CandidateCache._traced_call`): the worker's trace is replayed and cached as a
  call here would be, when its LMs are the run's task LM or copies of it differing in sampling settings
  only (:meth:`Tracker.sampling`, :func:`~dspex.optimize._dspy_pool.lm_sampling`).
- :class:`Tracker`: shared (not copied) by every copy DSPy makes of the wrapped program.
- :class:`TrackedEvaluate`: MIPROv2's trial evaluations on a pool, counted into the run's progress.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from dspex.errors import ConfigurationError, ExecutionError
from dspex.jsonable import canonical_hash, to_jsonable
from dspex.optimize._dspy_lm import CallCap, Stop
from dspex.optimize._dspy_pool import admit, lm_sampling
from dspex.optimize._remote_dspy import (
    Prefetch,
    RemoteEvaluate,
    predict_remotely,
    send_one,
    traced_prediction,
    worker_prediction,
)
from dspex.optimize._run import configuration_fingerprint, program_state
from dspex.optimize.cache import CachedResult, EvalCache
from dspex.optimize.metrics import Metric
from dspex.optimize.result import EvaluationResult
from dspex.pools.remote import trace_steps
from dspex.telemetry.usage import UsageTotals

__all__ = [
    "TRACE_FREE",
    "CandidateCache",
    "DSPyProgress",
    "Phase",
    "TrackedEvaluate",
    "Tracker",
    "unwrap",
]

Phase = Literal["compile", "evaluate", "save"]
_REPORT_EVERY_S = 0.25
_CACHE_PREFIX = "dspy:"
_REMOTE_PREFIX = "dspy-remote:"
_PREFETCH = "_dspex_prefetch"  # a Prefetch: the marked evaluation's examples sent ahead
TRACE_FREE = "_dspex_trace_free"  # set by TraceFreeEvaluations on an evaluation's copy of the program


@dataclass(frozen=True, slots=True)
class DSPyProgress:
    """What ``on_progress`` receives (at most every 0.25 s, and at each phase change).

    ``candidates``: distinct candidate programs the metric scored outside bootstrapping; ``evaluations``:
    (candidate, example) scores; ``cached``: program calls served from the evaluation cache;
    ``best_score``: the best mean of a candidate over the most examples any candidate was scored on
    (``best_examples``), so a lucky minibatch does not outrank a full evaluation."""

    optimizer: str
    phase: Phase
    candidates: int
    evaluations: int
    cached: int
    program_calls: int
    lm_calls: int
    best_score: float | None
    best_examples: int

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "phase": self.phase,
            "candidates": self.candidates,
            "evaluations": self.evaluations,
            "cached": self.cached,
            "program_calls": self.program_calls,
            "lm_calls": self.lm_calls,
            "best_score": self.best_score,
            "best_examples": self.best_examples,
        }


def crossing(remote: Callable[[Any], Any], program: Any) -> Any:
    """``remote(program)``; a candidate that cannot cross to the pool (its state is not JSON, its
    predictors are not the version's) ends the run with that error, carried through DSPy by
    :class:`~dspex.optimize._dspy_lm.Stop`: DSPy's evaluations would count it as a failed example, and
    MIPROv2 as a candidate scoring 0."""
    try:
        return remote(program)
    except ConfigurationError as exc:
        raise Stop(exc) from exc


class Tracker:
    """The run's shared state: the cache, counters, scores per candidate, the stop check. Thread-safe;
    shared (not copied) by every copy DSPy makes of the wrapped program."""

    def __init__(
        self,
        optimizer: str,
        cache: EvalCache,
        usage: UsageTotals,
        on_progress: Callable[[DSPyProgress], None] | None,
        should_stop: Callable[[], None] | None,
    ) -> None:
        self.optimizer = optimizer
        self.cache = cache
        self.usage = usage
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.phase: Phase = "compile"
        self._lock = threading.Lock()
        self._scores: dict[str, dict[str, float]] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self.cached = 0
        self.calls = 0
        self._reported = 0.0
        # Program calls on a pool (traced or not): candidate -> remote program.
        self.remote: Callable[[Any], Any] | None = None
        self.cap: CallCap | None = None
        self.concurrency = 1  # the optimizer's threads: each worker runs its share of them at once
        self._remotes: dict[str, Any] = {}
        # The run's task LM: a traced call goes to the pool only when its LMs are this one, or copies of
        # it differing in sampling settings (SAMPLING_KWARGS), which the worker applies to its own LM.
        self.task_lm: Any = None

    def sampling(self, inner: Any) -> dict[str, Any] | None:
        """The LM settings a worker needs to make ``inner``'s call in context as this process would
        (``{"context": {...}, "predictors": {name: {...}}}``), or None when one of its LMs is not the
        run's task LM or a copy of it differing only in sampling settings: that call runs here."""
        task = self.task_lm if self.task_lm is not None else dspy.settings.lm
        context = lm_sampling(dspy.settings.lm, task)
        if context is None:
            return None
        settings: dict[str, Any] = {"context": context} if context else {}
        predictors = {}
        for name, predictor in inner.named_predictors():
            if predictor.lm is None:
                continue
            own = lm_sampling(predictor.lm, task)
            if own is None:
                return None
            predictors[name] = own
        if predictors:
            settings["predictors"] = predictors
        return settings

    def remote_program(self, candidate: str, program: Any) -> Any:
        """The remote program of ``candidate`` (``program``), made once per candidate."""
        assert self.remote is not None
        with self._lock:
            made = self._remotes.get(candidate)
        if made is None:
            made = crossing(self.remote, program)
            with self._lock:
                self._remotes[candidate] = made
        return made

    def __deepcopy__(self, memo: dict[int, Any]) -> Tracker:
        return self

    def check(self) -> None:
        # Only while compiling: the final evaluation is short, and a stop there would cut it silently.
        if self.should_stop is None or self.phase != "compile":
            return
        try:
            self.should_stop()
        except Exception as exc:  # OptimizationStopped (or the caller's own error): end the compile
            raise Stop(exc) from exc

    def called(self, *, cached: bool) -> None:
        with self._lock:
            self.calls += 1
            self.cached += cached
        self.report()

    def remember(self, candidate: str, program: Any) -> None:
        """Keep the saved state of a candidate the first time it is called, so that the best one so far
        can be rebuilt when the run stops at its LM-call cap."""
        with self._lock:
            if candidate in self._states:
                return
        state = program_state(program, describe_lms=False)
        with self._lock:
            self._states.setdefault(candidate, state)

    def best(self) -> tuple[dict[str, Any], float, int] | None:
        """The best candidate so far as progress ranks it (best mean over the most examples any
        candidate was scored on): its saved state, that mean and that number of examples."""
        with self._lock:
            scores = {k: dict(v) for k, v in self._scores.items() if k in self._states}
            states = dict(self._states)
        most = max((len(v) for v in scores.values()), default=0)
        ranked = [(sum(v.values()) / len(v), k) for k, v in scores.items() if len(v) == most and v]
        if not ranked:
            return None
        score, key = max(ranked)
        return states[key], score, most

    def score_of(self, candidate: str) -> tuple[float, int]:
        """A candidate's mean score and the number of examples it was scored on (0: never scored)."""
        with self._lock:
            values = list(self._scores.get(candidate, {}).values())
        return (sum(values) / len(values), len(values)) if values else (0.0, 0)

    def scored(self, candidate: str, example: str, value: float) -> None:
        with self._lock:
            self._scores.setdefault(candidate, {})[example] = value
        self.report()

    def progress(self) -> DSPyProgress:
        with self._lock:
            scores = {k: dict(v) for k, v in self._scores.items()}
            calls, cached = self.calls, self.cached
        most = max((len(v) for v in scores.values()), default=0)
        full = [sum(v.values()) / len(v) for v in scores.values() if len(v) == most and v]
        return DSPyProgress(
            optimizer=self.optimizer,
            phase=self.phase,
            candidates=len(scores),
            evaluations=sum(len(v) for v in scores.values()),
            cached=cached,
            program_calls=calls,
            lm_calls=self.usage.calls,
            best_score=max(full) if full else None,
            best_examples=most,
        )

    def report(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._reported < _REPORT_EVERY_S:
                return
            self._reported = now
        self.on_progress(self.progress())


class CandidateCache(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """The program an optimizer sees: ``inner`` behind the evaluation cache (see the module docstring).
    DSPy's copies of it (``deepcopy``, ``reset_copy``) copy ``inner`` and share the tracker."""

    def __init__(self, inner: Any, tracker: Tracker) -> None:
        super().__init__()
        self.inner = inner
        self._tracker = tracker

    def forward(self, **inputs: Any) -> Any:
        tracker = self._tracker
        tracker.check()
        candidate = configuration_fingerprint(self.inner, dspy.settings.lm)
        tracker.remember(candidate, self.inner)
        if getattr(self, TRACE_FREE, False) and tracker.remote is not None:
            lms = tracker.sampling(self.inner)
            if lms is not None:
                done = self._remote_call(candidate, inputs, lms)
                if done is not None:
                    return done
        key = (_CACHE_PREFIX + candidate, canonical_hash(to_jsonable(inputs)))
        hit = tracker.cache.get_many([key]).get(key)
        if hit is not None and hit.trace is not None:
            replayed = self._replay(hit.trace)
            if replayed is not None:
                return self._replayed(candidate, hit.prediction, replayed, cached=True)
        if tracker.remote is not None:
            remote = self._traced_call(candidate, key, inputs)
            if remote is not None:
                return remote
        with dspy.context(trace=[]):
            prediction = self.inner(**inputs)
            trace = list(dspy.settings.trace)
        outer = dspy.settings.trace
        if outer is not None:
            outer.extend(trace)
        stored = self._trace_json(trace)
        data = to_jsonable(prediction)
        if stored is not None and isinstance(data, dict):
            tracker.cache.put_many({key: CachedResult(data, {}, trace=stored)})
        if isinstance(prediction, dspy.Prediction):
            prediction._dspex_candidate = candidate
        tracker.called(cached=False)
        return prediction

    def _replayed(
        self, candidate: str, data: Mapping[str, Any], trace: list[Any], *, cached: bool
    ) -> dspy.Prediction:
        outer = dspy.settings.trace
        if outer is not None:
            outer.extend(trace)
        prediction = dspy.Prediction(**data)
        prediction._dspex_candidate = candidate
        self._tracker.called(cached=cached)
        return prediction

    def _traced_call(self, candidate: str, key: tuple[str, str], inputs: dict[str, Any]) -> Any:
        """The call on the pool with its trace (a call whose trace may be read: bootstrapping, GEPA's
        reflective minibatches, SIMBA's trajectories): the worker's trace replayed into the trace in
        context and cached under the key of a call here, so either serves the other. None when it must
        run here: one of its LMs is not the run's task LM (or a copy of it differing in sampling
        settings), the candidate's remote program cannot be traced, or the worker's trace names a
        predictor this program does not have."""
        tracker = self._tracker
        lms = tracker.sampling(self.inner)
        if lms is None:
            return None
        ahead = getattr(self, _PREFETCH, None)
        result = None
        if isinstance(ahead, Prefetch) and ahead.traced and ahead.lms == lms:
            result = ahead.take(key[1])
        reserved = 1 if result is not None else 0  # a result sent ahead had its call reserved then
        try:
            if result is None:
                traced = self._with_lms(tracker.remote_program(candidate, self.inner), lms, traced=True)
                if traced is None:
                    return None
                if tracker.cap is not None:
                    reserved = tracker.cap.reserve(1)
                result = send_one(traced, inputs, self._threads(traced))
            predictors = dict(self.inner.named_predictors())
            data, steps = traced_prediction(result, predictors)
        finally:
            if tracker.cap is not None:
                tracker.cap.release(reserved)
        replayed = self._replay(steps) if steps is not None else None
        if replayed is None:
            return None  # its LM calls are counted; the call runs here
        tracker.cache.put_many({key: CachedResult(data, {}, trace=tuple(steps or ()))})
        return self._replayed(candidate, data, replayed, cached=False)

    @staticmethod
    def _with_lms(remote: Any, lms: dict[str, Any], *, traced: bool) -> Any:
        """``remote`` traced and/or with the candidate's LM sampling settings; None when it cannot take
        them (a remote program that is not a pool's)."""
        if not traced and not lms:
            return remote
        if not hasattr(remote, "with_trace"):
            return None
        return crossing(lambda r: r.with_trace(lms) if traced else r.with_lms(lms), remote)

    def _remote_call(self, candidate: str, inputs: dict[str, Any], lms: dict[str, Any]) -> Any:
        """A call no trace is wanted from (see :class:`~dspex.optimize._remote_dspy.TraceFreeEvaluations`),
        on the pool with the candidate's LM settings ``lms``: cached under its own key (it has no trace to
        replay to a call that wants one). None when it must run here."""
        tracker = self._tracker
        key = (_REMOTE_PREFIX + candidate, canonical_hash(to_jsonable(inputs)))
        hit = tracker.cache.get_many([key]).get(key)
        if hit is not None:
            data = dict(hit.prediction)
            tracker.called(cached=True)
        else:
            ahead = getattr(self, _PREFETCH, None)
            result = None
            if isinstance(ahead, Prefetch) and not ahead.traced and ahead.lms == lms:
                result = ahead.take(key[1])
            reserved = 1 if result is not None else 0  # a result sent ahead had its call reserved then
            try:
                if result is not None:
                    data = worker_prediction(result)
                else:
                    remote = self._with_lms(tracker.remote_program(candidate, self.inner), lms, traced=False)
                    if remote is None:
                        return None
                    if tracker.cap is not None:
                        reserved = tracker.cap.reserve(1)
                    data = predict_remotely(remote, inputs, self._threads(remote))
            finally:
                if tracker.cap is not None:
                    tracker.cap.release(reserved)
            tracker.cache.put_many({key: CachedResult(data, {})})
            tracker.called(cached=False)
        prediction = dspy.Prediction(**data)
        prediction._dspex_candidate = candidate
        return prediction

    def _threads(self, remote: Any) -> int:
        """Examples a worker runs at once: the optimizer's threads spread over the workers."""
        return max(1, -(-self._tracker.concurrency // max(1, int(remote.workers))))

    def prefetch(self, devset: Sequence[Any], *, traced: bool = False) -> None:
        """When an evaluation of this copy starts (trace-free, or ``traced``: its calls want traces): its
        examples not in the cache go to the pool at once, in shards
        (:class:`~dspex.optimize._remote_dspy.Prefetch`); the calls then take their results. Under
        ``max_lm_calls``, only as many examples as the calls left (one each, :meth:`CallCap.reserve`);
        the others go one by one, if the cap lets them."""
        tracker = self._tracker
        if tracker.remote is None:
            return
        lms = tracker.sampling(self.inner)
        if lms is None:
            return  # its calls run here
        candidate = configuration_fingerprint(self.inner, dspy.settings.lm)
        prefix = _CACHE_PREFIX if traced else _REMOTE_PREFIX
        inputs = {}
        for example in devset:
            values = dict(example.inputs().toDict())
            inputs[canonical_hash(to_jsonable(values))] = values
        keys = [(prefix + candidate, digest) for digest in inputs]
        hits = tracker.cache.get_many(keys)
        missing = {
            digest: values for digest, values in inputs.items() if (prefix + candidate, digest) not in hits
        }
        if not missing:
            return
        remote = self._with_lms(tracker.remote_program(candidate, self.inner), lms, traced=traced)
        if remote is None:
            return
        lost = None
        if tracker.cap is not None:
            try:
                granted = tracker.cap.reserve(len(missing))
            except Stop:
                return  # the evaluation's calls stop the run, one by one
            missing = dict(list(missing.items())[:granted])
            lost = tracker.cap.release
        ahead = Prefetch.send(remote, missing, self._threads(remote), traced=traced, lost=lost)
        ahead.lms = lms
        setattr(self, _PREFETCH, ahead)

    def settle(self) -> None:
        """When the evaluation ends: the results its calls did not take (it stopped early) are counted
        (their LM calls) and cached; then the copy forgets them."""
        ahead = getattr(self, _PREFETCH, None)
        if not isinstance(ahead, Prefetch):
            return
        setattr(self, _PREFETCH, None)
        tracker = self._tracker
        candidate = configuration_fingerprint(self.inner, dspy.settings.lm)
        predictors = dict(self.inner.named_predictors())
        left = ahead.settle()
        try:
            for digest, result in left:
                try:
                    if not ahead.traced:
                        data = worker_prediction(result)
                        tracker.cache.put_many({(_REMOTE_PREFIX + candidate, digest): CachedResult(data, {})})
                        continue
                    data, steps = traced_prediction(result, predictors)
                except (ExecutionError, AdapterParseError):  # its LM calls are counted; not cached
                    continue
                if steps is not None and self._replay(steps) is not None:
                    key = (_CACHE_PREFIX + candidate, digest)
                    tracker.cache.put_many({key: CachedResult(data, {}, trace=tuple(steps))})
        finally:
            if tracker.cap is not None:
                tracker.cap.release(len(left))

    def _trace_json(self, trace: Sequence[Any]) -> tuple[dict[str, Any], ...] | None:
        """The trace as JSON, by predictor name; None when a step's predictor is not one of ``inner``'s
        (it could not be replayed, so the call is not cached)."""
        steps = trace_steps(trace, {id(p): n for n, p in self.inner.named_predictors()})
        return None if steps is None else tuple(steps)

    def _replay(self, trace: Sequence[Mapping[str, Any]]) -> list[tuple[Any, dict[str, Any], Any]] | None:
        predictors = dict(self.inner.named_predictors())
        steps = []
        for step in trace:
            predictor = predictors.get(step["predictor"])
            if predictor is None:
                return None
            steps.append((predictor, dict(step["inputs"]), dspy.Prediction(**step["outputs"])))
        return steps


class TrackedEvaluate(RemoteEvaluate):
    """The trial evaluations of an optimizer run whose candidates are evaluated remotely (``remote=``):
    a :class:`~dspex.optimize._remote_dspy.RemoteEvaluate` given the candidate inside its
    :class:`CandidateCache`, which counts what it evaluated into the run's progress as the wrapped
    program does, checks the stop before each evaluation, and sends only as many examples as the
    LM-call cap has calls left (:func:`~dspex.optimize._dspy_pool.admit`: a remote worker's calls
    cannot be stopped one by one)."""

    def __init__(
        self,
        local: Any,
        *,
        remote: Callable[[Any], Any],
        tracker: Tracker,
        scorer: Metric,
        cap: CallCap | None,
    ) -> None:
        super().__init__(
            remote=remote,
            devset=local.devset,
            metric=scorer,
            num_threads=local.num_threads,
            max_errors=local.max_errors,
            failure_score=local.failure_score,
            provide_traceback=local.provide_traceback,
            cache=tracker.cache,
        )
        self.tracker = tracker
        self.cap = cap

    def _remote_program(self, program: Any) -> Any:
        inner = program.inner if isinstance(program, CandidateCache) else program
        self.tracker.check()
        self.tracker.remember(configuration_fingerprint(inner, dspy.settings.lm), inner)
        return crossing(self.remote, inner)

    def _admit(self, remote: Any, devset: list[Any]) -> tuple[list[Any], Callable[[bool], None]]:
        """Under ``max_lm_calls``: the examples not in the cache reserve one LM call each
        (:meth:`~dspex.optimize._dspy_lm.CallCap.reserve`); when fewer are left, only that many go (with
        the cached ones), and the run stops once they are counted, as a run in process stops at the
        call past its cap."""
        return admit(self.cap, self.cache, remote, devset)

    def _evaluated(self, program: Any, result: EvaluationResult) -> None:
        inner = program.inner if isinstance(program, CandidateCache) else program
        candidate = configuration_fingerprint(inner, dspy.settings.lm)
        for record in result.records:
            self.tracker.called(cached=record.cached)
            if record.error is None:
                self.tracker.scored(candidate, record.example_hash, record.score)
        if self.cap is not None:
            self.cap.save()


def unwrap(program: Any) -> Any:
    if isinstance(program, CandidateCache):
        return program.inner
    raise ConfigurationError(
        f"the optimizer returned a {type(program).__name__}, not the program it was given; "
        "this optimizer cannot run as a DSPex job"
    )
