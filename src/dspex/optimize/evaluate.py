"""The evaluation engine: a program over a dataset, concurrently, with metrics, a cache and early stop.

::

    evaluator = Evaluator([exact_match, f1], concurrency=32, early_stop=EarlyStop(stop_if_cannot_reach=0.6))
    result = await evaluator.arun(dspy.ChainOfThought("question -> answer"), devset, lm=lm)
    result.score, result.scores, result.records[0].to_json()
    evaluator.run(program, devset)                      # the same from synchronous code

How it runs (``execution=``): ``"async"``: ``concurrency`` tasks on the event loop pull examples in
order and await the program's native ``acall`` (Predict, ChainOfThought, ReAct...); ``"threads"``: a
pool of ``concurrency`` threads owned by this run, each evaluating examples end to end; ``"auto"``
(default): threads up to 64 in flight (DSPy's sync path is cheaper, see ``benchmarks/evaluation.py``),
the loop above that for programs with native async. (DSPy's ``asyncify`` would do, but its thread
limit is one process-wide limiter resized from ``dspy.settings.async_max_workers`` on every call, so
two evaluations running side by side, as in an optimizer, would resize each other's limit.) Each
thread gets a copy of the caller's context, so ``dspy.context(...)`` settings reach the program.
``lm=`` applies through ``dspy.context(lm=...)`` for the run only; ``dspy.configure`` is never called.

Per example: the program's prediction, every metric's score, the time taken, or the error. A failed
example scores ``failure_score`` (0.0) like in ``dspy.Evaluate``; beyond ``max_errors`` failures the
evaluation stops with :class:`EvaluationAborted`. Progress goes to an optional callback
``progress(done, total, mean_score)``; the CLI renders it (rich stays out of this package).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import dspy

from dspex.errors import ConfigurationError, ExecutionError, WorkerError
from dspex.jsonable import to_jsonable
from dspex.modules._introspect import has_native_async
from dspex.optimize._run import (
    Metrics,
    ProgressCallback,
    RunState,
    configuration_fingerprint,
    error_info,
    resolve_metrics,
)
from dspex.optimize.cache import CachedResult, CacheKey, EvalCache, MemoryCache, example_hash
from dspex.optimize.metrics import Score
from dspex.optimize.result import EarlyStop, EvaluationAborted, EvaluationResult, ExampleRecord
from dspex.pipeline._sync import run_coroutine
from dspex.telemetry.usage import UsageTotals
from dspex.variables.binding import FALLBACKS_ATTRIBUTE

__all__ = ["Evaluator", "Execution", "ProgressCallback", "RemoteProgram", "configuration_fingerprint"]

Execution = Literal["auto", "async", "threads"]


@runtime_checkable
class RemoteProgram(Protocol):
    """A program that runs elsewhere, examples in shards (``App.pooled``: a worker pool's program)."""

    @property
    def fingerprint(self) -> str: ...  # the cache's configuration id

    @property
    def workers(self) -> int: ...  # how many shards run at once

    def predict_batch(self, inputs: list[dict[str, Any]], threads: int) -> concurrent.futures.Future[Any]: ...


ASYNC_ABOVE = 64  # "auto" awaits native-async programs on the loop above this concurrency (see _threaded)
# (the example's record, the exception when it failed, a new cache entry or None)
_Outcome = tuple[ExampleRecord, BaseException | None, CachedResult | None]


class _Memo(Sequence[Any]):
    """``value(i)`` for ``i`` in ``range(size)``, each made when first read and kept (two threads reading
    one at once may both make it: the same value)."""

    __slots__ = ("_made", "_value")

    def __init__(self, size: int, value: Callable[[int], Any]) -> None:
        self._made: list[Any] = [_UNMADE] * size
        self._value = value

    def __len__(self) -> int:
        return len(self._made)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        made = self._made[index]
        if made is _UNMADE:
            made = self._made[index] = self._value(index)
        return made


_UNMADE: Any = object()


class Evaluator:
    """Evaluates programs over datasets. Reusable: one evaluator, many programs and configurations.

    - ``metric``: a metric, a list of them, or a dict name -> metric (see :mod:`dspex.optimize.metrics`;
      any DSPy-style ``(example, prediction[, trace])`` callable works); ``primary`` names the one
      ``result.score`` is the mean of (default: the first).
    - ``concurrency``: examples in flight at once.
    - ``cache``: True for an in-memory LRU shared by this evaluator's runs, False for none, or any
      :class:`~dspex.optimize.cache.EvalCache`.
    - ``progress``: ``callback(done, total, mean_score)`` after each example.
    - ``early_stop``: an :class:`EarlyStop`; in-flight examples are cancelled when it fires.
    - ``max_errors``: failures tolerated before :class:`EvaluationAborted` (None: no limit).
    - ``execution``: ``"auto"``, ``"async"`` or ``"threads"`` (see the module docstring). With threads
      the progress callback is called from the worker thread that finished the example.

    >>> evaluator = Evaluator(exact_match, concurrency=16)
    >>> result = evaluator.run(dspy.Predict("question -> answer"), devset, lm=lm)
    >>> print(result.score, result.to_json(records=False))
    """

    def __init__(
        self,
        metric: Metrics,
        *,
        primary: str | None = None,
        concurrency: int = 16,
        cache: bool | EvalCache = True,
        progress: ProgressCallback | None = None,
        early_stop: EarlyStop | None = None,
        max_errors: int | None = 10,
        failure_score: float = 0.0,
        execution: Execution = "auto",
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if max_errors is not None and max_errors < 0:
            raise ConfigurationError(f"max_errors must be >= 0 or None, got {max_errors}")
        self.metrics, self.primary = resolve_metrics(metric, primary)
        self.concurrency = concurrency
        if cache is True:
            self.cache: EvalCache | None = MemoryCache()
        elif cache is False:
            self.cache = None
        elif isinstance(cache, EvalCache):
            self.cache = cache
        else:
            raise ConfigurationError(f"cache must be True, False or an EvalCache, got {cache!r}")
        self.progress = progress
        self.early_stop = early_stop
        self.max_errors = max_errors
        self.failure_score = failure_score
        if execution not in ("auto", "async", "threads"):
            raise ConfigurationError(f"execution must be 'auto', 'async' or 'threads', got {execution!r}")
        self.execution = execution

    # -- public API --------------------------------------------------------------------------------
    def run(
        self, program: Any, examples: Sequence[Any], *, configuration_id: str | None = None, lm: Any = None
    ) -> EvaluationResult:
        """Synchronous :meth:`arun` (on a fresh event loop; from async code, await :meth:`arun`)."""
        return run_coroutine(self.arun(program, examples, configuration_id=configuration_id, lm=lm))

    async def arun(
        self, program: Any, examples: Sequence[Any], *, configuration_id: str | None = None, lm: Any = None
    ) -> EvaluationResult:
        """Evaluate ``program`` on ``examples`` (``dspy.Example`` with inputs set).

        ``configuration_id`` keys the cache; without one it is :func:`configuration_fingerprint`.
        ``lm`` is the LM for this run (else the one in DSPy's context).
        """
        examples = list(examples)
        if not examples:
            raise ConfigurationError("no examples to evaluate; pass at least one dspy.Example")
        # Each example checked and its inputs made JSON once: its hash, a pool's shard and its record use them.
        inputs = [self._inputs(i, example) for i, example in enumerate(examples)]
        started = time.perf_counter()
        pooled = isinstance(program, RemoteProgram)
        hashes: Sequence[str]
        keys: Sequence[CacheKey]
        hits: Mapping[CacheKey, CachedResult]
        if self.cache is None:
            # Nothing to look up: an example's hash is needed when its outcome is recorded, so it is made
            # then, and a pool's shards go out before 1,000 examples are hashed (~12 ms) instead of after.
            hashes = _Memo(len(examples), lambda i: example_hash(examples[i], inputs[i]))
            keys = _Memo(len(examples), lambda i: ("", hashes[i]))
            hits = {}
        else:
            hashes = [example_hash(example, inputs[i]) for i, example in enumerate(examples)]
            if configuration_id is None:
                configuration_id = program.fingerprint if pooled else configuration_fingerprint(program, lm)
            keys = [(configuration_id, h) for h in hashes]
            hits = await self._cache_get(keys)
        run = RunState(len(examples), self.primary, self.early_stop, self.max_errors, self.progress)
        usage = UsageTotals(parent=dspy.settings.usage_tracker)
        overrides: dict[str, Any] = {"usage_tracker": usage}
        if lm is not None:
            chain = getattr(program, FALLBACKS_ATTRIBUTE, None)  # a fallbacks variable's value
            resilience = getattr(lm, "_resilience", None)
            if chain is not None and resilience is not None:
                lm = resilience.wrap(lm, fallbacks=chain)
            overrides["lm"] = lm
        pool = self._pool() if not pooled and self._threaded(program) else None
        fresh: dict[CacheKey, CachedResult] = {}
        try:
            with dspy.context(**overrides):
                await self._schedule(program, examples, inputs, hashes, keys, hits, run, pool, fresh)
        finally:
            if pool is not None:
                # Threads stuck in a cancelled call finish on their own; nobody waits for them.
                pool.shutdown(wait=False, cancel_futures=True)
            if fresh:  # finished work is kept even when the run stops early or aborts
                await self._cache_put(fresh)
        if run.aborted:
            raise self._aborted(run) from run.first_error
        return self._result(run, configuration_id, usage, time.perf_counter() - started)

    # -- internals ---------------------------------------------------------------------------------
    def _inputs(self, index: int, example: Any) -> dict[str, Any]:
        """The example's inputs as JSON; ConfigurationError for what is not a dspy.Example with its inputs
        set."""
        if not hasattr(example, "inputs"):
            raise ConfigurationError(
                f"example {index} is a {type(example).__name__}, not a dspy.Example; "
                "build it with dspy.Example(...).with_inputs(...)"
            )
        try:
            made: dict[str, Any] = to_jsonable(example.inputs().toDict())
            return made
        except ValueError as exc:  # DSPy: "Inputs have not been set for this example"
            raise ConfigurationError(
                f"example {index} has no input fields; call .with_inputs('question', ...) on it ({exc})"
            ) from exc

    def _threaded(self, program: Any) -> bool:
        if self.execution == "threads":
            return True
        if self.execution == "async" and not has_native_async(program):
            raise ConfigurationError(
                f"execution='async' needs a program with native async (aforward); "
                f"{type(program).__name__} has none; use execution='auto' or 'threads'"
            )
        if self.execution == "async":
            return False
        # auto: DSPy 3.4's async call path costs about twice the CPU of its sync path (0.78 vs 0.35 ms
        # per Predict call), so up to ASYNC_ABOVE examples in flight threads are as fast as dspy.Evaluate
        # and the loop is not; beyond that, GIL contention between threads loses to one event loop.
        return self.concurrency <= ASYNC_ABOVE or not has_native_async(program)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="dspex-eval")

    async def _cache_get(self, keys: list[CacheKey]) -> Mapping[CacheKey, CachedResult]:
        if self.cache is None:
            return {}
        if isinstance(self.cache, MemoryCache):
            return self.cache.get_many(keys)
        return await asyncio.to_thread(self.cache.get_many, keys)  # a database must not block the loop

    async def _cache_put(self, entries: dict[CacheKey, CachedResult]) -> None:
        if self.cache is None:
            return
        if isinstance(self.cache, MemoryCache):
            self.cache.put_many(entries)
        else:
            await asyncio.to_thread(self.cache.put_many, entries)

    async def _schedule(
        self,
        program: Any,
        examples: list[Any],
        inputs: Sequence[dict[str, Any]],
        hashes: Sequence[str],
        keys: Sequence[CacheKey],
        hits: Mapping[CacheKey, CachedResult],
        run: RunState,
        pool: concurrent.futures.ThreadPoolExecutor | None,
        fresh: dict[CacheKey, CachedResult],
    ) -> None:
        def deliver(index: int, outcome: _Outcome) -> None:
            record, exc, entry = outcome
            if entry is not None:
                fresh[keys[index]] = entry
            run.add(record, exc)

        # Cached examples first, on the loop: they touch no program and finish at once.
        for index in range(len(examples)) if hits else ():
            hit = hits.get(keys[index])
            if hit is not None and not run.finished:
                deliver(index, await self._hit(index, examples[index], hashes[index], hit))
        misses = [i for i in range(len(examples)) if not hits or keys[i] not in hits]
        if run.finished or not misses:
            return
        if isinstance(program, RemoteProgram):
            await self._schedule_pool(program, examples, inputs, hashes, misses, run, deliver)
        elif pool is None:
            await self._schedule_tasks(program, examples, hashes, misses, run, deliver)
        else:
            await self._schedule_threads(program, examples, hashes, misses, run, pool, deliver)

    async def _schedule_tasks(
        self,
        program: Any,
        examples: list[Any],
        hashes: Sequence[str],
        misses: list[int],
        run: RunState,
        deliver: Callable[[int, _Outcome], None],
    ) -> None:
        """Native async: ``concurrency`` tasks on this loop pull examples in order and await the program."""
        order: Iterator[int] = iter(misses)
        workers: list[asyncio.Task[None]] = []

        async def worker() -> None:
            for index in order:  # one shared iterator: examples start in dataset order
                deliver(index, await self._fresh_async(program, index, examples[index], hashes[index]))
                if run.finished:
                    current = asyncio.current_task()
                    for task in workers:  # cancel the examples still in flight
                        if task is not current:
                            task.cancel()
                    return

        workers.extend(asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(misses))))
        try:
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            for task in workers:  # arun itself was cancelled: take the workers down with it
                task.cancel()
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome  # a bug (a progress callback that raised), not an example's failure

    async def _schedule_threads(
        self,
        program: Any,
        examples: list[Any],
        hashes: Sequence[str],
        misses: list[int],
        run: RunState,
        pool: concurrent.futures.ThreadPoolExecutor,
        deliver: Callable[[int, _Outcome], None],
    ) -> None:
        """Threads: each pool thread evaluates examples end to end (program, metrics, bookkeeping) and
        takes the next one; the loop only hears when the threads are done. Waking the loop for every
        example made it compete for the GIL with the threads (5% slower than ``dspy.Evaluate`` at 32
        threads); so here the progress callback runs in the worker thread that finished the example.
        """
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        stop = threading.Event()
        order: Iterator[int] = iter(misses)
        lock = threading.Lock()  # guards the order iterator and the run state
        active = [min(self.concurrency, len(misses))]
        failure: list[BaseException] = []

        def on_exit() -> None:  # on the loop
            active[0] -= 1
            if active[0] == 0:
                finished.set()

        def thread_main() -> None:
            try:
                while not stop.is_set():
                    with lock:
                        index = next(order, None)
                    if index is None:
                        return
                    outcome = self._fresh_sync(program, index, examples[index], hashes[index], loop)
                    with lock:
                        if stop.is_set():  # stopped while this example was in flight: dropped, like a
                            return  # cancelled task's
                        try:
                            deliver(index, outcome)
                        except BaseException as exc:  # a progress callback that raised: a bug
                            failure.append(exc)
                        if run.finished or failure:
                            stop.set()
                            # Do not wait for the other threads' LM calls: their results are dropped.
                            loop.call_soon_threadsafe(finished.set)
            finally:
                loop.call_soon_threadsafe(on_exit)

        for _ in range(active[0]):
            # One context copy per thread (a Context cannot be entered by two threads at once); each
            # carries this run's dspy.context(...) overrides.
            pool.submit(contextvars.copy_context().run, thread_main)
        try:
            await finished.wait()
        finally:
            stop.set()  # also when arun is cancelled: threads finish their example and take no other
        if failure:
            raise failure[0]

    async def _schedule_pool(
        self,
        program: RemoteProgram,
        examples: list[Any],
        inputs: Sequence[dict[str, Any]],
        hashes: Sequence[str],
        misses: list[int],
        run: RunState,
        deliver: Callable[[int, _Outcome], None],
    ) -> None:
        """A pool: shards of examples go to the workers, each running its shard on ``concurrency / size``
        threads; predictions come back as JSON and are scored here. A shard whose worker died is sent
        once more (predicting has no side effects to repeat); twice lost, its examples fail."""
        threads = max(1, -(-self.concurrency // program.workers))
        # About two shards per worker (at least two rounds of its threads each): few messages and short
        # tails, and a worker's next shard waits in its pipe while it runs the current one.
        size = max(threads, -(-len(misses) // (program.workers * 4)))
        shards = [misses[i : i + size] for i in range(0, len(misses), size)]

        def submit(shard: list[int]) -> Any:
            return program.predict_batch([inputs[i] for i in shard], threads)

        futures = {id(shard): submit(shard) for shard in shards}
        waiting = {asyncio.wrap_future(futures[id(shard)]): (shard, 1) for shard in shards}
        try:
            while waiting and not run.finished:
                done, _ = await asyncio.wait(list(waiting), return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    shard, attempt = waiting.pop(finished)
                    started = time.perf_counter()
                    try:
                        results = finished.result()["outcome"]["results"]
                    except WorkerError as exc:
                        if attempt == 1:
                            waiting[asyncio.wrap_future(submit(shard))] = (shard, 2)
                            continue
                        for index in shard:
                            deliver(
                                index,
                                self._failed(
                                    index, hashes[index], inputs[index], exc, "program", None, started
                                ),
                            )
                        continue
                    for index, result in zip(shard, results, strict=True):
                        if run.finished:
                            break
                        outcome = await self._remote(
                            index, examples[index], inputs[index], hashes[index], result
                        )
                        deliver(index, outcome)
        finally:
            for pending in waiting:  # stopped early (or cancelled): queued shards never run
                pending.cancel()

    async def _remote(
        self, index: int, example: Any, inputs: dict[str, Any], digest: str, result: Mapping[str, Any]
    ) -> _Outcome:
        """One example a pool worker predicted (``inputs``: its inputs as JSON): scored here, with the
        worker's time as its duration."""
        started = time.perf_counter() - float(result.get("ms", 0.0)) / 1000
        tracker = dspy.settings.usage_tracker  # this evaluation's: the worker's LM calls count here too
        for lm, usage in result.get("usage", ()):
            tracker.add_usage(lm, usage)
        if "error" in result:
            error = result["error"]
            exc = ExecutionError(f"{error['type']}: {error['message']}")
            return self._failed(index, digest, inputs, exc, "program", None, started)
        json_prediction = dict(result["prediction"])
        prediction = dspy.Prediction(**json_prediction)
        try:
            scores = {m.name: await m.ascore(example, prediction) for m in self.metrics}
        except Exception as exc:
            return self._failed(index, digest, inputs, exc, "metric", json_prediction, started)
        return self._scored(index, digest, inputs, json_prediction, scores, started)

    # -- one example -------------------------------------------------------------------------------
    def _failed(
        self,
        index: int,
        digest: str,
        inputs: dict[str, Any],
        exc: BaseException,
        stage: str,
        prediction: dict[str, Any] | None,
        started: float,
    ) -> _Outcome:
        record = ExampleRecord(
            index=index,
            example_hash=digest,
            inputs=inputs,
            prediction=prediction,
            score=self.failure_score,
            scores={m.name: self.failure_score for m in self.metrics},
            error=error_info(exc, stage),
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        return record, exc, None

    def _scored(
        self,
        index: int,
        digest: str,
        inputs: dict[str, Any],
        prediction: dict[str, Any],
        scores: dict[str, Score],
        started: float,
    ) -> _Outcome:
        record = self._record(index, digest, inputs, prediction, scores, False, started)
        values = {n: s.value for n, s in scores.items()}
        return record, None, self._entry(prediction, values, scores, record.duration_ms)

    async def _hit(self, index: int, example: Any, digest: str, hit: CachedResult) -> _Outcome:
        """A cached example: its stored scores, and any metric the cache has not seen yet scored on the
        stored prediction (no program call)."""
        started = time.perf_counter()
        inputs = to_jsonable(example.inputs().toDict())
        names = {m.name for m in self.metrics}
        scores = {n: Score(v, hit.feedback.get(n)) for n, v in hit.scores.items() if n in names}
        missing = [m for m in self.metrics if m.name not in hit.scores]
        entry = None
        if missing:
            try:
                prediction = dspy.Prediction(**hit.prediction)
                for m in missing:
                    scores[m.name] = await m.ascore(example, prediction)
            except Exception as exc:
                return self._failed(index, digest, inputs, exc, "metric", hit.prediction, started)
            values = {**hit.scores, **{n: s.value for n, s in scores.items()}}
            entry = self._entry(hit.prediction, values, scores, hit.duration_ms)
        return self._record(index, digest, inputs, hit.prediction, scores, True, started), None, entry

    async def _fresh_async(self, program: Any, index: int, example: Any, digest: str) -> _Outcome:
        started = time.perf_counter()
        raw_inputs = example.inputs().toDict()
        inputs = to_jsonable(raw_inputs)
        try:
            prediction = await program.acall(**raw_inputs)
        except Exception as exc:  # one example's failure is data, not the evaluation's failure
            return self._failed(index, digest, inputs, exc, "program", None, started)
        json_prediction = self._prediction_json(prediction)
        try:
            scores = {m.name: await m.ascore(example, prediction) for m in self.metrics}
        except Exception as exc:
            return self._failed(index, digest, inputs, exc, "metric", json_prediction, started)
        return self._scored(index, digest, inputs, json_prediction, scores, started)

    def _fresh_sync(
        self, program: Any, index: int, example: Any, digest: str, loop: asyncio.AbstractEventLoop
    ) -> _Outcome:
        """The same as :meth:`_fresh_async`, in a worker thread; async metrics run on the loop."""
        started = time.perf_counter()
        raw_inputs = example.inputs().toDict()
        inputs = to_jsonable(raw_inputs)
        try:
            prediction = program(**raw_inputs)
        except Exception as exc:
            return self._failed(index, digest, inputs, exc, "program", None, started)
        json_prediction = self._prediction_json(prediction)
        try:
            scores: dict[str, Score] = {}
            for m in self.metrics:
                if m.is_async:
                    future = asyncio.run_coroutine_threadsafe(m.ascore(example, prediction), loop)
                    scores[m.name] = future.result()
                else:
                    scores[m.name] = m.score_sync(example, prediction)
        except Exception as exc:
            return self._failed(index, digest, inputs, exc, "metric", json_prediction, started)
        return self._scored(index, digest, inputs, json_prediction, scores, started)

    @staticmethod
    def _prediction_json(prediction: Any) -> dict[str, Any]:
        data = to_jsonable(prediction)
        return data if isinstance(data, dict) else {"value": data}

    @staticmethod
    def _entry(
        prediction: dict[str, Any], values: dict[str, float], scores: dict[str, Score], duration_ms: float
    ) -> CachedResult:
        feedback = {n: s.feedback for n, s in scores.items() if s.feedback}
        return CachedResult(prediction, values, feedback, duration_ms)

    def _record(
        self,
        index: int,
        digest: str,
        inputs: dict[str, Any],
        prediction: dict[str, Any],
        scores: dict[str, Score],
        cached: bool,
        started: float,
    ) -> ExampleRecord:
        values = {m.name: scores[m.name].value for m in self.metrics}
        return ExampleRecord(
            index=index,
            example_hash=digest,
            inputs=inputs,
            prediction=prediction,
            score=values[self.primary],
            scores=values,
            cached=cached,
            duration_ms=(time.perf_counter() - started) * 1000,
            feedback={n: s.feedback for n, s in scores.items() if s.feedback},
        )

    def _aborted(self, run: RunState) -> EvaluationAborted:
        first = min((r for r in run.records.values() if r.error), key=lambda r: r.index)
        assert first.error is not None
        return EvaluationAborted(
            f"evaluation aborted: {run.errors} examples failed, more than max_errors={self.max_errors}, "
            f"after {len(run.records)} of {run.total} examples; the first failure (example {first.index}, "
            f"{first.error['stage']}): {first.error['type']}: {first.error['message']}. Fix the program "
            "or metric, or raise max_errors",
            errors=run.errors,
            evaluated=len(run.records),
        )

    def _result(
        self, run: RunState, configuration_id: str | None, usage: UsageTotals, duration: float
    ) -> EvaluationResult:
        records = tuple(run.records[i] for i in sorted(run.records))
        n = len(records)
        means = {m.name: sum(r.scores[m.name] for r in records) / n for m in self.metrics}
        per_model = usage.snapshot()
        return EvaluationResult(
            score=means[self.primary],
            scores=means,
            primary=self.primary,
            n=n,
            total=run.total,
            errors=run.errors,
            cached=sum(r.cached for r in records),
            records=records,
            duration_s=duration,
            configuration_id=configuration_id,
            stopped_early=run.stop_reason is not None,
            stop_reason=run.stop_reason,
            lm_calls=sum(u["calls"] for u in per_model.values()),
            usage=per_model,
        )
