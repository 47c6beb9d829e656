"""OpenTelemetry export: every run's recorded span tree as OTel spans, sent over OTLP/HTTP.

Turn it on with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the OpenTelemetry variable; ``..._TRACES_ENDPOINT``,
``..._HEADERS`` and ``OTEL_SERVICE_NAME`` are honoured too) or a ``[telemetry]`` table in dspex.toml
(:class:`~dspex.settings.TelemetrySetting`)::

    [telemetry]
    endpoint = "http://127.0.0.1:6006"   # Phoenix; a collector: http://127.0.0.1:4318
    headers = { authorization = "LANGFUSE_AUTH" }   # values come from these environment variables
    capture_messages = false             # true: LM messages, completions and tool arguments on spans
    sample_ratio = 1.0

Needs the ``otel`` extra (``pip install 'dspex[otel]'``); nothing here is imported unless it is on.

**One span tree, two destinations.** A run records its spans once (:class:`~dspex.telemetry.RunRecorder`);
when the run ends, the caller's thread hands the finished recorder to :class:`Telemetry` (a queue put)
and a background thread turns it into ``ReadableSpan`` objects with the recorded start and end times,
which the SDK's ``BatchSpanProcessor`` batches to the exporter. So the caller pays nothing per DSPy event
for OpenTelemetry (no live SDK spans, no context switches per callback), the exported tree is exactly the
record's, and a run executed on a pool worker is exported by the caller's process from the span tree
the worker sent back: once, with the worker's spans under the run's span.

**Span shapes** (GenAI semantic conventions, plus ``dspex.*``):

- the run: ``run <program>``; ``dspex.program``, ``dspex.version_id``, ``dspex.execution_id``,
  ``dspex.status``, ``dspex.variables`` (JSON), ``dspex.cost_usd``, ``dspex.cache_hit``,
  ``dspex.usage.input_tokens``/``output_tokens``, ``dspex.placement.*`` (target, pool, worker,
  attempts), ``dspex.session_id``. Its parent is the caller's span (a ``traceparent``, see
  :mod:`dspex.telemetry.context`, or the current OpenTelemetry span), else it is the trace's root.
- an LM call: ``chat <model>``, kind CLIENT; ``gen_ai.operation.name = "chat"``,
  ``gen_ai.request.model`` (the model asked), ``gen_ai.response.model`` (the model that served:
  a fallback's, when one did), ``gen_ai.provider.name`` and ``gen_ai.system`` (the prefix of the model
  string), ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.request.temperature``/
  ``max_tokens`` when set, ``gen_ai.response.finish_reasons`` when the LM reported them,
  ``dspex.cost_usd``, ``dspex.resilience.*`` (served_by, fallback position, attempts, tried as JSON);
  with ``capture_messages``, ``gen_ai.input.messages`` and ``gen_ai.output.messages`` (JSON).
- a tool call: ``execute_tool <name>``; ``gen_ai.operation.name = "execute_tool"``, ``gen_ai.tool.name``
  (arguments and result as ``gen_ai.tool.call.arguments``/``result`` with ``capture_messages``).
- modules (``ChainOfThought``, ``Predict``, pipeline steps), adapter format/parse (the ``full`` trace
  level), evaluate and wait spans: their recorded name, ``dspex.span.kind``, and a wait's attributes
  (reason, model).

Every span carries ``dspex.span.kind``; a failed span has status ERROR with the error's message and
``error.type``. Exporter failures are logged by the SDK (logger ``opentelemetry``) and never fail a run;
a full queue drops runs with a warning (logger ``dspex.telemetry``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dspex.errors import ConfigurationError
from dspex.telemetry.context import RunTrace, TraceContext, caller_trace, new_span_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

    from dspex.settings import Settings

__all__ = ["RunExport", "SpanExport", "Telemetry"]

logger = logging.getLogger("dspex.telemetry")

MAX_ATTRIBUTE_CHARS = 100_000  # a captured payload longer than this is cut (a whole conversation can be MBs)
_ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass(frozen=True, slots=True)
class RunExport:
    """A finished run as handed to :meth:`Telemetry.submit` on the caller's path (nothing converted yet).

    ``source`` is the run's :class:`~dspex.telemetry.RunRecorder` (an inline run), or a pool worker's
    outcome (JSON with ``trace``, ``usage``...), whose span times start ``offset_ms`` after the run's.
    """

    trace: RunTrace
    base: Mapping[str, Any]  # the record's fields: id, program, version_id, variables, placement...
    status: str
    error: Mapping[str, Any] | None
    started_at: dt.datetime
    duration_ms: float
    source: Any
    outputs: Any = None
    offset_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SpanExport:
    """One finished span of dspex's own (a job attempt), for :meth:`Telemetry.submit`."""

    name: str
    trace: RunTrace
    started_at: dt.datetime
    duration_ms: float
    attributes: Mapping[str, Any]
    error: str | None = None


class Telemetry:
    """Exports runs to OpenTelemetry (see the module docstring); one per :class:`~dspex.App`.

    ``exporter`` is any OpenTelemetry ``SpanExporter`` (tests pass ``InMemorySpanExporter``); by default
    an OTLP/HTTP exporter to ``endpoint`` (a base URL; None: the ``OTEL_EXPORTER_OTLP_*`` variables). ::

        telemetry = Telemetry(InMemorySpanExporter())
        with App(settings, telemetry=telemetry) as app:
            app.run(program, inputs)
            telemetry.flush()
    """

    def __init__(
        self,
        exporter: SpanExporter | None = None,
        *,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        service_name: str | None = "dspex",
        capture_messages: bool = False,
        sample_ratio: float = 1.0,
        max_queue: int = 10_000,
        schedule_delay_ms: float = 500.0,
    ) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetry export needs the OpenTelemetry SDK: pip install 'dspex[otel]' "
                "(or turn telemetry off: [telemetry] enabled = false, or unset OTEL_EXPORTER_OTLP_ENDPOINT)"
            ) from exc
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            url = f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
            exporter = OTLPSpanExporter(endpoint=url, headers=dict(headers) if headers else None)
        if not 0.0 <= sample_ratio <= 1.0:
            raise ConfigurationError(f"sample_ratio is between 0 and 1, got {sample_ratio!r}")
        self.exporter = exporter
        self.capture_messages = capture_messages
        self.sample_ratio = sample_ratio
        self._processor = BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; given attributes win.
        self._resource = Resource.create({"service.name": service_name} if service_name else {})
        from dspex import __version__

        self._scope = InstrumentationScope("dspex", __version__)
        self._queue: queue.Queue[RunExport | SpanExport | threading.Event | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Telemetry | None:
        """The telemetry ``settings.telemetry`` and the ``OTEL_*`` environment ask for, or None when off.

        Explicit settings that cannot be honoured (the SDK missing, a header's variable unset) raise
        ``ConfigurationError``; an ``OTEL_EXPORTER_OTLP_ENDPOINT`` without the SDK is logged and ignored,
        since that variable may be meant for another program in the same environment.
        """
        env = os.environ if environ is None else environ
        config = settings.telemetry
        if config.enabled is False or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        from_env = next((env[name] for name in _ENV_ENDPOINTS if env.get(name)), None)
        if config.enabled is None and config.endpoint is None and from_env is None:
            return None
        headers = {}
        for header, variable in sorted(config.headers.items()):
            value = env.get(variable)
            if value is None:
                raise ConfigurationError(
                    f"[telemetry] headers: {header!r} comes from environment variable {variable!r}, which is "
                    "not set; set it, or remove the header"
                )
            headers[header] = value
        service = config.service_name
        explicit = config.enabled is True or config.endpoint is not None
        try:
            return cls(
                endpoint=config.endpoint,
                headers=headers,
                # OTEL_SERVICE_NAME names the service unless the settings chose a name of their own.
                service_name=None if service == "dspex" and env.get("OTEL_SERVICE_NAME") else service,
                capture_messages=config.capture_messages,
                sample_ratio=config.sample_ratio,
            )
        except ConfigurationError:
            if explicit:
                raise
            logger.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: runs are not "
                "exported; pip install 'dspex[otel]', or set [telemetry] enabled = false to silence this"
            )
            return None

    # -- the caller's path: cheap --------------------------------------------------------------------
    def begin(self, parent: TraceContext | None) -> RunTrace:
        """The trace of a run starting now: under ``parent``, else under the current OpenTelemetry span
        (the caller's own instrumentation), else a new trace sampled at ``sample_ratio``."""
        return RunTrace.start(parent if parent is not None else caller_trace(), self.sample_ratio)

    def submit(self, item: RunExport | SpanExport) -> None:
        """Queue a finished run for export (unsampled runs are dropped here); never blocks."""
        if not item.trace.sampled or self._closed:
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "telemetry queue full (%d runs): %d runs not exported so far; the exporter is slower "
                    "than the runs (check the OTLP endpoint) or lower [telemetry] sample_ratio",
                    self._queue.maxsize,
                    self.dropped,
                )

    # -- the export thread ---------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="dspex-telemetry", daemon=True)
                thread.start()
                self._thread = thread

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                self._processor.force_flush()
                item.set()
                continue
            try:
                for span in self.spans(item):
                    self._processor.on_end(span)
            except Exception:
                logger.exception(
                    "could not convert %s to OpenTelemetry spans; it is recorded, not exported",
                    f"run {item.base.get('id')}" if isinstance(item, RunExport) else f"span {item.name!r}",
                )

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Export every run submitted so far; False when that took longer than ``timeout`` seconds."""
        if self._thread is None or self._closed:
            return bool(self._processor.force_flush(int((timeout or 30.0) * 1000)))
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Export what is queued, then stop the thread and the exporter."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    # -- conversion (on the export thread) -----------------------------------------------------------
    def spans(self, item: RunExport | SpanExport) -> list[ReadableSpan]:
        """The run's OpenTelemetry spans: the run's span first, then its recorded spans."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        from dspex.telemetry.recorder import RunRecorder

        if isinstance(item, SpanExport):
            return [self._own_span(item)]
        source = item.source
        if isinstance(source, RunRecorder):
            recorded, usage, cost = source.trace().get("spans", []), source.usage, source.cost_usd
        else:
            text = source.get("trace_json")  # a pool worker's span tree, as JSON text
            trace = orjson.loads(text) if isinstance(text, str) else {}
            recorded, usage, cost = trace.get("spans", []), source.get("usage") or {}, source.get("cost_usd")
        flags = TraceFlags(TraceFlags.SAMPLED)
        trace_id = int(item.trace.trace_id, 16)

        def context(span_id: str) -> SpanContext:
            return SpanContext(trace_id, int(span_id, 16), is_remote=False, trace_flags=flags)

        def status(error: Mapping[str, Any] | None) -> Status:
            if error is None:
                return Status(StatusCode.UNSET)
            return Status(StatusCode.ERROR, str(error.get("message") or error.get("type") or "error"))

        start_ns = int(item.started_at.timestamp() * 1e9)
        end_ns = start_ns + int(item.duration_ms * 1e6)
        parent = None
        if item.trace.parent_id is not None:
            parent = SpanContext(trace_id, int(item.trace.parent_id, 16), is_remote=True, trace_flags=flags)
        run_context = context(item.trace.span_id)
        out = [
            ReadableSpan(
                f"run {item.base.get('program')}",
                context=run_context,
                parent=parent,
                attributes=self._run_attributes(item, usage, cost),
                kind=SpanKind.INTERNAL,
                status=status(item.error),
                start_time=start_ns,
                end_time=end_ns,
                resource=self._resource,
                instrumentation_scope=self._scope,
            )
        ]
        contexts: dict[int, SpanContext] = {}
        offset_ns = start_ns + int(item.offset_ms * 1e6)
        for span in recorded:
            own = context(new_span_id())
            contexts[span["index"]] = own
            above = span.get("parent")
            span_start = offset_ns + int(float(span.get("start_ms") or 0.0) * 1e6)
            span_end = span.get("end_ms")
            name, kind, attributes = self._span_shape(span)
            out.append(
                ReadableSpan(
                    name,
                    context=own,
                    parent=contexts.get(above, run_context) if above is not None else run_context,
                    attributes=attributes,
                    kind=SpanKind.CLIENT if kind == "lm" else SpanKind.INTERNAL,
                    status=status(span.get("error")),
                    start_time=span_start,
                    end_time=max(span_start, offset_ns + int(float(span_end) * 1e6)) if span_end else end_ns,
                    resource=self._resource,
                    instrumentation_scope=self._scope,
                )
            )
        return out

    def _own_span(self, item: SpanExport) -> ReadableSpan:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        flags, trace_id = TraceFlags(TraceFlags.SAMPLED), int(item.trace.trace_id, 16)
        parent = None
        if item.trace.parent_id is not None:
            parent = SpanContext(trace_id, int(item.trace.parent_id, 16), is_remote=True, trace_flags=flags)
        start_ns = int(item.started_at.timestamp() * 1e9)
        return ReadableSpan(
            item.name,
            context=SpanContext(trace_id, int(item.trace.span_id, 16), is_remote=False, trace_flags=flags),
            parent=parent,
            attributes=dict(item.attributes),
            status=Status(StatusCode.ERROR, item.error) if item.error else Status(StatusCode.UNSET),
            start_time=start_ns,
            end_time=start_ns + int(item.duration_ms * 1e6),
            resource=self._resource,
            instrumentation_scope=self._scope,
        )

    def _run_attributes(
        self, item: RunExport, usage: Mapping[str, Any], cost: float | None
    ) -> dict[str, Any]:
        base = item.base
        attributes: dict[str, Any] = {
            "dspex.span.kind": "run",
            "dspex.program": str(base.get("program")),
            "dspex.execution_id": str(base.get("id")),
            "dspex.status": item.status,
            "dspex.cache_hit": bool(base.get("cache_hit")),
            "dspex.usage.input_tokens": sum(int(u.get("prompt_tokens") or 0) for u in usage.values()),
            "dspex.usage.output_tokens": sum(int(u.get("completion_tokens") or 0) for u in usage.values()),
        }
        _put(attributes, "dspex.version_id", base.get("version_id"))
        _put(attributes, "dspex.session_id", base.get("session_id"))
        _put(attributes, "dspex.cost_usd", cost)
        if base.get("variables"):
            attributes["dspex.variables"] = _json(base["variables"])
        for key, value in (base.get("placement") or {}).items():
            _put(attributes, f"dspex.placement.{key}", value)
        if item.error is not None:
            _put(attributes, "error.type", item.error.get("code") or item.error.get("type"))
        if self.capture_messages:
            attributes["dspex.inputs"] = _json(base.get("inputs"))
            if item.outputs is not None:
                attributes["dspex.outputs"] = _json(item.outputs)
        return attributes

    def _span_shape(self, span: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """A recorded span's OpenTelemetry name, kind and attributes."""
        kind, name = str(span.get("kind")), str(span.get("name"))
        attributes: dict[str, Any] = {"dspex.span.kind": kind}
        extra = span.get("attrs") or {}
        if span.get("error") is not None:
            _put(attributes, "error.type", span["error"].get("code") or span["error"].get("type"))
        if kind == "lm":
            requested, served = name, span.get("model") or name
            provider = requested.split("/", 1)[0] if "/" in requested else None
            attributes.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": requested})
            attributes["gen_ai.response.model"] = served
            _put(attributes, "gen_ai.provider.name", provider)
            _put(attributes, "gen_ai.system", provider)
            usage = span.get("usage") or {}
            _put(attributes, "gen_ai.usage.input_tokens", usage.get("prompt_tokens"))
            _put(attributes, "gen_ai.usage.output_tokens", usage.get("completion_tokens"))
            _put(attributes, "dspex.cost_usd", span.get("cost_usd"))
            inputs = span.get("inputs") or {}
            kwargs = inputs.get("kwargs") or {} if isinstance(inputs, Mapping) else {}
            for key in ("temperature", "max_tokens", "top_p"):
                _put(attributes, f"gen_ai.request.{key}", kwargs.get(key))
            reasons = _finish_reasons(span.get("outputs"))
            if reasons:
                attributes["gen_ai.response.finish_reasons"] = reasons
            resilience = extra.get("resilience")
            if isinstance(resilience, Mapping):
                tried = resilience.get("tried") or []
                _put(attributes, "dspex.resilience.served_by", resilience.get("served_by"))
                attributes["dspex.resilience.fallback"] = int(resilience.get("fallback") or 0)
                attributes["dspex.resilience.attempts"] = len(tried)
                attributes["dspex.resilience.tried"] = _json(tried)
            if self.capture_messages and isinstance(inputs, Mapping):
                messages = inputs.get("messages")
                if messages is None and inputs.get("prompt") is not None:
                    messages = [{"role": "user", "content": inputs["prompt"]}]
                attributes["gen_ai.input.messages"] = _json(messages)
                attributes["gen_ai.output.messages"] = _json(span.get("outputs"))
            return f"chat {requested}", kind, attributes
        if kind == "tool":
            attributes.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name})
            if self.capture_messages:
                attributes["gen_ai.tool.call.arguments"] = _json(span.get("inputs"))
                attributes["gen_ai.tool.call.result"] = _json(span.get("outputs"))
            return f"execute_tool {name}", kind, attributes
        for key, value in extra.items():
            _put(attributes, f"dspex.{key}", value)
        if kind in ("adapter_format", "adapter_parse"):
            return f"{kind.removeprefix('adapter_')} {name}", kind, attributes
        if kind == "wait":
            return f"wait {name}", kind, attributes
        return name, kind, attributes


def _put(attributes: dict[str, Any], key: str, value: Any) -> None:
    """Set an attribute when it has a value OpenTelemetry takes (None is left out, the rest as JSON)."""
    if value is None:
        return
    if isinstance(value, bool | int | float | str):
        attributes[key] = value
    else:
        attributes[key] = _json(value)


def _json(value: Any) -> str:
    from dspex.jsonable import dumps

    text = dumps(value)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "...(cut)"


def _finish_reasons(outputs: Any) -> list[str]:
    """The finish reasons an LM call's outputs carry (dicts with ``finish_reason``), in order."""
    if not isinstance(outputs, list):
        return []
    reasons = []
    for output in outputs:
        reason = output.get("finish_reason") if isinstance(output, Mapping) else None
        if isinstance(reason, str):
            reasons.append(reason)
    return reasons
