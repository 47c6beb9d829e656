"""One run's trace: DSPy callback events turned into a tree of spans, with usage and cost per LM call.

A :class:`RunRecorder` is created per run and handed to DSPy twice, through its supported hooks::

    recorder = RunRecorder(prices=prices)
    with dspy.context(callbacks=[*callbacks, recorder], usage_tracker=recorder):
        prediction = program(**inputs)
    recorder.trace()      # JSON: {"v": 1, "spans": [...]}
    recorder.usage        # {"openai/gpt-4o-mini": {"prompt_tokens": ..., "calls": 2, ...}}

As a callback it opens a span on every ``on_*_start`` (module, LM call, adapter format/parse, tool,
evaluate) and closes it on the matching ``on_*_end``; the parent of a span is the span open in the
same context when it started (a ``ContextVar``, so threads started by ``dspy.Parallel`` and asyncio
tasks nest correctly). As the usage tracker (DSPy calls ``add_usage(model, usage)`` inside each LM
call) it attaches token counts and cost to the LM span that is open, and sums them per model. A
tracker that was active before the run (``dspy.track_usage()``) still receives every entry.

Payloads (inputs, outputs, messages) are kept by reference and converted to JSON only when
:meth:`trace` is called, which the background writer does off the caller's path.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Literal

from dspy.utils.callback import BaseCallback

from dspex.lm.pricing import Prices
from dspex.telemetry.usage import UsageTotals

__all__ = ["RunRecorder", "Span", "SpanKind", "current_recorder"]

SpanKind = Literal["module", "lm", "adapter_format", "adapter_parse", "tool", "evaluate", "wait"]
TRACE_VERSION = 1

# (recorder identity, span index) of the innermost open span in this context.
_open_span: ContextVar[tuple[int, int] | None] = ContextVar("dspex_open_span", default=None)


@dataclass(slots=True)
class Span:
    """One step of a run. Times are milliseconds since the run started."""

    index: int
    parent: int | None
    kind: SpanKind
    name: str
    start_ms: float
    end_ms: float | None = None
    inputs: Any = None
    outputs: Any = None
    error: dict[str, Any] | None = None
    model: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    attrs: dict[str, Any] | None = None  # what a layer adds (resilience: the model that served, attempts)

    def to_json(self) -> dict[str, Any]:
        """The span as a dict; payloads stay as they are, for :func:`dspex.jsonable.dumps` to encode."""
        data: dict[str, Any] = {
            "index": self.index,
            "parent": self.parent,
            "kind": self.kind,
            "name": self.name,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }
        for key in ("error", "model", "usage", "cost_usd", "attrs"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


def _name(instance: Any) -> str:
    return str(getattr(instance, "model", None) or getattr(instance, "name", None) or type(instance).__name__)


def error_info(exc: BaseException) -> dict[str, Any]:
    """The JSON description of an error stored in spans and execution records."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        info["code"] = code
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        info["retryable"] = retryable
    return info


@dataclass(eq=False)
class RunRecorder(BaseCallback):  # type: ignore[misc]  # DSPy's BaseCallback is untyped
    """Collects the spans, usage and cost of one run. See the module docstring."""

    prices: Prices | None = None
    parent_tracker: Any = None
    spans: list[Span] = field(default_factory=list)
    _usage: UsageTotals = field(init=False)
    _open: dict[str, tuple[int, Token[tuple[int, int] | None]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self._usage = UsageTotals(prices=self.prices, parent=self.parent_tracker)

    # -- spans -----------------------------------------------------------------------------------
    def _start(self, call_id: str, kind: SpanKind, instance: Any, inputs: Any) -> None:
        current = _open_span.get()
        parent = current[1] if current is not None and current[0] == id(self) else None
        now = (time.perf_counter() - self._t0) * 1000
        with self._lock:
            if parent is None and self.spans and self.spans[0].end_ms is None:
                # Started in a thread our context did not reach (dspy.Parallel copies only DSPy's own
                # settings into its workers): it still belongs to the run, under its root span.
                parent = 0
            index = len(self.spans)
            self.spans.append(Span(index, parent, kind, _name(instance), now, inputs=inputs))
        token = _open_span.set((id(self), index))
        self._open[call_id] = (index, token)

    def _end(self, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        opened = self._open.pop(call_id, None)
        if opened is None:  # an end without a start (callbacks added mid-call): nothing to close
            return
        index, token = opened
        try:
            _open_span.reset(token)
        except ValueError:  # ended in another context than it started (a generator finished elsewhere)
            _open_span.set(self._parent_key(index))
        span = self.spans[index]
        span.end_ms = (time.perf_counter() - self._t0) * 1000
        span.outputs = outputs
        if exception is not None:
            span.error = error_info(exception)

    def _parent_key(self, index: int) -> tuple[int, int] | None:
        parent = self.spans[index].parent
        return None if parent is None else (id(self), parent)

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, "module", instance, inputs.get("kwargs", inputs))

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        payload = {"messages": inputs.get("messages"), "prompt": inputs.get("prompt")}
        if inputs.get("kwargs"):
            payload["kwargs"] = inputs["kwargs"]
        self._start(call_id, "lm", instance, payload)
        self.spans[self._open[call_id][0]].model = getattr(instance, "model", None)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, "adapter_format", instance, None)

    def on_adapter_format_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> None:
        self._end(call_id, None, exception)

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, "adapter_parse", instance, {"completion": inputs.get("completion")})

    def on_adapter_parse_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> None:
        self._end(call_id, outputs, exception)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, "tool", instance, inputs)

    def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, "evaluate", instance, None)

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._end(call_id, outputs, exception)

    # -- what other layers add (resilience) ------------------------------------------------------------
    def _innermost(self, kind: SpanKind) -> Span | None:
        current = _open_span.get()
        if current is None or current[0] != id(self):
            return None
        with self._lock:
            span = self.spans[current[1]]
        return span if span.kind == kind else None

    def annotate(self, kind: SpanKind, *, model: str | None = None, **attrs: Any) -> None:
        """Add ``attrs`` to the innermost open span when it is of ``kind`` (and set its model)."""
        span = self._innermost(kind)
        if span is None:
            return
        if model is not None:
            span.model = model
        span.attrs = {**(span.attrs or {}), **attrs}

    def add_span(self, kind: SpanKind, name: str, started: float, ended: float, **attrs: Any) -> None:
        """A finished span under the innermost open one; ``started``/``ended`` are ``perf_counter()``."""
        current = _open_span.get()
        parent = current[1] if current is not None and current[0] == id(self) else None
        with self._lock:
            if parent is None and self.spans and self.spans[0].end_ms is None:
                parent = 0
            self.spans.append(
                Span(
                    len(self.spans),
                    parent,
                    kind,
                    name,
                    (started - self._t0) * 1000,
                    (ended - self._t0) * 1000,
                    attrs=attrs or None,
                )
            )

    def __deepcopy__(self, memo: dict[int, Any]) -> RunRecorder:
        # dspy.Parallel deep-copies the usage tracker into each worker thread so that DSPy's own tracker
        # is not shared across threads. This one is thread-safe and must see the whole run, workers too.
        return self

    # -- usage tracker protocol (dspy.settings.usage_tracker) ----------------------------------------
    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        """Called by DSPy once per LM call with that call's token usage."""
        call = self._usage.add_usage(lm, usage_entry)
        current = _open_span.get()
        if current is not None and current[0] == id(self):
            with self._lock:
                span = self.spans[current[1]]
            if span.kind == "lm":
                span.usage = {
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "total_tokens": call.total_tokens,
                }
                span.cost_usd = call.cost_usd

    # -- results ---------------------------------------------------------------------------------
    @property
    def usage(self) -> dict[str, dict[str, Any]]:
        """Token usage per model: calls, prompt, completion and total tokens, and cost (None if unknown)."""
        return self._usage.snapshot()

    @property
    def total_tokens(self) -> int:
        return self._usage.total_tokens

    @property
    def cost_usd(self) -> float | None:
        """The run's cost; None when any model's price is unknown (unknown is not zero)."""
        return self._usage.cost_usd

    def trace(self) -> dict[str, Any]:
        """The span tree: ``{"v": 1, "spans": [...]}``, parents before children.

        Payloads are the objects DSPy passed (messages, predictions...); :func:`dspex.jsonable.dumps`
        (the store's JSON encoder) or :func:`~dspex.jsonable.to_jsonable` turns them into JSON.
        """
        with self._lock:
            spans = list(self.spans)
        return {"v": TRACE_VERSION, "spans": [span.to_json() for span in spans]}


def current_recorder() -> RunRecorder | None:
    """The recorder of the run this code executes in (DSPy's usage tracker there), or None."""
    import dspy

    tracker = dspy.settings.usage_tracker
    return tracker if isinstance(tracker, RunRecorder) else None
