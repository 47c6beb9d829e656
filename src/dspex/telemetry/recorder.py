"""One run's trace: a tree of spans, with usage and cost per LM call.

A :class:`RunRecorder` is created per run. :mod:`dspex.telemetry.instrument` finds it in the run's
``dspy.context`` and calls :meth:`RunRecorder.open` / :meth:`RunRecorder.close` around every module,
LM call, tool, evaluation (and, at the ``full`` level, adapter format/parse); DSPy also gets it as the
run's usage tracker::

    recorder = RunRecorder(prices=prices)
    with dspy.context(usage_tracker=recorder, dspex_recorder=recorder):
        prediction = program(**inputs)
    recorder.trace()      # JSON: {"v": 1, "spans": [...]}
    recorder.usage        # {"openai/gpt-4o-mini": {"prompt_tokens": ..., "calls": 2, ...}}

The parent of a span is the span open in the same context when it started (a ``ContextVar``, so
asyncio tasks nest correctly; a span started in a ``dspy.Parallel`` worker thread goes under the run's
root span). As the usage tracker (DSPy calls ``add_usage(model, usage)`` inside each LM call) it
attaches token counts and cost to the LM span that is open, and sums them per model. A tracker that was
active before the run (``dspy.track_usage()``) still receives every entry. At the ``off`` trace level
the run leaves the recorder out of the context under ``dspex_recorder``: it then keeps the usage only.

Payloads (inputs, outputs, messages) are kept by reference and converted to JSON only when
:meth:`trace` is called, which the background writer does off the caller's path.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Literal

from dspex.jsonable import RECORD_KINDS, fields_of
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
        """The span as a dict; payloads stay as they are, for :func:`dspex.jsonable.dumps` to encode (a
        DSPy prediction as its fields, :func:`~dspex.jsonable.fields_of`)."""
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
        if type(self.outputs) in RECORD_KINDS:  # a module's prediction (inputs are keyword arguments)
            data["outputs"] = fields_of(self.outputs)
        # Only what is set, spelled out: this runs for every span of every recorded run.
        if self.error is not None:
            data["error"] = self.error
        if self.model is not None:
            data["model"] = self.model
        if self.usage is not None:
            data["usage"] = self.usage
        if self.cost_usd is not None:
            data["cost_usd"] = self.cost_usd
        if self.attrs is not None:
            data["attrs"] = self.attrs
        return data


_object_attribute = object.__getattribute__
_perf_counter = time.perf_counter
_PLAIN: set[type] = set()  # classes with no ``model`` or ``name`` attribute of their own (only instances')


def _name(instance: Any) -> str:
    """A span's name: the LM's model, else the instance's ``name`` (a tool, a pipeline step), else its class."""
    try:
        # DSPy keeps these on the instance. Its dict read the plain way: through getattr, a dspy.Module's
        # own __getattribute__ (Python) ran for it, about 3,000 instructions per module span.
        own = _object_attribute(instance, "__dict__")
    except AttributeError:  # slots only
        own = None
    if own is not None:
        value = own.get("model") or own.get("name")
        if value:
            return str(value)
        cls = type(instance)
        if cls in _PLAIN:
            return cls.__name__
        if not hasattr(cls, "model") and not hasattr(cls, "name"):
            _PLAIN.add(cls)
            return cls.__name__
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


Opened = tuple[int, Token[tuple[int, int] | None]]  # what open() returns and close() takes


class RunRecorder:
    """Collects the spans, usage and cost of one run. See the module docstring.

    ``_t0`` is the ``perf_counter()`` span times count from (default: now). A plain class with slots, not
    a dataclass: one is built per run, and the dataclass's ``__init__`` with default factories and
    ``__post_init__`` cost twice as much.
    """

    __slots__ = ("__weakref__", "_lock", "_t0", "_usage", "parent_tracker", "prices", "spans")

    def __init__(
        self,
        prices: Prices | None = None,
        parent_tracker: Any = None,
        spans: list[Span] | None = None,
        _t0: float | None = None,
    ) -> None:
        self.prices = prices
        self.parent_tracker = parent_tracker
        self.spans: list[Span] = [] if spans is None else spans
        self._lock = threading.Lock()
        self._t0 = time.perf_counter() if _t0 is None else _t0
        self._usage = UsageTotals(prices=prices, parent=parent_tracker)

    # -- spans -----------------------------------------------------------------------------------
    def open(self, kind: SpanKind, instance: Any, inputs: Any) -> Opened:
        """Start a span under the innermost open one; hand what this returns to :meth:`close`."""
        current = _open_span.get()
        me = id(self)
        parent = current[1] if current is not None and current[0] == me else None
        span = Span(0, parent, kind, _name(instance), (_perf_counter() - self._t0) * 1000, None, inputs)
        if kind == "lm":
            span.model = getattr(instance, "model", None)
        spans = self.spans
        with self._lock:
            if parent is None and spans and spans[0].end_ms is None:
                # Started in a thread our context did not reach (dspy.Parallel copies only DSPy's own
                # settings into its workers): it still belongs to the run, under its root span.
                span.parent = 0
            span.index = index = len(spans)
            spans.append(span)
        return index, _open_span.set((me, index))

    def close(self, opened: Opened, outputs: Any, exception: BaseException | None) -> None:
        """End the span :meth:`open` started."""
        index, token = opened
        try:
            _open_span.reset(token)
        except ValueError:  # ended in another context than it started (a generator finished elsewhere)
            _open_span.set(self._parent_key(index))
        span = self.spans[index]
        span.end_ms = (_perf_counter() - self._t0) * 1000
        span.outputs = outputs
        if exception is not None:
            span.error = error_info(exception)

    def _parent_key(self, index: int) -> tuple[int, int] | None:
        parent = self.spans[index].parent
        return None if parent is None else (id(self), parent)

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
        prompt, completion, total, cost = self._usage.count(lm, usage_entry)
        current = _open_span.get()
        if current is not None and current[0] == id(self):
            with self._lock:
                span = self.spans[current[1]]
            if span.kind == "lm":
                span.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
                span.cost_usd = cost

    # -- results ---------------------------------------------------------------------------------
    @property
    def usage(self) -> dict[str, dict[str, Any]]:
        """Token usage per model: calls, prompt, completion and total tokens, and cost (None if unknown)."""
        return self._usage.snapshot()

    def summary(self) -> tuple[dict[str, dict[str, Any]], int, float | None]:
        """:attr:`usage`, :attr:`total_tokens` and :attr:`cost_usd` at once (see ``UsageTotals.summary``)."""
        return self._usage.summary()

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
    """The recorder of the run this code executes in, when that run records spans; else None."""
    from dspex.telemetry.instrument import active

    return active()
