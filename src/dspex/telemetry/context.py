"""Trace context: which OpenTelemetry trace a run belongs to, without the OpenTelemetry SDK.

A W3C ``traceparent`` (``00-<trace id>-<parent span id>-<flags>``) arriving with a request, a pool task
or a job is made current for the code that handles it; every run started there belongs to that trace,
as a child of that span::

    with continue_trace(request.headers.get("traceparent")):   # None or an invalid header: no-op
        result = await app.arun("qa", inputs)
    result.trace_id                                             # the caller's trace id

Each run has a :class:`RunTrace`: its trace id, its own span id (made when the run starts, so a pool
task can carry it before any span exists), its parent and whether it is sampled. This module is
imported on every run, so it stays small: no OpenTelemetry import (the exporter is
:mod:`dspex.telemetry.otel`), ids from ``random.getrandbits`` as the SDK's own generator makes them.
When an OpenTelemetry API is already loaded in the process, :func:`continue_trace` also makes the
context current there, so the caller's own instrumentation inside the block joins the same trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = [
    "RunTrace",
    "TraceContext",
    "caller_trace",
    "continue_trace",
    "current_trace",
    "job_trace",
    "new_span_id",
    "new_trace_id",
]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

_current: ContextVar[TraceContext | None] = ContextVar("dspex_trace_context", default=None)


def new_trace_id() -> str:
    """A random, valid trace id (32 lowercase hex digits)."""
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """A random, valid span id (16 lowercase hex digits)."""
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace id, the span new work goes under, and the sampling decision."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @classmethod
    def parse(cls, traceparent: str | None) -> TraceContext | None:
        """The context a W3C ``traceparent`` header names; None when it is absent or invalid.

        Invalid headers are ignored, as the W3C recommendation says (all-zero ids, version ``ff``,
        a version-00 header with extra fields, wrong lengths or upper case). ::

            TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").sampled  # True
        """
        if not traceparent:
            return None
        match = _TRACEPARENT.match(traceparent.strip())
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return cls(trace_id, span_id, bool(int(flags, 16) & 1))

    @property
    def traceparent(self) -> str:
        """This context as a W3C ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


@dataclass(frozen=True, slots=True)
class RunTrace:
    """One run's place in its trace: ``span_id`` is the run's own span, ``parent_id`` the caller's."""

    trace_id: str
    span_id: str
    parent_id: str | None
    sampled: bool

    @classmethod
    def start(cls, parent: TraceContext | None, sample_ratio: float = 1.0) -> RunTrace:
        """A new run span under ``parent`` (its trace and sampling decision), or a new trace's root.

        A new trace is sampled when its id falls in ``sample_ratio``, as OpenTelemetry's
        ``TraceIdRatioBased`` sampler decides (the low 64 bits of the id against the ratio's bound).
        """
        if parent is not None:
            return cls(parent.trace_id, new_span_id(), parent.span_id, parent.sampled)
        trace_id = new_trace_id()
        sampled = sample_ratio >= 1.0 or int(trace_id[16:], 16) < round(sample_ratio * (1 << 64))
        return cls(trace_id, new_span_id(), None, sampled)

    @property
    def context(self) -> TraceContext:
        """The context work under this run continues in (a pool task, the worker's own spans)."""
        return TraceContext(self.trace_id, self.span_id, self.sampled)


def current_trace() -> TraceContext | None:
    """The trace context code here runs in (:func:`continue_trace`), or None."""
    return _current.get()


def caller_trace() -> TraceContext | None:
    """The context new work joins: :func:`current_trace`, else the current OpenTelemetry span of the
    caller's own instrumentation (looked at only when ``opentelemetry`` is already imported)."""
    current = _current.get()
    if current is None and "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            current = TraceContext(
                f"{span_context.trace_id:032x}",
                f"{span_context.span_id:016x}",
                bool(span_context.trace_flags.sampled),
            )
    return current


def job_trace(job_id: str, attempt: int, traceparent: Any = None) -> RunTrace:
    """The trace of one attempt of a job: the submitter's (``traceparent`` kept in its payload), else one
    named by the job id, so that every attempt, on any worker, and every run inside it share it. The
    attempt's span id is derived from the job id and attempt, the same wherever it is computed."""
    parent = TraceContext.parse(traceparent) if isinstance(traceparent, str) else None
    if parent is not None:
        trace_id, sampled = parent.trace_id, parent.sampled
    elif re.fullmatch(r"[0-9a-f]{32}", job_id) and job_id != _ZERO_TRACE:
        trace_id, sampled = job_id, True
    else:
        trace_id, sampled = hashlib.sha256(job_id.encode()).hexdigest()[:32], True
    span_id = hashlib.sha256(f"{job_id}:{attempt}".encode()).hexdigest()[:16]
    return RunTrace(trace_id, span_id, parent.span_id if parent else None, sampled)


@contextlib.contextmanager
def continue_trace(context: TraceContext | str | None) -> Iterator[TraceContext | None]:
    """Make ``context`` (or the one a ``traceparent`` string names) current in this block.

    None or an invalid header leave everything as it is. When ``opentelemetry`` is already imported in
    this process (the caller instruments its own code), the context is attached there as well, so spans
    the caller's instrumentation makes inside the block are children of it.
    """
    parsed = TraceContext.parse(context) if isinstance(context, str) or context is None else context
    if parsed is None:
        yield None
        return
    token = _current.set(parsed)
    otel_token = _attach_otel(parsed) if "opentelemetry.trace" in sys.modules else None
    try:
        yield parsed
    finally:
        if otel_token is not None:
            from opentelemetry import context as otel_context

            otel_context.detach(otel_token)
        _current.reset(token)


def _attach_otel(parsed: TraceContext) -> Token[Context]:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    span_context = trace.SpanContext(
        int(parsed.trace_id, 16),
        int(parsed.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(1 if parsed.sampled else 0),
    )
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    return otel_context.attach(ctx)
