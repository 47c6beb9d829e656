"""Streaming runs: :meth:`App.arun <dspex.runtime.app.App.arun>` as a sequence of events, recorded the same way.

::

    stream = await RunStream.open(app, "qa", {"question": "What is DSPy?"})   # raises like arun on bad input
    async for event in stream.events():
        match event:
            case RunStarted(): ...                      # the execution id, before any LM call
            case StepEvent(): ...                       # a pipeline step started, finished, retried...
            case TokenEvent(field=f, chunk=c): ...      # a chunk of a string output field
            case RunFinished(result=r): r.outputs       # the RunResult, as arun returns it
            case RunFailed(error=e): e.code             # the error arun would raise (after recording)

Opening a stream does what ``arun`` does before the program runs: it loads the registered program (off the
event loop), writes the ``running`` record and validates the inputs; a ``ValidationError`` is recorded as a
failed execution and raised from :meth:`RunStream.open`, so a caller can still answer with an error status
before it starts streaming. After that every outcome ends the record exactly once: ``succeeded``,
``failed`` (the error is yielded as :class:`RunFailed`, not raised) or ``cancelled`` when the consumer stops
iterating early (a client that disconnects) or is cancelled.

Tokens come from ``dspy.streamify`` with a ``StreamListener`` on each string output field of the
program's predictors (the last predictor that writes a field, as in :class:`~dspex.pipeline.ModuleStep`);
a dspex :class:`~dspex.pipeline.Pipeline` streams through its own ``stream()``, which adds the step events.
A field that did not stream (an LM answer from the cache) arrives as one token with the result.
Streamed runs do not use the program-level result cache: a stream is asked for to watch the LM work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dspex.errors import DatabaseUnavailable
from dspex.modules._interface import check_inputs
from dspex.modules._introspect import acall_module
from dspex.runtime.app import App
from dspex.runtime.run import Durability, RunResult, _input_interface, _Run, check_durability

if TYPE_CHECKING:
    from dspex.pipeline.events import Event as PipelineEvent
    from dspex.runtime.pooled import PooledRun

__all__ = [
    "RunFailed",
    "RunFinished",
    "RunStarted",
    "RunStream",
    "StepEvent",
    "StreamEvent",
    "TokenEvent",
]

StepKind = Literal["step_started", "step_finished", "step_retried", "step_failed", "step_skipped"]


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The run is recorded as ``running`` under ``execution_id``."""

    execution_id: str
    program: str
    version_id: str | None


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A pipeline step event; ``data`` is the event's fields as JSON (``step``, ``attempt``...)."""

    kind: StepKind
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A chunk of output field ``field``; ``step`` names the pipeline step that produced it, if any."""

    field: str
    chunk: str
    step: str | None = None


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run succeeded; ``result`` is what :meth:`App.arun` would have returned."""

    result: RunResult


@dataclass(frozen=True, slots=True)
class RunFailed:
    """The run failed and is recorded as failed; ``error`` is what :meth:`App.arun` would have raised."""

    error: BaseException


StreamEvent = RunStarted | StepEvent | TokenEvent | RunFinished | RunFailed

_STEP_KINDS: dict[str, StepKind] = {
    "StepStarted": "step_started",
    "StepFinished": "step_finished",
    "StepRetried": "step_retried",
    "StepFailed": "step_failed",
    "StepSkipped": "step_skipped",
}


class _Done:
    """End of the program's events (the task finished, one way or another)."""


_DONE = _Done()


class RunStream:
    """One streamed run: create it with :meth:`open`, consume :meth:`events` once."""

    def __init__(self, run: _Run, inputs: dict[str, Any], pooled: PooledRun | None = None) -> None:
        self._run = run
        self._inputs = inputs
        self._pooled = pooled  # a run placed on a pool: its worker streams it, this process records it
        self._ended = False
        self._consumed = False

    @property
    def execution_id(self) -> str:
        return self._run.id

    @classmethod
    async def open(
        cls,
        app: App,
        program: Any,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        program_name: str | None = None,
        version_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        timeout: float | None = None,
        pool: str | None = None,
    ) -> RunStream:
        """Load the program (a name or a module), record the run as started and validate its inputs.

        Raises what :meth:`App.arun` raises before running: ``ConfigurationError`` for an unknown
        program or version (nothing recorded), ``ValidationError`` for bad inputs and
        ``DatabaseUnavailable`` when the program's version cannot be resolved (both recorded as failed,
        with ``execution_id`` set). ``durability`` as in :meth:`App.run`: with ``sync`` the final event
        is sent once the record is committed. ``timeout`` is the run's deadline, as for :meth:`App.run`.
        ``pool`` (or, without it, the router's rules) streams a registered program from a pool's worker:
        the events are the same, and the record is the one a pooled :meth:`App.arun` leaves.
        """
        mode = check_durability(durability)
        reason = None
        if pool is None and lm is None and isinstance(program, str) and app.router.active:
            route = await asyncio.to_thread(app.router.decide, program, version_id)
            pool, reason = route.pool, route.reason
        if pool is not None:
            return await cls._open_pooled(
                app, program, inputs, lm, program_name, version_id, variables, mode, pool, reason, timeout
            )
        if isinstance(program, str):
            name = program
            try:
                program, version_id = await asyncio.to_thread(app._registered, name, version_id, program_name)
                if mode is None:
                    mode = (await asyncio.to_thread(app._cache.policy, name)).durability
            except DatabaseUnavailable as exc:
                app._cache.record_unresolved(exc, name, version_id, inputs, variables)
                raise
            program_name = name
        run = _Run(
            app, program, inputs, lm, program_name, version_id, variables, mode or app.settings.durability
        )
        run.set_timeout(timeout)
        try:
            run._check_size()
            validated = run._validated()
        except BaseException as exc:
            shown = run.failed(exc)
            if run.durability == "sync":
                await asyncio.to_thread(run.settle)
            raise shown from exc
        return cls(run, validated)

    @classmethod
    async def _open_pooled(
        cls,
        app: App,
        name: Any,
        inputs: Mapping[str, Any] | None,
        lm: Any,
        program_name: str | None,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        mode: Durability | None,
        pool: str,
        reason: str | None,
        timeout: float | None,
    ) -> RunStream:
        """:meth:`open` for a run on ``pool``: recorded here, its inputs checked here (so bad inputs are
        refused before any event), executed and streamed by a worker."""
        from dspex.runtime.pooled import PooledRun, check_crossing

        def prepare() -> tuple[PooledRun, Any]:
            check_crossing(pool, name, lm)
            app._check_program_name(name, program_name)
            durability = mode or app._cache.policy(name).durability or app.settings.durability
            pooled = PooledRun(
                app, pool, name, inputs, lm=lm, version_id=version_id, variables=variables,
                durability=durability, idempotent=False, reason=reason,
            )  # fmt: skip
            return pooled, app.programs.build(app._cache.version(name, pooled.version_id))

        try:
            pooled, built = await asyncio.to_thread(prepare)
        except DatabaseUnavailable as exc:
            app._cache.record_unresolved(exc, name, version_id, inputs, variables)
            raise
        run = pooled.run
        try:
            run.set_timeout(timeout)
            run._check_size()
            validated = check_inputs(_input_interface(built), run.inputs)
        except BaseException as exc:
            shown = run.failed(exc)
            await run.asettle()
            raise shown from exc
        return cls(run, validated, pooled)

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The run's events, ending with :class:`RunFinished` or :class:`RunFailed`.

        Stopping early (``aclose()``, a cancelled consumer) cancels the program and records the run as
        ``cancelled``.
        """
        if self._consumed:
            raise RuntimeError("a RunStream is consumed once; open another to run again")
        self._consumed = True
        run = self._run
        yield RunStarted(run.id, str(run.base["program"]), run.base["version_id"])
        if self._pooled is not None:
            async with contextlib.aclosing(self._pooled_events(self._pooled)) as pooled_events:
                async for event in pooled_events:
                    yield event
            return
        queue: asyncio.Queue[StreamEvent | _Done] = asyncio.Queue()
        task = asyncio.ensure_future(self._execute(queue.put_nowait))
        task.add_done_callback(lambda _task: queue.put_nowait(_DONE))
        try:
            while not isinstance(item := await queue.get(), _Done):
                yield item
            try:
                prediction = task.result()
            except Exception as exc:
                failed = self._failed(exc)
                if run.durability == "sync":
                    await asyncio.to_thread(run.settle)
                yield failed
                return
            self._ended = True
            finished = RunFinished(run.succeeded(prediction))
            if run.durability == "sync":
                await asyncio.to_thread(run.settle)
            yield finished
        finally:
            if not self._ended:  # the consumer stopped (disconnect) or was cancelled: so is the run
                task.cancel()
                task.add_done_callback(_retrieve)
                self._ended = True
                run.failed(asyncio.CancelledError())

    async def _pooled_events(self, pooled: PooledRun) -> AsyncGenerator[StreamEvent, None]:
        """The events a worker streams, then the run's end as the worker's outcome describes it."""
        run = self._run
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | _Done] = asyncio.Queue()

        # Events and the answer both reach the loop through call_soon_threadsafe, in the order the pool's
        # thread saw them: every event is queued before the end.
        def on_event(data: dict[str, Any]) -> None:
            if not loop.is_closed():  # a consumer gone with its loop: the rest of the run is dropped
                loop.call_soon_threadsafe(queue.put_nowait, _event(data))

        try:
            future = pooled.submit_stream(on_event)
        except Exception as exc:  # the pool closed (or the run is too big): the run ends failed, recorded
            failed = self._failed(exc)
            await run.asettle()
            yield failed
            return
        answer = asyncio.wrap_future(future)
        answer.add_done_callback(lambda _answer: queue.put_nowait(_DONE))
        try:
            while not isinstance(item := await queue.get(), _Done):
                yield item
            try:
                outcome = answer.result()
            except Exception as exc:  # the worker was lost, or the pool closed: recorded as failed here
                failed = self._failed(exc)
                await run.asettle()
                yield failed
                return
            self._ended = True
            try:
                end: StreamEvent = RunFinished(pooled._adopt(outcome))
            except Exception as shown:  # the run failed on the worker: adopt recorded it
                end = RunFailed(shown)
            await run.asettle()
            yield end
        finally:
            if not self._ended:  # the consumer stopped: a queued task never runs, a running one is dropped
                future.cancel()
                self._ended = True
                run.failed(asyncio.CancelledError())

    def _failed(self, exc: BaseException) -> RunFailed:
        self._ended = True
        return RunFailed(self._pooled.failed(exc) if self._pooled is not None else self._run.failed(exc))

    async def _execute(self, emit: Callable[[StreamEvent], None]) -> Any:
        """Run the program under the run's DSPy context, emitting step and token events."""
        from dspex.pipeline import Pipeline

        program, inputs = self._run.program, self._inputs
        with self._run._context():
            if isinstance(program, Pipeline):
                return await _stream_pipeline(program, inputs, emit)
            targets = _stream_targets(program)
            if not targets:
                return await acall_module(program, **inputs)
            return await _stream_module(program, inputs, targets, emit)


def _event(data: dict[str, Any]) -> StreamEvent:
    """A worker's event message (``pools.worker``) as the event a local stream yields."""
    if data.get("type") == "step":
        return StepEvent(data["kind"], data["data"])
    return TokenEvent(data["field"], data["chunk"], data.get("step"))


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The cancelled program's outcome is recorded already; reading it keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


async def _stream_pipeline(program: Any, inputs: dict[str, Any], emit: Callable[[StreamEvent], None]) -> Any:
    from dspex.pipeline.events import Finished, Token

    stream: AsyncIterator[PipelineEvent] = program.stream(**inputs)
    async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]  # an async generator
        async for event in events:
            if isinstance(event, Token):
                emit(TokenEvent(event.field, event.chunk, event.step))
            elif isinstance(event, Finished):
                return event.result
            else:
                kind = _STEP_KINDS.get(type(event).__name__)
                if kind is not None:
                    emit(StepEvent(kind, _event_data(event)))
    raise RuntimeError("the pipeline's event stream ended without a Finished event")


def _event_data(event: Any) -> dict[str, Any]:
    from dspex.jsonable import to_jsonable

    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    jsonable: dict[str, Any] = to_jsonable(data)
    return jsonable


@dataclass(frozen=True, slots=True)
class _Target:
    field: str
    predictor_name: str
    predictor: Any


def _stream_targets(program: Any) -> list[_Target]:
    """The string output fields a listener can follow: for each, the last predictor that writes it."""
    from dspex.modules._introspect import single_signature

    if not hasattr(program, "named_predictors"):
        return []
    signature = single_signature(program)
    predictors = program.named_predictors()
    fields = list(signature.output_fields) if signature is not None else []
    if not fields and predictors:  # no single signature: the last predictor's outputs are the program's
        fields = list(predictors[-1][1].signature.output_fields)
    targets = []
    for name in fields:
        owners = [(pname, p) for pname, p in predictors if name in p.signature.output_fields]
        if owners and owners[-1][1].signature.output_fields[name].annotation is str:
            targets.append(_Target(name, owners[-1][0], owners[-1][1]))
    return targets


class _Streamable:
    """What ``dspy.streamify`` calls: the program, awaited as ``arun`` awaits it, returning a Prediction.

    Not a ``dspy.Module`` on purpose: it would show up as an extra span in the run's trace.
    """

    def __init__(self, program: Any) -> None:
        self.program = program

    def named_predictors(self) -> list[tuple[str, Any]]:
        return list(self.program.named_predictors())

    async def acall(self, **kwargs: Any) -> Any:
        import dspy

        prediction = await acall_module(self.program, **kwargs)
        # streamify ends its stream on a Prediction and waits forever otherwise; the original is kept.
        return (
            prediction
            if isinstance(prediction, dspy.Prediction)
            else dspy.Prediction(**{_RESULT: prediction})
        )


_RESULT = "__dspex_result__"


async def _stream_module(
    program: Any, inputs: dict[str, Any], targets: list[_Target], emit: Callable[[StreamEvent], None]
) -> Any:
    import dspy
    from dspy.streaming import StatusMessageProvider, StreamListener, StreamResponse

    class NoStatus(StatusMessageProvider):  # type: ignore[misc]  # dspy is untyped
        """Tool status messages are not part of the stream (the trace records tools)."""

        def tool_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> None:
            return None

        def tool_end_status_message(self, outputs: Any) -> None:
            return None

    listeners = [StreamListener(t.field, predict=t.predictor, predict_name=t.predictor_name) for t in targets]
    streamed: set[str] = set()
    streaming = dspy.streamify(
        _Streamable(program),
        status_message_provider=NoStatus(),
        stream_listeners=listeners,
        is_async_program=True,
    )
    prediction: Any = None
    finished = False
    async with contextlib.aclosing(streaming(**inputs)) as stream:
        async for value in stream:
            if isinstance(value, StreamResponse):
                if value.chunk:
                    streamed.add(value.signature_field_name)
                    emit(TokenEvent(value.signature_field_name, value.chunk))
            elif isinstance(value, dspy.Prediction):
                prediction, finished = value, True
    if not finished:
        raise RuntimeError("dspy.streamify ended without a prediction")
    for t in targets:
        # Answered from the LM cache or in one piece: nothing streamed, so the value is one token.
        value = prediction.get(t.field) if hasattr(prediction, "get") else None
        if t.field not in streamed and isinstance(value, str) and value:
            emit(TokenEvent(t.field, value))
    return prediction.get(_RESULT, prediction)
