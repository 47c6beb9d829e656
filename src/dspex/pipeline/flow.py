"""Pipelines and their constructs: sequence, ``parallel``, ``when`` and ``map``, and how a step is run.

A :class:`Pipeline` is a list of steps over a shared state of named fields. It orders them by data, not
by position: a step waits only for the earlier steps whose fields it reads (and, to keep the meaning of
the list, for earlier steps that read or write what it writes). Steps that do not depend on each other
run concurrently; ``sequential=True`` runs them strictly in order. ::

    pipeline = Pipeline(
        [
            step(parse, outputs=["query"]),
            Parallel(step(bm25, outputs=["passages"]), step(keywords, outputs=["passages"]),
                     merge={"passages": "concat"}),
            dspy.ChainOfThought("query, passages -> answer"),
        ],
        name="qa",
    )
    pipeline(text="...").answer                 # a dspy.Module: sync, async (acall), optimizable
    async for event in pipeline.stream(text="..."): ...

Each step runs with its options: ``timeout`` (seconds per attempt), ``retry`` (a :class:`RetryPolicy`,
through tenacity), ``fallback`` (a step producing the same fields, run when the step gives up) and
``continue_on_error`` (the step's fields stay unset, the error is kept, dependents are skipped, and the
result carries ``step_errors``). Otherwise a failing step raises :class:`~dspex.errors.StepError` and
cancels the work in flight; so does cancelling the caller. A synchronous function or DSPy module that
runs in a worker thread cannot be interrupted mid-call: cancellation and timeouts stop waiting for it
and drop its result.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import dspy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_exponential, wait_random

from dspex.errors import ConfigurationError, DeadlineExceeded, StepError, did_you_mean
from dspex.lm.deadline import check_deadline, remaining
from dspex.pipeline.events import (
    Event,
    Finished,
    StepFailed,
    StepFinished,
    StepRetried,
    StepSkipped,
    StepStarted,
)
from dspex.pipeline.steps import RetryPolicy, Step, StepLike, as_step
from dspex.telemetry.recorder import error_info

__all__ = ["MERGE_RULES", "Map", "Parallel", "Pipeline", "When"]


@dataclass(slots=True)
class _Run:
    """What one top-level run shares with every step inside it."""

    emit: Callable[[Event], None] | None = None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    owner: Step | None = None


_current: ContextVar[_Run | None] = ContextVar("dspex_pipeline_run", default=None)


def _emit(event: Event) -> None:
    run = _current.get()
    if run is not None and run.emit is not None:
        run.emit(event)


async def _gather_cancelling(coros: Iterable[Awaitable[Any]]) -> list[Any]:
    """``asyncio.gather`` that cancels the siblings of the first failure (and waits for them to stop)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _attempt(step: Step, kwargs: Mapping[str, Any]) -> Any:
    check_deadline(f"pipeline step {step.name!r}")
    left = remaining()
    timeout = step.timeout if left is None else min(left, step.timeout or left)
    call = step.acall(**kwargs)
    if timeout is None:
        return await call
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError as exc:
        if step.timeout is None or timeout < step.timeout:
            raise DeadlineExceeded(
                f"the run's deadline passed during pipeline step {step.name!r}; raise timeout= or make "
                "the step cheaper"
            ) from exc
        raise TimeoutError(f"step {step.name!r} took longer than its timeout of {step.timeout} s") from exc


async def execute(step: Step, state: Mapping[str, Any]) -> dict[str, Any]:
    """Run one step on ``state`` with its retry, timeout, fallback and error options; return its updates."""
    kwargs = step.local_kwargs(state)
    policy = step.retry or RetryPolicy(attempts=1)
    started = time.perf_counter()

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        info = error_info(exc) if exc is not None else {}
        _emit(StepRetried(step.name, retry_state.attempt_number, info, float(wait)))

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.backoff, exp_base=policy.multiplier, max=policy.max_backoff)
        + wait_random(0, policy.jitter),
        # The run's deadline is final: neither retried nor handed to a fallback.
        retry=retry_if_exception_type(policy.retry_on) & retry_if_not_exception_type(DeadlineExceeded),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                _emit(StepStarted(step.name, attempt.retry_state.attempt_number))
                prediction = await _attempt(step, kwargs)
    except (asyncio.CancelledError, DeadlineExceeded):
        raise
    except Exception as exc:
        return await _give_up(step, state, exc, started)
    updates = step.state_updates(prediction)
    _emit(StepFinished(step.name, (time.perf_counter() - started) * 1000, tuple(updates)))
    return updates


async def _give_up(step: Step, state: Mapping[str, Any], exc: Exception, started: float) -> dict[str, Any]:
    info = error_info(exc)
    if step.fallback is not None:
        _emit(StepFailed(step.name, info, handled=True))
        updates = await execute(step.fallback, state)
        _emit(StepFinished(step.name, (time.perf_counter() - started) * 1000, tuple(updates), fallback=True))
        return updates
    run = _current.get()
    if step.continue_on_error and run is not None:
        run.errors[step.name] = info
        _emit(StepFailed(step.name, info, handled=True))
        return {}
    _emit(StepFailed(step.name, info, handled=False))
    if isinstance(exc, StepError):  # a nested pipeline already named the step that failed
        raise exc
    raise StepError(f"step {step.name!r} failed: {type(exc).__name__}: {exc}", step=step.name) from exc


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)


def _as_step_or_pipeline(thing: StepLike | Sequence[StepLike], name: str) -> Step:
    if isinstance(thing, list | tuple):
        return Pipeline(thing, name=name)
    return as_step(thing)


class Pipeline(Step):
    """Steps over a shared state, ordered by the fields they read and write. See the module docstring.

    ``inputs`` declares the fields a caller passes (default: what the steps read before any step writes
    it); ``outputs`` the fields of the result (default: every field a step writes).
    """

    def __init__(
        self,
        steps: Sequence[StepLike],
        *,
        name: str = "pipeline",
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        sequential: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        fallback: StepLike | None = None,
        continue_on_error: bool = False,
    ) -> None:
        built = [as_step(s) for s in steps]
        if not built:
            raise ConfigurationError(f"pipeline {name!r} has no steps")
        names = [s.name for s in built]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigurationError(
                f"pipeline {name!r} has several steps named {duplicated}; give each step a unique name="
            )
        required, optional, written = _dataflow(built, inputs, name)
        local_outputs = _unique(s for st in built for s in st.writes)
        if outputs is not None:
            unknown = [f for f in outputs if f not in written and f not in required and f not in optional]
            if unknown:
                raise ConfigurationError(
                    f"pipeline {name!r} declares outputs {unknown} that no step writes; "
                    + did_you_mean(unknown[0], sorted(written), what="field")
                )
            local_outputs = list(outputs)
        super().__init__(
            name,
            [*required, *optional],
            local_outputs,
            optional_inputs=optional,
            timeout=timeout,
            retry=retry,
            fallback=fallback,
            continue_on_error=continue_on_error,
        )
        self.steps = built
        self.sequential = sequential
        self._deps = _dependencies(built, sequential)

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        # Without this check a missing input would only make the first steps "skipped": an empty result.
        missing = [f for f in self.required_reads if f not in kwargs]
        if missing:
            unexpected = sorted(set(kwargs) - set(self.reads))
            raise ConfigurationError(
                f"pipeline {self.name!r} needs input {missing[0]!r} (missing: {', '.join(missing)}); "
                + (did_you_mean(unexpected[0], self.reads, what="input") if unexpected else "pass it")
            )
        run = _current.get()
        token = None
        if run is None:
            run = _Run()
            token = _current.set(run)
        if run.owner is None:
            run.owner = self
        try:
            state = await self._run(dict(kwargs), run)
        finally:
            if token is not None:
                _current.reset(token)
        result = {f: state[f] for f in self.local_outputs if f in state}
        if run.owner is self and run.errors:
            result["step_errors"] = dict(run.errors)
        return result

    async def aforward(self, **kwargs: Any) -> dspy.Prediction:
        local = await self.arun_local(**kwargs)
        prediction = dspy.Prediction(**{k: v for k, v in local.items() if k != "step_errors"})
        if "step_errors" in local:
            prediction.step_errors = local["step_errors"]
        return prediction

    async def _run(self, state: dict[str, Any], run: _Run) -> dict[str, Any]:
        tasks: list[asyncio.Future[None]] = []

        async def run_step(index: int) -> None:
            if self._deps[index]:
                await asyncio.gather(*(tasks[j] for j in self._deps[index]))
            current = self.steps[index]
            missing = tuple(f for f in current.required_reads if f not in state)
            if missing:  # an upstream step failed with continue_on_error or a `when` took the other branch
                run.errors[current.name] = {
                    "type": "Skipped",
                    "code": "skipped",
                    "message": f"not run: fields {list(missing)} were not produced",
                }
                _emit(StepSkipped(current.name, missing))
                return
            state.update(await execute(current, state))

        tasks.extend(asyncio.ensure_future(run_step(i)) for i in range(len(self.steps)))
        await _gather_cancelling(tasks)
        return state

    async def stream(self, **inputs: Any) -> AsyncIterator[Event]:
        """Run and yield events as they happen, ending with :class:`~dspex.pipeline.events.Finished`.

        A failure raises from the iterator after its ``StepFailed`` event; closing the iterator early
        cancels the run.
        """
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event: Event) -> None:
            # A step may run a pipeline synchronously in a worker thread (a sync DSPy module wrapping a
            # pipeline); asyncio.Queue is not thread-safe, so events from there hop to this loop.
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if here is loop:
                queue.put_nowait(event)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        run = _Run(emit=emit)
        token = _current.set(run)
        try:
            task = asyncio.ensure_future(self.acall(**inputs))
        finally:
            _current.reset(token)
        task.add_done_callback(lambda _task: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            result = task.result()
            yield Finished(result, dict(run.errors))
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": [s.describe() for s in self.steps]}


def _dataflow(
    steps: Sequence[Step], declared: Sequence[str] | None, name: str
) -> tuple[list[str], list[str], set[str]]:
    """(required inputs, optional inputs, fields written), checking every read can be satisfied."""
    written: set[str] = set()
    required: list[str] = []
    optional: list[str] = []
    for current in steps:
        for f in current.reads:
            if f in written or f in required or f in optional:
                continue
            is_required = f in current.required_reads
            if declared is not None and f not in declared and is_required:
                available = sorted({*declared, *written})
                raise ConfigurationError(
                    f"pipeline {name!r}: step {current.name!r} reads {f!r}, which is neither a pipeline input "
                    f"nor written by an earlier step; available: {', '.join(available) or 'nothing'}"
                )
            (required if is_required else optional).append(f)
        written.update(current.writes)
    if declared is not None:
        extra = [f for f in declared if f not in required and f not in optional]
        required = [f for f in declared if f in required or f in extra]
        optional = [f for f in optional if f not in required]
    return required, optional, written


def _dependencies(steps: Sequence[Step], sequential: bool) -> list[set[int]]:
    deps: list[set[int]] = []
    for i, later in enumerate(steps):
        if sequential:
            deps.append({i - 1} if i else set())
            continue
        reads, writes = set(later.reads), set(later.writes)
        mine = set()
        for j in range(i):
            earlier = steps[j]
            if reads & set(earlier.writes) or writes & set(earlier.reads) or writes & set(earlier.writes):
                mine.add(j)
        deps.append(mine)
    return deps


def _concat(values: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for value in values:
        merged.extend(value if isinstance(value, list | tuple) else [value])
    return merged


MERGE_RULES: dict[str, Callable[[list[Any]], Any]] = {
    "concat": _concat,
    "first": lambda values: values[0],
    "last": lambda values: values[-1],
}
MergeRule = str | Callable[[list[Any]], Any]


class Parallel(Step):
    """Branches run concurrently on the same state; fields written by several branches need a merge rule.

    A rule is ``"concat"`` (lists joined in branch order), ``"first"``, ``"last"``, or a callable taking
    the values in branch order. Two branches writing a field without a rule is an error when the
    pipeline is built, never a silent overwrite. A branch that is a list of steps is a sub-pipeline.
    """

    def __init__(
        self,
        *branches: StepLike | Sequence[StepLike],
        merge: Mapping[str, MergeRule] | None = None,
        name: str = "parallel",
        **options: Any,
    ) -> None:
        built = [_as_step_or_pipeline(b, f"{name}[{i}]") for i, b in enumerate(branches)]
        if len(built) < 2:
            raise ConfigurationError(f"parallel {name!r} needs at least two branches, got {len(built)}")
        rules = dict(merge or {})
        for fieldname, rule in rules.items():
            if isinstance(rule, str) and rule not in MERGE_RULES:
                raise ConfigurationError(
                    f"parallel {name!r}: merge rule for {fieldname!r}: "
                    + did_you_mean(rule, MERGE_RULES, what="merge rule")
                    + " (or a callable taking the values in branch order)"
                )
        writers: dict[str, list[str]] = {}
        for branch in built:
            for f in branch.writes:
                writers.setdefault(f, []).append(branch.name)
        conflicts = {f: names for f, names in writers.items() if len(names) > 1 and f not in rules}
        if conflicts:
            f, names = next(iter(conflicts.items()))
            raise ConfigurationError(
                f"parallel {name!r}: branches {names} all write {f!r}; rename it in all but one branch "
                f"(outputs={{{f!r}: ...}}) or give a merge rule: merge={{{f!r}: 'concat'}} (or 'first', "
                "'last', a callable)"
            )
        unused = [f for f in rules if f not in writers]
        if unused:
            raise ConfigurationError(f"parallel {name!r}: merge rules for {unused}, which no branch writes")
        required = _unique(f for b in built for f in b.required_reads)
        optional = [f for f in _unique(f for b in built for f in b.reads) if f not in required]
        super().__init__(name, [*required, *optional], list(writers), optional_inputs=optional, **options)
        self.branches = built
        self.merge = rules

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        results = await _gather_cancelling(execute(branch, kwargs) for branch in self.branches)
        merged: dict[str, Any] = {}
        for f in self.local_outputs:
            values = [r[f] for r in results if f in r]
            if not values:
                continue
            rule = self.merge.get(f)
            if rule is None:
                merged[f] = values[0]
            else:
                merged[f] = (MERGE_RULES[rule] if isinstance(rule, str) else rule)(values)
        return merged

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "branches": [b.describe() for b in self.branches]}


class When(Step):
    """Run ``then`` or ``otherwise`` (or nothing) depending on a condition over the state.

    ``condition`` is a field name (its truthiness) or a function whose parameters name the fields it
    reads, returning a bool. Fields only the branch not taken writes stay unset; steps needing them are
    skipped and reported.
    """

    def __init__(
        self,
        condition: str | Callable[..., Any],
        then: StepLike | Sequence[StepLike],
        otherwise: StepLike | Sequence[StepLike] | None = None,
        *,
        name: str = "when",
        **options: Any,
    ) -> None:
        if isinstance(condition, str):
            reads: list[str] = [condition]
        elif callable(condition):
            reads = [
                p.name
                for p in inspect.signature(condition).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        else:
            raise ConfigurationError(
                f"when {name!r}: the condition is a field name or a function, got {condition!r}"
            )
        then_step = _as_step_or_pipeline(then, f"{name}.then")
        other_step = _as_step_or_pipeline(otherwise, f"{name}.otherwise") if otherwise is not None else None
        branches = [b for b in (then_step, other_step) if b is not None]
        branch_reads = [f for f in _unique(f for b in branches for f in b.reads) if f not in reads]
        writes = _unique(f for b in branches for f in b.writes)
        super().__init__(name, [*reads, *branch_reads], writes, optional_inputs=branch_reads, **options)
        self.condition_reads = tuple(reads)
        self.field_condition = condition if isinstance(condition, str) else None
        self.condition = None if isinstance(condition, str) else condition
        self.then = then_step
        self.otherwise = other_step

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        if self.field_condition is not None:
            chosen = bool(kwargs[self.field_condition])
        else:
            assert self.condition is not None
            outcome = self.condition(**{n: kwargs[n] for n in self.condition_reads})
            chosen = bool(await outcome) if inspect.isawaitable(outcome) else bool(outcome)
        branch = self.then if chosen else self.otherwise
        if branch is None:
            return {}
        return await execute(branch, kwargs)


class Map(Step):
    """Fan out: run ``step`` once per element of the list field ``over``, at most ``concurrency`` at a time.

    Each run sees the state plus the element as field ``item``; ``into`` collects the results in order
    (the step's one output field per element, or a dict of its fields when it writes several).
    """

    def __init__(
        self,
        inner: StepLike,
        over: str,
        *,
        item: str = "item",
        into: str | None = None,
        concurrency: int = 4,
        name: str = "map",
        **options: Any,
    ) -> None:
        built = as_step(inner)
        if concurrency < 1:
            raise ConfigurationError(f"map {name!r}: concurrency must be >= 1, got {concurrency}")
        if item not in built.reads:
            raise ConfigurationError(
                f"map {name!r}: step {built.name!r} does not read the item field {item!r}; it reads "
                f"{list(built.reads)} (set item= to one of them, or map the step's input to {item!r})"
            )
        if into is None:
            if len(built.writes) != 1:
                raise ConfigurationError(
                    f"map {name!r}: step {built.name!r} writes {list(built.writes)}; name the result field: into=..."
                )
            into = built.writes[0]
        reads = [over, *(f for f in built.required_reads if f not in (item, over))]
        optional = [f for f in built.reads if f not in reads and f != item]
        super().__init__(name, [*reads, *optional], [into], optional_inputs=optional, **options)
        self.inner = built
        self.over = over
        self.item = item
        self.into = into
        self.concurrency = concurrency

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        items = kwargs[self.over]
        if not isinstance(items, list | tuple):
            raise TypeError(
                f"map {self.name!r}: field {self.over!r} must be a list, got {type(items).__name__}"
            )
        limit = asyncio.Semaphore(self.concurrency)
        single = len(self.inner.writes) == 1

        async def one(element: Any) -> Any:
            async with limit:
                updates = await execute(self.inner, {**kwargs, self.item: element})
            return updates.get(self.inner.writes[0]) if single else updates

        return {self.into: await _gather_cancelling(one(element) for element in items)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "inner": self.inner.describe(), "over": self.over, "into": self.into}
