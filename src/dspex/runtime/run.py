"""One run's lifecycle: the record's fields, the recorder, the DSPy context, and how the run ends.

:class:`_Run` is what :meth:`App.run`, :meth:`App.arun` and :class:`~dspex.runtime.stream.RunStream` share:
it submits the ``running`` record, validates the inputs against what the program takes, executes the
program under ``dspy.context(lm=..., usage_tracker=recorder, dspex_recorder=recorder)`` (the spans come
from :mod:`dspex.telemetry.instrument`, not DSPy's callbacks) and writes the terminal record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import dspy

from dspex._dspy_settings import setting
from dspex.errors import (
    ConfigurationError,
    DeadlineExceeded,
    ExecutionError,
    FieldIssue,
    LMError,
    UserError,
    ValidationError,
    WorkerError,
)
from dspex.ids import new_id
from dspex.jsonable import EncodedJSON, dumps, encoded, to_jsonable
from dspex.lm.deadline import DEADLINE_KEY, deadline
from dspex.modules._interface import check_inputs, input_interface
from dspex.modules._introspect import acall_module
from dspex.store.executions import ExecutionStatus, current_runner, utcnow
from dspex.telemetry import instrument
from dspex.telemetry.context import RunTrace, current_trace, new_span_id
from dspex.telemetry.recorder import RunRecorder, error_info
from dspex.variables.binding import FALLBACKS_ATTRIBUTE

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = ["DURABILITIES", "SYNC_TIMEOUT_S", "Durability", "RunResult", "check_durability"]

Durability = Literal["async", "sync"]
DURABILITIES: tuple[Durability, ...] = ("async", "sync")

SYNC_TIMEOUT_S = 30.0  # how long a sync-durability run waits for its record before giving up (logged)


def check_durability(durability: str | None) -> Durability | None:
    """``durability`` as a :data:`Durability` (None stays None); ``ConfigurationError`` otherwise."""
    if durability is None:
        return None
    if durability == "sync":
        return "sync"
    if durability == "async":
        return "async"
    raise ConfigurationError(f"durability is 'sync' or 'async', got {durability!r}")


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a successful run."""

    execution_id: str
    outputs: dict[str, Any]
    prediction: Any
    duration_ms: float
    usage: dict[str, dict[str, Any]]
    cost_usd: float | None
    cache_hit: bool = False
    trace_id: str | None = None  # the OpenTelemetry trace the run belongs to (telemetry on, or a traceparent)

    def __init__(
        self,
        execution_id: str,
        outputs: dict[str, Any],
        prediction: Any,
        duration_ms: float,
        usage: dict[str, dict[str, Any]],
        cost_usd: float | None,
        cache_hit: bool = False,
        trace_id: str | None = None,
    ) -> None:
        # One result per run: the slots are set through their descriptors. The frozen dataclass's own
        # __init__ calls object.__setattr__ per field, which checks the class hierarchy each time: 16K
        # instructions per result instead of 11K (callgrind). Assignment afterwards still raises.
        s = _RESULT_SLOTS
        s[0](self, execution_id)
        s[1](self, outputs)
        s[2](self, prediction)
        s[3](self, duration_ms)
        s[4](self, usage)
        s[5](self, cost_usd)
        s[6](self, cache_hit)
        s[7](self, trace_id)


_RESULT_SLOTS: tuple[Any, ...] = tuple(
    RunResult.__dict__[name].__set__
    for name in (
        "execution_id",
        "outputs",
        "prediction",
        "duration_ms",
        "usage",
        "cost_usd",
        "cache_hit",
        "trace_id",
    )
)


def run_trace(telemetry: Any) -> RunTrace | None:
    """The trace a run starting now belongs to: a new one (or the caller's child) when ``telemetry``
    exports runs, else the caller's (a traceparent, an enclosing span), else None."""
    parent = current_trace()
    if telemetry is not None:
        trace: RunTrace = telemetry.begin(parent)
        return trace
    if parent is not None:
        return RunTrace(parent.trace_id, new_span_id(), parent.span_id, parent.sampled)
    return None


_step_class: type | None = None  # dspex.pipeline.steps.Step, imported on first use (it imports this module)


def _input_interface(program: Any) -> Any:
    """What a run checks ``program``'s inputs against (see :mod:`dspex.modules._interface`)."""
    global _step_class
    step = _step_class
    if step is None:
        from dspex.pipeline.steps import Step

        step = _step_class = Step
    if isinstance(program, step):  # a pipeline checks its own inputs, which need not be any predictor's
        return None
    return input_interface(program)


_ADAPTERS: dict[tuple[int, bool, bool], tuple[Any, Any]] = {}  # see _run_adapter
_NO_ATTRIBUTES: dict[str, Any] = {}


def _run_adapter(source: Any, parse_fallback: bool, spans: bool) -> Any:
    """The adapter a run uses, or None for DSPy's own choice: ``source`` (``dspy.settings.adapter``;
    None: DSPy's ChatAdapter) with resilience's parse fallback and the adapter spans mixed in.

    Built once per source adapter and reused by every run (a bounded dict, keyed by identity and holding
    the source, so an id cannot be reused while cached): DSPy's adapters keep no per-call state (they are
    configured once and shared by every thread the same way), and building the copy cost 2-3 us a run.
    """
    if not parse_fallback and not spans:
        return None
    key = (id(source), parse_fallback, spans)
    hit = _ADAPTERS.get(key)
    if hit is not None and hit[0] is source:
        return hit[1]
    adapter = source
    if parse_fallback:
        from dspex.lm.resilient import parse_fallback_adapter

        adapter = parse_fallback_adapter(adapter)
    if spans:
        adapter = instrument.recording_adapter(adapter)
    if len(_ADAPTERS) >= 256:
        _ADAPTERS.clear()
    _ADAPTERS[key] = (source, adapter)
    return adapter


class _Run:
    """One run's bookkeeping: the record's fields, the recorder, and how it ends."""

    def __init__(
        self,
        app: App,
        program: Any,
        inputs: Mapping[str, Any] | None,
        lm: Any,
        program_name: str | None,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability = "async",
        placement: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.durability = durability
        self.program = program
        self.inputs = dict(inputs or {})
        self.placement = placement
        # DSPy's own order: an LM passed to the call, else the one the caller set the DSPy way
        # (dspy.context / dspy.configure), else the App's; predictors carrying their own LM use it anyway.
        # A run placed on a pool runs on the worker's LM (its initializer's, else the settings').
        if lm is None and not isinstance(program, str):
            lm = setting("lm")
            if lm is None:
                lm = app.default_lm(program, wrap=False)  # _context wraps it for the program
        self.lm = lm
        self.id = new_id()
        self.started_at = utcnow()
        self.t0 = time.perf_counter()
        # Spans count from the run's own start, so none can end after the run's recorded duration.
        self.recorder = RunRecorder(prices=app.prices, parent_tracker=setting("usage_tracker"), _t0=self.t0)
        self.t0_monotonic = time.monotonic()
        self.level = app.trace_level  # the span tree it keeps (dspex.telemetry.instrument)
        # Which trace the run belongs to: exported when telemetry is on; with it off, a caller's trace
        # (traceparent) is still recorded.
        self.telemetry = app.telemetry
        self.trace = run_trace(self.telemetry)
        self.base: dict[str, Any] = {
            "id": self.id,
            "program": program_name or type(program).__name__,
            "version_id": version_id,
            "inputs": self.inputs,
            "variables": to_jsonable(dict(variables)) if variables else None,
            "started_at": self.started_at,
            "runner": current_runner(),
            "cache_hit": False,
            "placement": placement,
            "session_id": None,
            "trace_id": self.trace.trace_id if self.trace is not None else None,
        }
        self.deadline: float | None = None  # time.monotonic() by which the run must end (timeout=)
        self.status: ExecutionStatus = "running"
        self.error: dict[str, Any] | None = None
        self.duration_ms = 0.0
        self.usage: dict[str, dict[str, Any]] = {}  # per model, and the cost: read when the run ends
        self.cost_usd: float | None = None
        self.too_large: ValidationError | None = None
        text = dumps(self.inputs)
        # UTF-8 takes at most 4 bytes a character: only text that could be over the limit is encoded.
        size = len(text) if len(text) * 4 <= app.settings.max_input_bytes else len(text.encode("utf-8"))
        if size > app.settings.max_input_bytes:
            limit = app.settings.max_input_bytes
            self.too_large = ValidationError(
                f"the run's inputs are {size} bytes of JSON, over the limit of {limit} "
                "(setting max_input_bytes / DSPEX_MAX_INPUT_BYTES); send smaller inputs or raise the limit"
            )
            self.base["inputs"] = {"__omitted__": {"reason": "too_large", "bytes": size, "limit": limit}}
        self.writer = app._open().writer if app.record else None
        if self.writer is not None:
            # The inputs and variables encoded once, for both records (see _end); the rest of base may still
            # change (a session, an adaptive arm) before the run ends.
            self._encoded = {
                "inputs": EncodedJSON(text) if self.too_large is None else self.base["inputs"],
                "variables": encoded(self.base["variables"]),
                "recorder_id": self.writer.recorder_id,  # what the writer would otherwise copy each row for
            }
            self.writer.submit({**self.base, **self._encoded, "status": "running"})

    def set_timeout(self, timeout: float | None) -> None:
        """End the run ``timeout`` seconds after it started (``DeadlineExceeded`` at the next boundary)."""
        if timeout is None:
            return
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError(f"timeout is a number of seconds > 0, got {timeout!r}")
        self.deadline = self.t0_monotonic + float(timeout)

    def _context(self) -> Any:
        lm = self.lm
        extra: dict[str, Any] = {}
        resilience = self.app.resilience
        if lm is not None:
            # A configured copy may carry its own chain (a fallbacks variable), else the program's settings.
            # Set on the instance (variables.binding.apply); read from its __dict__, since a miss through
            # getattr builds an AttributeError in dspy.Module's lookup on every run.
            chain = getattr(self.program, "__dict__", _NO_ATTRIBUTES).get(FALLBACKS_ATTRIBUTE)
            lm = resilience.wrap(lm, program=self.base["program"], fallbacks=chain)
        config = resilience.config
        spans = self.level == "full"
        if self.level != "off":  # spans: the instrumentation finds the recorder in the run's context
            instrument.install()
            extra[instrument.RECORDER_KEY] = self.recorder
        adapter = _run_adapter(setting("adapter"), config.enabled and "parse" in config.fallback_on, spans)
        if adapter is not None:
            extra["adapter"] = adapter
        when, outer = self.deadline, deadline()  # a run inside another keeps the earlier deadline
        if outer is not None:
            when = outer if when is None else min(when, outer)
        if when is not None:
            extra[DEADLINE_KEY] = when
        # DSPy's per-module and per-LM history grows without bound in a long-lived process; the
        # execution record keeps what it held, so runs leave it off.
        return dspy.context(lm=lm, usage_tracker=self.recorder, disable_history=True, **extra)

    def _validated(self) -> dict[str, Any]:
        return check_inputs(_input_interface(self.program), self.inputs)

    def _check_size(self) -> None:
        if self.too_large is not None:
            raise self.too_large

    def execute_sync(self) -> Any:
        self._check_size()
        inputs = self._validated()
        with self._context():
            return self.program(**inputs)

    async def execute_async(self) -> Any:
        self._check_size()
        inputs = self._validated()
        with self._context():
            return await acall_module(self.program, **inputs)

    def finish(self, execute: Any) -> RunResult:
        try:
            prediction = execute()
        except BaseException as exc:
            shown = self.failed(exc)
            self.settle()
            raise shown from exc
        result = self.succeeded(prediction)
        self.settle()
        return result

    async def afinish(self) -> RunResult:
        """:meth:`finish` for async callers: the program awaited, a sync settle off the event loop."""
        try:
            prediction = await self.execute_async()
        except BaseException as exc:
            shown = self.failed(exc)
            await self.asettle()
            raise shown from exc
        result = self.succeeded(prediction)
        await self.asettle()
        return result

    async def asettle(self) -> None:
        """:meth:`settle` without blocking the event loop (a no-op unless durability is ``sync``)."""
        if self.durability == "sync":
            await asyncio.to_thread(self.settle)

    def settle(self) -> None:
        """With ``sync`` durability, wait until the terminal record is committed (or spilled)."""
        if self.durability == "sync" and self.writer is not None:
            self.app._settle("sync")

    def _end(
        self, status: ExecutionStatus, outputs: Any = None, error: dict[str, Any] | None = None
    ) -> float:
        duration_ms = (time.perf_counter() - self.t0) * 1000
        self.status, self.error, self.duration_ms = status, error, duration_ms
        recorder = self.recorder
        self.usage, total_tokens, self.cost_usd = recorder.summary()
        if self.writer is not None:
            # Encoded now, not on the writer thread: the run's objects (spans, predictions, messages) then
            # die with the run instead of waiting in the writer's buffer, where they outlive the garbage
            # collector's young generation and make its full passes slower than this encoding is.
            self.writer.submit(
                {
                    **self.base,
                    **self._encoded,
                    "status": status,
                    "outputs": encoded(outputs),
                    "error": error,
                    "ended_at": utcnow(),
                    "duration_ms": duration_ms,
                    "usage": encoded(self.usage or None),
                    "total_tokens": total_tokens,
                    "cost_usd": self.cost_usd,
                    "trace": encoded(recorder.trace()) if self.level != "off" else None,
                }
            )
        if self.telemetry is not None and self.trace is not None:
            self._export(status, error, duration_ms, self.recorder, outputs)
        return duration_ms

    def _export(
        self,
        status: str,
        error: Mapping[str, Any] | None,
        duration_ms: float,
        source: Any,
        outputs: Any,
        offset_ms: float = 0.0,
    ) -> None:
        """Hand the finished run to telemetry (a queue put; spans are built on its thread)."""
        from dspex.telemetry.otel import RunExport

        assert self.telemetry is not None
        assert self.trace is not None
        self.telemetry.submit(
            RunExport(
                self.trace, self.base, status, error, self.started_at, duration_ms, source, outputs, offset_ms
            )
        )

    def succeeded(self, prediction: Any) -> RunResult:
        outputs = to_jsonable(prediction)
        duration_ms = self._end("succeeded", outputs)
        return RunResult(
            execution_id=self.id,
            outputs=outputs if isinstance(outputs, dict) else {"output": outputs},
            prediction=prediction,
            duration_ms=duration_ms,
            usage=self.usage,
            cost_usd=self.cost_usd,
            trace_id=self.base["trace_id"],
        )

    def failed(self, exc: BaseException) -> BaseException:
        """Record the failure and return the exception the caller should see.

        The record keeps the original error's type and message, with dspex's classification: its
        ``code`` and whether retrying may help.
        """
        import dspy

        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            self._end("cancelled", error={**error_info(exc), "code": "cancelled"})
            return exc
        shown: BaseException
        if isinstance(exc, WorkerError | DeadlineExceeded | LMError):
            exc.execution_id = self.id  # dspex's own LM errors (an open breaker) and the deadline
            shown = exc
        elif isinstance(exc, UserError):
            if isinstance(exc, ValidationError):
                exc.execution_id = self.id  # type: ignore[attr-defined]  # lets callers find the record
            shown = exc
        elif isinstance(exc, dspy.LMError):
            shown = LMError(
                f"the language model failed: {exc}",
                retryable=dspy.is_retryable_lm_error(exc),
                retry_after=getattr(exc, "retry_after", None),
                execution_id=self.id,
            )
        else:
            shown = ExecutionError(f"program raised {type(exc).__name__}: {exc}", execution_id=self.id)
        error = error_info(exc)
        error["code"] = getattr(shown, "code", "execution_error")
        if isinstance(shown, LMError):
            error["retryable"] = shown.retryable
        self._end("failed", error=error)
        return shown

    # -- runs on a pool: the worker executes, the caller's process records ------------------------------
    def outcome(self, result: RunResult | None, shown: BaseException | None) -> dict[str, Any]:
        """What a pool worker sends back (JSON): the terminal record's fields and the error to raise."""
        usage, total_tokens, cost_usd = self.recorder.summary()
        data: dict[str, Any] = {
            "status": self.status,
            "outputs": result.outputs if result is not None else None,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "usage": usage or None,
            "total_tokens": total_tokens,
            "cost_usd": cost_usd,
            # The span tree as JSON text inside the message: the caller stores it as it is, instead of
            # decoding a nested tree only to encode it again for its record.
            "trace_json": dumps(self.recorder.trace()) if self.level != "off" else None,
            "started_at": self.started_at.isoformat(),  # where the worker's span times start
        }
        if shown is not None:
            data["shown"] = {
                "code": getattr(shown, "code", "execution_error"),
                "message": str(shown),
                "retryable": getattr(shown, "retryable", False),
                "retry_after": getattr(shown, "retry_after", None),
                "issues": [
                    {"field": i.field, "expected": i.expected, "message": i.message}
                    for i in getattr(shown, "issues", ())
                ],
            }
        return data

    def adopt(self, outcome: Mapping[str, Any], *, worker_duration: bool = False) -> RunResult:
        """Write the terminal record a worker's outcome describes; return its result or raise its error.

        ``worker_duration``: the run lasted what the worker measured (a run of a shard, which waited
        behind the shard's earlier runs: that wait is not its own), not the time since it was created."""
        import dspy

        duration_ms = (time.perf_counter() - self.t0) * 1000
        if worker_duration and isinstance(outcome.get("duration_ms"), int | float):
            duration_ms = float(outcome["duration_ms"])
        status = outcome["status"]
        self.status, self.error, self.duration_ms = status, outcome.get("error"), duration_ms
        if self.writer is not None:
            self.writer.submit(
                {
                    **self.base,
                    "status": status,
                    "outputs": outcome.get("outputs"),
                    "error": outcome.get("error"),
                    "ended_at": utcnow(),
                    "duration_ms": duration_ms,
                    "usage": outcome.get("usage"),
                    "total_tokens": outcome.get("total_tokens"),
                    "cost_usd": outcome.get("cost_usd"),
                    "trace": _trace_json(outcome),
                }
            )
        if self.telemetry is not None and self.trace is not None:
            self._export(
                status,
                outcome.get("error"),
                duration_ms,
                outcome,
                outcome.get("outputs"),
                _offset(self, outcome),
            )
        if status == "succeeded":
            outputs = dict(outcome.get("outputs") or {})
            return RunResult(
                execution_id=self.id,
                outputs=outputs,
                prediction=dspy.Prediction(**outputs),
                duration_ms=duration_ms,
                usage=dict(outcome.get("usage") or {}),
                cost_usd=outcome.get("cost_usd"),
                trace_id=self.base["trace_id"],
            )
        raise _rebuilt(outcome.get("shown") or {}, self.id)


def _trace_json(outcome: Mapping[str, Any]) -> EncodedJSON | None:
    """A worker's span tree, as the JSON text it sent (see :meth:`_Run.outcome`)."""
    text = outcome.get("trace_json")
    return EncodedJSON(text) if isinstance(text, str) else None


def _offset(run: _Run, outcome: Mapping[str, Any]) -> float:
    """How long after ``run`` started the worker's run started (its span times count from there), in ms."""
    import datetime as dt

    started = outcome.get("started_at")
    if not isinstance(started, str):
        return 0.0
    try:
        worker = dt.datetime.fromisoformat(started)
    except ValueError:
        return 0.0
    return max(0.0, (worker - run.started_at).total_seconds() * 1000)


def _rebuilt(shown: Mapping[str, Any], execution_id: str) -> BaseException:
    """The caller-side error of a run that failed on a worker, from the worker's description of it."""
    code = shown.get("code", "execution_error")
    message = str(shown.get("message", "the run failed on a pool worker"))
    if code == "validation_error":
        error = ValidationError(
            message, issues=tuple(FieldIssue(**issue) for issue in shown.get("issues", ()))
        )
        error.execution_id = execution_id  # type: ignore[attr-defined]  # as inline runs set it
        return error
    if code in ("configuration_error", "spec_error", "signature_error"):
        return ConfigurationError(message)
    if code == "deadline_exceeded":
        return DeadlineExceeded(message, execution_id=execution_id)
    if code == "breaker_open":
        from dspex.lm.breaker import BreakerOpen

        return BreakerOpen(
            message, endpoint="", retry_after=shown.get("retry_after"), execution_id=execution_id
        )
    if code == "lm_error":
        return LMError(
            message,
            retryable=bool(shown.get("retryable")),
            retry_after=shown.get("retry_after"),
            execution_id=execution_id,
        )
    return ExecutionError(message, execution_id=execution_id)
