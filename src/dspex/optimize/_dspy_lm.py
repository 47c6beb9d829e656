"""The LM side of a DSPy optimizer run (:mod:`dspex.optimize.dspy_run`): the hard cap on its LM calls
and the stored LM that keeps the optimizer's own calls (instruction proposals, reflections).

- :class:`CallCap`, a DSPy callback: an LM call starts only while the run's calls made and in flight
  are under ``max_lm_calls``; past it the call raises :class:`Stop` (a ``BaseException``, so that
  DSPy's executors, which catch ``Exception`` per example, let it end the compile).
- :class:`StoredLM`: the prompt LM an optimizer is given, behind the evaluation cache. A request (the
  LM's model and settings, rollout id included, and the prompt or messages with the call's keyword
  arguments) that was answered before is answered from the store at no LM call, so a resumed
  MIPROv2 does not pay its proposer again, nor GEPA its reflections, provided the replay asks the same
  requests (the same seed: MIPROv2's proposer draws its rollout ids from it). As with DSPy's own
  cache, a request with a rollout id is a distinct request; the same request twice gets the same answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback, with_callbacks
from dspy.utils.callback_context import ACTIVE_CALL_ID

from dspex.jsonable import canonical_hash, to_jsonable
from dspex.optimize.cache import CachedResult, EvalCache
from dspex.telemetry.usage import UsageTotals

__all__ = ["CallCap", "CapReached", "Stop", "StoredLM"]

_DRAIN_S = 120.0  # longest wait for LM calls in flight after the cap stopped a run
LM_PREFIX = "lm:"
_NOT_PART_OF_THE_REQUEST = ("api_key", "api_base", "base_url")


class Stop(BaseException):
    """Carries an ``OptimizationStopped`` through DSPy, whose executors catch ``Exception`` per call
    (a stop must end the compile, not count as one failed example)."""

    def __init__(self, stopped: BaseException) -> None:
        super().__init__(str(stopped))
        self.stopped = stopped


class CapReached(Exception):
    """The run's ``max_lm_calls`` is spent: no LM call may start (carried through DSPy by ``Stop``)."""


class CallCap(BaseCallback):  # type: ignore[misc]  # dspy's BaseCallback is untyped
    """Keeps a run's LM calls within ``limit``: an LM call starts only while the calls already made
    (``spent`` by earlier processes of the run, plus this process's usage tracker) and the calls in
    flight are fewer than the limit; otherwise it raises before the request is sent, and the run stops.
    So the run never makes more than ``limit`` calls. A call made inside a counted call (an LM wrapping
    another) is not counted twice; a call answered from DSPy's LM cache is counted while in flight only.

    The total is also written to the run's record (``budget.lm_calls``) as each call ends, so a worker
    that takes the job over counts what the earlier ones spent; a worker killed mid-call loses the count
    of the calls it had in flight, no more. Once the attempt has ended (:meth:`close`), no call starts:
    DSPy's executors do not wait for their threads, and a call one of them started later would be spent
    after the attempt's count was final (and a later attempt had read it)."""

    def __init__(
        self, limit: int, usage: UsageTotals, spent: int, save: Callable[[int], None] | None
    ) -> None:
        self.limit = limit
        self.usage = usage
        self.spent = spent
        self._save = save
        self._saved = spent
        self._save_lock = threading.Lock()  # totals are written in order, never a smaller one last
        self._open: set[str] = set()
        self._closed = False
        self._reserved = 0  # calls of examples sent to a pool's workers whose results are not counted yet
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def __deepcopy__(self, memo: dict[int, Any]) -> CallCap:
        return self

    def total(self) -> int:
        """LM calls the run has made, this process's and the earlier ones'."""
        return self.spent + self.usage.calls

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            if ACTIVE_CALL_ID.get() in self._open:
                return  # inside a call already counted
            if self._closed:
                raise self._ended()
            if self.total() + len(self._open) + self._reserved >= self.limit:
                raise Stop(CapReached(f"max_lm_calls={self.limit} reached"))
            self._open.add(call_id)

    def close(self) -> None:
        """The attempt has ended: no LM call may start any more (the calls in flight end as they do)."""
        with self._lock:
            self._closed = True

    def _ended(self) -> Stop:
        return Stop(CapReached(f"the run's attempt has ended; its max_lm_calls={self.limit} count is final"))

    def reserve(self, examples: int) -> int:
        """Before program calls sent to a pool's workers (counted here once their results come back):
        how many of ``examples`` may go (one LM call each is reserved until :meth:`release`, once their
        results' calls are counted); Stop when none may. The workers' calls cannot be stopped one by
        one, so this is how the cap holds on a pool. A program making more than one LM call per example
        (a parse failure's retry, a multi-step module) may pass the cap by its extra calls in flight."""
        with self._lock:
            if self._closed:
                raise self._ended()
            room = self.limit - self.total() - len(self._open) - self._reserved
            if room <= 0:
                raise Stop(CapReached(f"max_lm_calls={self.limit} reached"))
            granted = min(examples, room)
            self._reserved += granted
            return granted

    def release(self, examples: int) -> None:
        """``examples`` reserved by :meth:`reserve` came back (their LM calls are counted) or were lost."""
        if examples <= 0:
            return
        with self._lock:
            self._reserved = max(0, self._reserved - examples)
            if not self._open and not self._reserved:
                self._idle.notify_all()
        self.save()

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with self._lock:
            self._open.discard(call_id)
            if not self._open and not self._reserved:
                self._idle.notify_all()
        self.save()

    def drain(self, timeout: float = _DRAIN_S) -> None:
        """Wait for the calls in flight when the cap stopped the run (DSPy's executors do not wait for
        their threads), here or on a pool's workers, so that what they cost is counted before the run is
        recorded."""
        with self._idle:
            self._idle.wait_for(lambda: not self._open and not self._reserved, timeout=timeout)

    def save(self) -> None:
        """Write the run's total to its record when it changed."""
        if self._save is None:
            return
        with self._save_lock:
            total = self.total()
            if total != self._saved:
                self._save(total)
                self._saved = total


class StoredLM(dspy.BaseLM):  # type: ignore[misc]  # dspy.BaseLM is untyped
    """``inner`` behind the evaluation cache (see the module docstring). ``copy`` (how MIPROv2's
    proposer sets a rollout id and temperature) copies ``inner`` and keeps the store; ``served``
    counts the calls answered from it, shared by the copies."""

    def __init__(self, inner: Any, cache: EvalCache, served: list[int] | None = None) -> None:
        super().__init__(model=inner.model, model_type=getattr(inner, "model_type", "chat"), cache=False)
        self.inner = inner
        self.kwargs = inner.kwargs
        self._store = cache
        self._served = served if served is not None else [0]
        self._lock = threading.Lock()

    @property
    def served(self) -> int:
        return self._served[0]

    def copy(self, **kwargs: Any) -> StoredLM:
        return StoredLM(self.inner.copy(**kwargs), self._store, self._served)

    def dump_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inner.dump_state()
        return state

    def _key(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> tuple[str, str]:
        settings = {k: v for k, v in self.inner.kwargs.items() if k not in _NOT_PART_OF_THE_REQUEST}
        lm = {"model": self.inner.model, "model_type": self.model_type, "settings": settings}
        request = {"prompt": prompt, "messages": messages, "kwargs": kwargs}
        return (LM_PREFIX + canonical_hash(to_jsonable(lm)), canonical_hash(to_jsonable(request)))

    def _lookup(self, key: tuple[str, str]) -> list[Any] | None:
        hit = self._store.get_many([key]).get(key)
        if hit is None or not isinstance(hit.prediction.get("outputs"), list):
            return None
        with self._lock:
            self._served[0] += 1
        return list(hit.prediction["outputs"])

    def _keep(self, key: tuple[str, str], outputs: Any) -> None:
        # Plain answers only (strings, or dicts of JSON values): what to_jsonable would change (an
        # object a provider returned) is not kept, and the call is simply made again next time.
        if isinstance(outputs, list) and to_jsonable(outputs) == outputs:
            self._store.put_many({key: CachedResult({"outputs": outputs}, {})})

    @with_callbacks  # type: ignore[untyped-decorator]
    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        key = self._key(prompt, messages, kwargs)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        outputs = self.inner(prompt, messages=messages, **kwargs)
        self._keep(key, outputs)
        return outputs

    @with_callbacks  # type: ignore[untyped-decorator]
    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        key = self._key(prompt, messages, kwargs)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        outputs = await self.inner.acall(prompt, messages=messages, **kwargs)
        self._keep(key, outputs)
        return outputs
