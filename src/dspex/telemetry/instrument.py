"""Spans without DSPy's per-event callback dispatch: DSPex's one instrumentation layer.

DSPy reports module, LM, adapter, tool and evaluation calls to callbacks through ``with_callbacks``,
which on every event binds the call's arguments (``inspect.getcallargs``), draws a ``uuid4``, runs a
``Protocol`` ``isinstance`` check and looks up a handler per callback. A run recorded that way paid
0.5x-0.7x a bare ChainOfThought call in dispatch alone (``benchmarks/recording_overhead.py``).

Here the run's :class:`~dspex.telemetry.recorder.RunRecorder` is put in the run's ``dspy.context``
under :data:`RECORDER_KEY` (a DSPy setting, so ``dspy.Parallel`` threads and asyncio tasks see it as
they see the run's LM), and the entry points DSPy decorates with ``with_callbacks`` are wrapped once
per process by :func:`install`:

- ``dspy.Module.__call__`` / ``acall`` (every module, and ``Predict``, which calls up to them): module spans;
- ``dspy.BaseLM.__call__`` / ``acall``: LM spans (DSPex's ``ResilientLM`` opens its own, the same way);
- ``dspy.Tool.__call__`` / ``acall``: tool spans; ``dspy.Evaluate.__call__``: evaluation spans.

Each wrapper reads one context variable and, outside a recorded run, calls straight through to DSPy's
method, whose own fast path then finds no callbacks: a few hundred nanoseconds per call. Inside a run
it opens a span, calls DSPy's method (so user callbacks still fire, exactly once), and closes the span.
Adapter format/parse spans come from the run's adapter (:func:`recording_adapter`, the ``full`` level),
not from a global patch: adapters wrap their methods per subclass.

Levels (``trace`` setting): ``lean``, the default (module, LM and tool spans: an LM span has the
messages, the completion, the model asked and served, tokens and cost), ``full`` (``lean`` plus the
adapter's format and parse spans, opt-in: what they say is already on the LM span, messages in and text
out; they are two of a ChainOfThought call's five spans), ``off`` (no span tree: the record keeps status,
inputs, outputs, usage and cost). A span costs 35,000-45,000 instructions all told (callgrind; README,
"What recording costs"): building it, its JSON, and the bigger row the writer stores.
A module that overrides ``__call__`` without calling ``super().__call__`` gets no span of its own; the
modules it calls still do.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from dspy.dsp.utils.settings import thread_local_overrides

if TYPE_CHECKING:
    from dspex.telemetry.recorder import RunRecorder, SpanKind

__all__ = [
    "RECORDER_KEY",
    "TRACE_LEVELS",
    "TraceLevel",
    "active",
    "install",
    "recording_adapter",
    "with_mixin",
]

TraceLevel = Literal["full", "lean", "off"]
TRACE_LEVELS: tuple[TraceLevel, ...] = ("full", "lean", "off")

RECORDER_KEY = "dspex_recorder"  # the run's recorder, in dspy.context (absent: nothing records spans)

_installed = False
_install_lock = threading.Lock()


def active() -> RunRecorder | None:
    """The recorder of the run this code executes in, when that run records spans."""
    recorder: RunRecorder | None = thread_local_overrides.get().get(RECORDER_KEY)
    return recorder


def _sync(kind: SpanKind, fn: Callable[..., Any], payload: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = thread_local_overrides.get().get(RECORDER_KEY)
        if recorder is None:
            return fn(self, *args, **kwargs)
        opened = recorder.open(kind, self, payload(args, kwargs))
        try:
            outputs = fn(self, *args, **kwargs)
        except BaseException as exc:
            recorder.close(opened, None, exc)
            raise
        recorder.close(opened, outputs, None)
        return outputs

    traced.__dspex_traced__ = fn  # type: ignore[attr-defined]
    return traced


def _async(kind: SpanKind, fn: Callable[..., Any], payload: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = thread_local_overrides.get().get(RECORDER_KEY)
        if recorder is None:
            return await fn(self, *args, **kwargs)
        opened = recorder.open(kind, self, payload(args, kwargs))
        try:
            outputs = await fn(self, *args, **kwargs)
        except BaseException as exc:
            recorder.close(opened, None, exc)
            raise
        recorder.close(opened, outputs, None)
        return outputs

    traced.__dspex_traced__ = fn  # type: ignore[attr-defined]
    return traced


def _kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a module or tool span keeps as its inputs (what DSPy's callbacks see as ``kwargs``)."""
    if args:
        return {"args": list(args), **kwargs}
    return kwargs


def lm_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """An LM span's inputs: the messages (or prompt) and the call's keyword arguments."""
    prompt = args[0] if args else kwargs.get("prompt")
    payload: dict[str, Any] = {"messages": kwargs.get("messages"), "prompt": prompt}
    extra = {k: v for k, v in kwargs.items() if k not in ("prompt", "messages")}
    if extra:
        payload["kwargs"] = extra
    return payload


def _tool_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A tool span's inputs, as DSPy's callbacks saw them: ``{"kwargs": {...}}``."""
    return {"kwargs": kwargs} if not args else {"args": list(args), "kwargs": kwargs}


def _none(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    return None


def _targets() -> list[tuple[type, str, SpanKind, Callable[..., Any]]]:
    import dspy

    return [
        (dspy.Module, "__call__", "module", _kwargs),
        (dspy.Module, "acall", "module", _kwargs),
        (dspy.BaseLM, "__call__", "lm", lm_payload),
        (dspy.BaseLM, "acall", "lm", lm_payload),
        (dspy.Tool, "__call__", "tool", _tool_payload),
        (dspy.Tool, "acall", "tool", _tool_payload),
        (dspy.Evaluate, "__call__", "evaluate", _none),
    ]


def traced(kind: SpanKind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: the method records a ``kind`` span in the active run. For classes that override a
    wrapped entry point without calling up to it (DSPex's ``ResilientLM.__call__``)."""
    import inspect

    payload = lm_payload if kind == "lm" else _kwargs

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _async(kind, fn, payload) if inspect.iscoroutinefunction(fn) else _sync(kind, fn, payload)

    return decorate


def install() -> None:
    """Wrap DSPy's entry points (once per process; idempotent, thread-safe)."""
    global _installed
    if _installed:
        return
    import inspect

    with _install_lock:
        if _installed:
            return
        for cls, name, kind, payload in _targets():
            fn = cls.__dict__[name]
            if hasattr(fn, "__dspex_traced__"):
                continue
            wrap = _async if inspect.iscoroutinefunction(fn) else _sync
            setattr(cls, name, wrap(kind, fn, payload))
        _installed = True


# -- adapter spans (the ``full`` level) ------------------------------------------------------------------
class _RecordingAdapter:
    """Mixed into the run's adapter class: ``format`` and ``parse`` record adapter spans."""

    def format(self, signature: Any, demos: Any, inputs: Any) -> Any:
        recorder = thread_local_overrides.get().get(RECORDER_KEY)  # active(), inlined: runs per LM call
        if recorder is None:
            return super().format(signature, demos, inputs)  # type: ignore[misc]
        opened = recorder.open("adapter_format", self, None)
        try:
            messages = super().format(signature, demos, inputs)  # type: ignore[misc]
        except BaseException as exc:
            recorder.close(opened, None, exc)
            raise
        recorder.close(opened, None, None)
        return messages

    def parse(self, signature: Any, completion: str) -> Any:
        recorder = thread_local_overrides.get().get(RECORDER_KEY)
        if recorder is None:
            return super().parse(signature, completion)  # type: ignore[misc]
        opened = recorder.open("adapter_parse", self, {"completion": completion})
        try:
            outputs = super().parse(signature, completion)  # type: ignore[misc]
        except BaseException as exc:
            recorder.close(opened, None, exc)
            raise
        recorder.close(opened, outputs, None)
        return outputs


_adapter_classes: dict[tuple[type, type], type] = {}


def with_mixin(adapter: Any, mixin: type) -> Any:
    """A copy of ``adapter`` (None: DSPy's default ChatAdapter) whose class has ``mixin`` mixed in. The
    class keeps its name and bases, so DSPy's ``isinstance`` and name checks (streaming) still see what
    it is; the mixin's ``format``/``parse``, if any, replace the ones DSPy wrapped with its callbacks
    (``Adapter.__init_subclass__`` wraps them again in every subclass; the parent's already are, so user
    callbacks fire once)."""
    import dspy

    if adapter is None:
        adapter = dspy.ChatAdapter()
    if isinstance(adapter, mixin):
        return adapter
    cls = type(adapter)
    mixed = _adapter_classes.get((cls, mixin))
    if mixed is None:
        mixed = type(
            cls.__name__, (mixin, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        )
        for name in ("format", "parse"):
            setattr(mixed, name, mixin.__dict__.get(name, getattr(cls, name)))
        _adapter_classes[(cls, mixin)] = mixed
    wrapped: Any = object.__new__(mixed)
    wrapped.__dict__.update(adapter.__dict__)
    return wrapped


def recording_adapter(adapter: Any) -> Any:
    """``adapter`` (None: DSPy's default ChatAdapter) recording adapter spans (see :func:`with_mixin`)."""
    return with_mixin(adapter, _RecordingAdapter)
