"""A scripted DSPy engine: answers per output field from rules, callables or lists, fully offline.

It plugs into DSPy 3.4's engine extension point, so everything above it (adapters, retries, callbacks,
usage tracking, streaming) is DSPy's real code::

    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    lm = engine.lm()                         # dspy.LM("scripted/default", engine=..., async_engine=...)
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="hi").answer == "HI"

A rule for a field is one of:
- a callable taking the input values (``dict[str, Any]``) and returning the field's value;
- a ``list`` or ``tuple`` of values, consumed one per call (running out is an error, not a silent repeat);
- any other value, returned as is.
Fields without a rule get a plausible value of their type (``reasoning`` gets a short thought; a
``Literal`` gets ``"finish"`` when it is an option, else its first option).
A callable may raise a ``dspy.lm15`` error (``RateLimitError(retry_after=...)``...) to simulate failures.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    Usage,
)

from dspex.errors import ConfigurationError
from dspex.testing._prompt import Prompt, default_value, read_prompt, render_answer

__all__ = ["AsyncScriptedEngine", "ScriptedCall", "ScriptedEngine", "estimate_tokens"]

Rule = Callable[[dict[str, Any]], Any] | list[Any] | tuple[Any, ...] | object


def estimate_tokens(text: str) -> int:
    """A stable token estimate (about four characters a token), used for simulated usage."""
    return max(1, (len(text) + 3) // 4)


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One call the engine answered: what it read and what it wrote."""

    prompt: Prompt
    outputs: dict[str, Any]
    text: str
    usage: Usage


def _request_text(request: Request) -> tuple[str, list[tuple[str, str]]]:
    system = request.system if isinstance(request.system, str) else ""
    if isinstance(request.system, tuple):
        system = "".join(getattr(part, "text", "") for part in request.system)
    return system, [(m.role, m.text or "") for m in request.messages]


class ScriptedEngine:
    """A DSPy 3.4 engine answering from per-field rules. See the module docstring."""

    def __init__(
        self,
        rules: Mapping[str, Rule] | None = None,
        *,
        model: str = "scripted",
        latency: float = 0.0,
        chunk_size: int = 8,
        keep_history: int = 1000,
    ) -> None:
        if latency < 0:
            raise ConfigurationError(f"latency must be >= 0 seconds, got {latency}")
        if chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be >= 1 character, got {chunk_size}")
        self.rules: dict[str, Rule] = dict(rules or {})
        self.model = model
        self.latency = latency
        self.chunk_size = chunk_size
        self._cursors: dict[str, int] = {}
        self._lock = threading.Lock()
        self.calls = 0
        self.history: deque[ScriptedCall] = deque(maxlen=keep_history)

    # -- answering -------------------------------------------------------------------------------
    def _value(self, name: str, prompt: Prompt) -> Any:
        rule = self.rules.get(name)
        if rule is None:
            f = next(f for f in prompt.output_fields if f.name == name)
            return default_value(f)
        if callable(rule):
            return rule(dict(prompt.inputs))
        if isinstance(rule, list | tuple):
            with self._lock:
                k = self._cursors.get(name, 0)
                if k >= len(rule):
                    raise ConfigurationError(
                        f"scripted engine ran out of answers for field {name!r} after {len(rule)} calls; "
                        "give a longer list or a callable"
                    )
                self._cursors[name] = k + 1
            return rule[k]
        return rule

    def answer(self, request: Request) -> ScriptedCall:
        """Compute the answer to a request without the simulated latency."""
        system, messages = _request_text(request)
        prompt = read_prompt(system, messages)
        if not prompt.output_fields:
            raise ConfigurationError(
                "scripted engine got a request with no DSPy output fields; it answers requests made by "
                "DSPy adapters (Chat, JSON, XML), not free-form prompts"
            )
        outputs = {f.name: self._value(f.name, prompt) for f in prompt.output_fields}
        text = render_answer(prompt, outputs)
        prompt_chars = len(system) + sum(len(t) for _, t in messages)
        usage = Usage(input_tokens=estimate_tokens("x" * prompt_chars), output_tokens=estimate_tokens(text))
        call = ScriptedCall(prompt, outputs, text, usage)
        with self._lock:
            self.calls += 1
            self.history.append(call)
        return call

    def _response(self, call: ScriptedCall) -> Response:
        message = Message.assistant([TextPart(call.text)])
        return Response(id=None, model=self.model, message=message, finish_reason="stop", usage=call.usage)

    def _events(self, call: ScriptedCall) -> Iterator[Any]:
        yield StreamStartEvent(model=self.model)
        for i in range(0, len(call.text), self.chunk_size):
            yield StreamDeltaEvent(delta=TextDelta(text=call.text[i : i + self.chunk_size]))
        yield StreamEndEvent(finish_reason="stop", usage=call.usage)

    # -- the DSPy engine protocol ----------------------------------------------------------------
    def complete(self, request: Request) -> Response:
        call = self.answer(request)
        if self.latency:
            time.sleep(self.latency)
        return self._response(call)

    def stream(self, request: Request) -> Iterator[Any]:
        call = self.answer(request)
        if self.latency:
            time.sleep(self.latency)
        yield from self._events(call)

    def close(self) -> None:
        """Nothing to release; part of the engine protocol."""

    # -- helpers ---------------------------------------------------------------------------------
    def aio(self) -> AsyncScriptedEngine:
        """The async twin sharing this engine's rules, cursors and history (for ``async_engine=``)."""
        return AsyncScriptedEngine(self)

    def lm(self, name: str = "default", **kwargs: Any) -> Any:
        """A ``dspy.LM`` on this engine (sync and async), uncached unless ``cache=True`` is passed."""
        import dspy

        kwargs.setdefault("cache", False)
        return dspy.LM(f"scripted/{name}", engine=self, async_engine=self.aio(), **kwargs)


class AsyncScriptedEngine:
    """Async side of a :class:`ScriptedEngine`; waits with ``asyncio.sleep`` so calls overlap."""

    def __init__(self, sync: ScriptedEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        call = self.sync.answer(request)
        if self.sync.latency:
            await asyncio.sleep(self.sync.latency)
        return self.sync._response(call)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        call = self.sync.answer(request)
        for event in self.sync._events(call):
            if self.sync.latency and isinstance(event, StreamDeltaEvent):
                await asyncio.sleep(self.sync.latency / max(1, len(call.text) // self.sync.chunk_size))
            yield event

    async def aclose(self) -> None:
        """Nothing to release; part of the engine protocol."""
