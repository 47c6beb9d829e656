"""Resilience at DSPy's LM boundary: rate limits, circuit breakers, retries, fallbacks and deadlines.

Every LM a run uses is wrapped in a :class:`ResilientLM`: a ``dspy.LM`` whose calls go through DSPy's own
preparation, engine and error typing (``dspy.clients.execution``) one attempt at a time, with this loop
around them::

    for each model of the chain (the LM, then its fallbacks):
        skip it if its breaker is open (recorded as skipped, reason breaker_open)
        wait for its rate limits (rpm, tpm, concurrent calls), at most until the run's deadline
        call it once; on a retryable error (429, 5xx, timeout, connection) back off (exponential, with
        jitter, honouring Retry-After) and call again, within the model's retries and retry budget
        on a failure that calls for it (``fallback_on``), go to the next model

Limits and breaker states are shared by every process through Redis when ``DSPEX_REDIS_URL`` is set,
per process otherwise. Retry budgets are per process. The call is one LM span in the run's record: its
``model`` is the model that served it, ``attrs.resilience`` lists what was tried (attempts, errors,
skipped models and why); limiter and backoff waits are ``wait`` spans under it. Usage and cost are
counted under the model that served each attempt.

Settings (``[resilience]`` in dspex.toml)::

    [resilience]
    retries = 3                      # per model; None: num_retries
    [resilience.breaker]
    failure_rate = 0.5
    cooldown_s = 30
    [resilience.models."openai/gpt-4o-mini"]
    rpm = 500
    tpm = 200000
    max_concurrent = 32
    fallbacks = ["backup"]           # configured model names ([models.backup])
    [resilience.programs.support]
    fallbacks = ["backup", "local"]

The run's deadline (``timeout=`` on a run) lives in DSPy's context (:func:`deadline_scope`), so it
reaches ``dspy.Parallel`` threads too; every wait and attempt respects it, and an expired one raises
:class:`~dspex.errors.DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import dspy
from dspy.clients.execution import aexecute, execute, finalize, prepare
from dspy.utils import exceptions as dspy_errors
from dspy.utils.callback import with_callbacks

from dspex.errors import ConfigurationError, DeadlineExceeded
from dspex.lm.deadline import DEADLINE_KEY, check_deadline, deadline, deadline_scope, remaining
from dspex.telemetry.instrument import active, traced, with_mixin

if TYPE_CHECKING:
    from dspex.lm.breaker import Breaker, Breakers, BreakerSpec
    from dspex.lm.limits import Limiter, Limits, LimitSpec
    from dspex.lm.models import ModelRegistry
    from dspex.settings import ModelResilienceSetting, ResilienceSetting, Settings

__all__ = [
    "DEADLINE_KEY",
    "Resilience",
    "ResilientLM",
    "check_deadline",
    "deadline_scope",
    "failure_cause",
    "parse_fallback_adapter",
    "remaining",
]

_WAIT_SPAN_S = 0.001  # waits shorter than this are not worth a span


# -- failures ---------------------------------------------------------------------------------------
def failure_cause(exc: BaseException) -> str | None:
    """What an LM call's failure says about its endpoint: ``rate_limit``, ``server``, ``timeout``,
    ``transport``, ``unexpected`` or ``breaker_open``; None when the request itself was at fault (auth,
    invalid request, context window), which another attempt or model would not fix."""
    from dspex.lm.breaker import BreakerOpen

    if isinstance(exc, BreakerOpen):
        return "breaker_open"
    if isinstance(exc, dspy_errors.LMRateLimitError):
        return "rate_limit"
    if isinstance(exc, dspy_errors.LMTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, dspy_errors.LMServerError):
        return "server"
    if isinstance(exc, dspy_errors.LMTransportError):
        return "transport"
    if isinstance(exc, dspy_errors.LMProviderError):
        status = getattr(exc, "status", None)
        return "server" if isinstance(status, int) and status >= 500 else None
    if isinstance(exc, dspy_errors.LMUnexpectedError):
        return "unexpected"
    return None


def _describe(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)[:300]}
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        info["status"] = status
    cause = failure_cause(exc)
    if cause is not None:
        info["cause"] = cause
    return info


class RetryBudget:
    """Retries a model may spend: ``ratio`` of its calls over the last minute plus ``minimum``.

    A storm of failures then costs at most ``1 + ratio`` times the calls instead of ``1 + retries``
    times (the Finagle/gRPC retry budget); per process. Calls and retries are counted per second of
    ``time.monotonic()`` (the last 60 seconds, this one included): bounded memory at any call rate, where a
    timestamp per call held 150,000 floats per model at 2,500 calls a second.
    """

    WINDOW_S = 60  # seconds counted, this one included

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio = ratio
        self.minimum = minimum
        # [second, count] per second that saw any, oldest first
        self._calls: deque[list[int]] = deque()
        self._retries: deque[list[int]] = deque()
        self._lock = threading.Lock()

    @classmethod
    def _add(cls, counts: deque[list[int]], second: int) -> None:
        last = counts[-1] if counts else None
        if last is not None and last[0] == second:
            last[1] += 1
            return
        counts.append([second, 1])
        cls._trim(counts, second)

    @classmethod
    def _trim(cls, counts: deque[list[int]], second: int) -> int:
        """Drop the seconds out of the window; return the count of those left."""
        oldest = second - cls.WINDOW_S + 1
        while counts and counts[0][0] < oldest:
            counts.popleft()
        return sum(n for _, n in counts)

    def call(self) -> None:
        """Count a first attempt."""
        second = int(time.monotonic())
        with self._lock:
            self._add(self._calls, second)

    def spend(self) -> bool:
        """Take one retry if the budget allows it."""
        second = int(time.monotonic())
        with self._lock:
            calls = self._trim(self._calls, second)
            if self._trim(self._retries, second) >= self.minimum + self.ratio * calls:
                return False
            self._add(self._retries, second)
            return True

    def status(self) -> dict[str, Any]:
        second = int(time.monotonic())
        with self._lock:
            calls, retries = self._trim(self._calls, second), self._trim(self._retries, second)
        return {
            "calls_last_min": calls,
            "retries_last_min": retries,
            "allowed": self.minimum + self.ratio * calls,
        }


@dataclass(frozen=True, slots=True)
class _ModelPolicy:
    """What the settings say for one model: its limits key and spec, breaker, retries, fallbacks."""

    key: str
    endpoint: str
    limits: LimitSpec | None
    breaker: BreakerSpec
    retries: int | None  # None: the LM's own num_retries
    fallbacks: tuple[str, ...]


def _api_base(lm: Any) -> str | None:
    kwargs = getattr(lm, "kwargs", {}) or {}
    value = kwargs.get("api_base") or kwargs.get("base_url")
    return value if isinstance(value, str) else None


def _estimate_tokens(call: Any) -> int:
    messages = call.legacy.get("messages") if call.request is None else None
    if not messages:
        return 1
    chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, Mapping))
    return max(1, chars // 4)


def _used_tokens(result: Any) -> int | None:
    usage = getattr(result, "usage", None)
    if isinstance(usage, Mapping):
        total = usage.get("total_tokens")
        if isinstance(total, int):
            return total
    return None


# -- the process's state ----------------------------------------------------------------------------
class Resilience:
    """Limits, breakers and retry budgets of this process (shared through Redis when configured), and
    the wrapping of LMs. ``App.resilience`` holds one; see the module docstring."""

    def __init__(
        self,
        config: ResilienceSetting,
        *,
        redis_url: str | None = None,
        models: ModelRegistry | None = None,
        default_retries: int = 3,
        prefix: str = "dspex",
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self.models = models
        self.default_retries = default_retries
        self.prefix = prefix
        self._lock = threading.Lock()
        self._limits: Limits | None = None
        self._breakers: Breakers | None = None
        self._budgets: dict[str, RetryBudget] = {}
        self._policies: dict[tuple[str, str | None], _ModelPolicy] = {}
        self._bare: dict[str, Any] = {}
        self._breaker_of: dict[_ModelPolicy, Breaker] = {}
        self._fast: dict[tuple[int, str | None, tuple[str, ...] | None], tuple[Any, Any]] = {}
        self._check_names()

    @classmethod
    def from_settings(cls, settings: Settings, *, models: ModelRegistry | None = None) -> Resilience:
        return cls(
            settings.resilience,
            redis_url=settings.redis_url,
            models=models,
            default_retries=settings.num_retries,
            prefix=settings.resilience.redis_prefix,
        )

    def _check_names(self) -> None:
        """Every fallback names a configured model (checked at start, not at the first failure)."""
        chains = [(f"resilience.models.{k}", m.fallbacks) for k, m in self.config.models.items()]
        chains += [(f"resilience.programs.{k}", p.fallbacks) for k, p in self.config.programs.items()]
        for where, names in chains:
            for name in names:
                if self.models is None or name not in self.models:
                    valid = self.models.names() if self.models is not None else ()
                    raise ConfigurationError(
                        f"{where}.fallbacks names {name!r}, which is not a configured model; fallbacks are "
                        f"names of [models.NAME] entries or the default lm (configured: "
                        f"{', '.join(valid) or 'none'})"
                    )

    # -- shared primitives --------------------------------------------------------------------------
    @property
    def limits(self) -> Limits:
        with self._lock:
            if self._limits is None:
                from dspex.lm.limits import Limits

                self._limits = Limits(self.redis_url, prefix=self.prefix)
            return self._limits

    @property
    def breakers(self) -> Breakers:
        with self._lock:
            if self._breakers is None:
                from dspex.lm.breaker import Breakers

                self._breakers = Breakers(self.redis_url, prefix=self.prefix)
            return self._breakers

    def budget(self, key: str) -> RetryBudget:
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                budget = self._budgets[key] = RetryBudget(
                    self.config.retry_budget, self.config.retry_budget_min
                )
            return budget

    def _setting_for(self, lm: Any) -> tuple[str, ModelResilienceSetting | None]:
        """The ``[resilience.models]`` entry for ``lm``: by configured name (model and endpoint match),
        else by provider model string; the key names its limits."""
        model, base = lm.model, _api_base(lm)
        for key, entry in self.config.models.items():
            if self.models is not None and key in self.models:
                configured = self.models.get(key)
                if configured.model == model and (configured.api_base or None) == base:
                    return key, entry
        return model, self.config.models.get(model)

    def policy(self, lm: Any) -> _ModelPolicy:
        """What applies to calls of ``lm`` (cached per model and endpoint)."""
        from dspex.lm.breaker import BreakerSpec
        from dspex.lm.limits import LimitSpec

        ident = (lm.model, _api_base(lm))
        found = self._policies.get(ident)
        if found is not None:
            return found
        key, entry = self._setting_for(lm)
        breaker = self.config.breaker
        if entry is not None and entry.breaker is not None:
            breaker = entry.breaker
        limits = None
        if entry is not None and (entry.rpm or entry.tpm or entry.max_concurrent):
            limits = LimitSpec(rpm=entry.rpm, tpm=entry.tpm, max_concurrent=entry.max_concurrent)
        retries = self.config.retries
        if entry is not None and entry.retries is not None:
            retries = entry.retries
        policy = _ModelPolicy(
            key=key,
            endpoint=lm.model if ident[1] is None else f"{lm.model}@{ident[1]}",
            limits=limits,
            breaker=BreakerSpec(
                failure_rate=breaker.failure_rate,
                min_calls=breaker.min_calls,
                window_s=breaker.window_s,
                cooldown_s=breaker.cooldown_s,
                probes=breaker.probes,
            ),
            retries=retries,
            fallbacks=tuple(entry.fallbacks) if entry is not None else (),
        )
        self._policies[ident] = policy
        return policy

    def limiter(self, policy: _ModelPolicy) -> Limiter | None:
        if policy.limits is None:
            return None
        return self.limits.limiter(policy.key, policy.limits)

    def breaker(self, policy: _ModelPolicy) -> Breaker:
        found = self._breaker_of.get(policy)
        if found is None:
            found = self._breaker_of[policy] = self.breakers.breaker(policy.endpoint, policy.breaker)
        return found

    # -- wrapping -----------------------------------------------------------------------------------
    def _fallback_lm(self, name: str) -> Any:
        with self._lock:
            lm = self._bare.get(name)
        if lm is None:
            assert self.models is not None  # names were checked against it
            lm = self.models.build(name, wrap=False)
            lm._dspex_retries = lm.num_retries
            lm.num_retries = 0  # this loop retries; DSPy's own loop (with its 1-60 s sleeps) must not
            with self._lock:
                lm = self._bare.setdefault(name, lm)
        return lm

    def retries(self, policy: _ModelPolicy, lm: Any) -> int:
        """Retries of a retryable error on ``lm``: the settings', else the LM's own ``num_retries``."""
        if policy.retries is not None:
            return policy.retries
        own = getattr(lm, "_dspex_retries", None)
        return own if isinstance(own, int) else self.default_retries

    def chain(self, lm: Any, program: str | None = None) -> tuple[str, ...]:
        """The fallback names for ``lm`` in ``program``: the program's chain, else the model's."""
        if program is not None:
            entry = self.config.programs.get(program)
            if entry is not None and entry.fallbacks:
                return tuple(entry.fallbacks)
        return self.policy(lm).fallbacks

    def wrap(self, lm: Any, *, program: str | None = None, fallbacks: Sequence[str] | None = None) -> Any:
        """``lm`` with this resilience (and its fallback chain); LMs DSPy does not manage (a custom
        ``BaseLM`` with its own ``forward``, ``DummyLM``) are returned as they are."""
        if not self.config.enabled or lm is None:
            return lm
        if isinstance(lm, ResilientLM) and fallbacks is None and program is None:
            return lm
        # Every run asks again with the same LM: answer from a plain dict (the entry holds the LM, so its
        # id cannot be reused while cached), bounded.
        fast_key = (id(lm), program, None if fallbacks is None else tuple(fallbacks))
        hit = self._fast.get(fast_key)
        if hit is not None and hit[0] is lm:
            return hit[1]
        wrapped = self._wrap(lm, program, fallbacks)
        if len(self._fast) >= 4096:
            self._fast.clear()
        self._fast[fast_key] = (lm, wrapped)
        return wrapped

    def _wrap(self, lm: Any, program: str | None, fallbacks: Sequence[str] | None) -> Any:
        if isinstance(lm, ResilientLM):
            lm = lm.primary
        if not _managed(lm):
            return lm
        names = tuple(fallbacks) if fallbacks is not None else self.chain(lm, program)
        for name in names:
            if self.models is None or name not in self.models:
                raise ConfigurationError(
                    f"fallback {name!r} is not a configured model; "
                    + (self.models.unknown(name) if self.models is not None else "configure [models.NAME]")
                )
        program_limiter = None
        spec = self._program_limits(program) if program is not None else None
        if spec is not None:
            program_limiter = self.limits.limiter(f"program:{program}", spec)
        fallback_lms = [self._fallback_lm(n) for n in names]
        return ResilientLM.around(lm, self, fallback_lms, names, program_limiter)

    def _program_limits(self, program: str) -> LimitSpec | None:
        """The limits of ``[resilience.programs.NAME]``, shared by all its runs on every model."""
        from dspex.lm.limits import LimitSpec

        entry = self.config.programs.get(program)
        if entry is None or not (entry.rpm or entry.tpm or entry.max_concurrent):
            return None
        return LimitSpec(rpm=entry.rpm, tpm=entry.tpm, max_concurrent=entry.max_concurrent)

    # -- status ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Breaker states, limiter usage and retry budgets, for ``/health``, metrics and ``dspex lms status``."""
        with self._lock:
            budgets = dict(self._budgets)
            limits, breakers = self._limits, self._breakers
        return {
            "enabled": self.config.enabled,
            "shared": self.redis_url is not None,
            "breakers": breakers.status() if breakers is not None else [],
            "limits": limits.status() if limits is not None else [],
            "budgets": {key: budget.status() for key, budget in sorted(budgets.items())},
        }

    def close(self) -> None:
        with self._lock:
            limits, breakers = self._limits, self._breakers
            self._limits = self._breakers = None
            self._breaker_of.clear()
        if limits is not None:
            limits.close()
        if breakers is not None:
            breakers.close()


def _managed(lm: Any) -> bool:
    """Whether DSPy runs ``lm``'s calls through its engines (a ``dspy.LM`` without its own forward)."""
    from dspy.utils.dummies import DummyLM

    if not isinstance(lm, dspy.LM) or isinstance(lm, DummyLM):
        return False
    return type(lm).forward is dspy.LM.forward and type(lm).aforward is dspy.LM.aforward


# -- the LM -----------------------------------------------------------------------------------------
_deadline_pool: ThreadPoolExecutor | None = None
_deadline_pool_lock = threading.Lock()


def _call_before(when: float, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a helper thread (same context), given up at ``when``: a sync engine call cannot
    be interrupted, so under a deadline the caller stops waiting for it (it ends on the LM's timeout)."""
    global _deadline_pool
    with _deadline_pool_lock:
        if _deadline_pool is None:
            _deadline_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dspex-deadline")
        pool = _deadline_pool
    ctx = contextvars.copy_context()
    future = pool.submit(ctx.run, fn, *args)
    try:
        return future.result(timeout=max(0.0, when - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        raise DeadlineExceeded(
            "the run's deadline passed during an LM call; raise timeout= or lower the LM's latency"
        ) from None


class _Attempts:
    """What one logical LM call tried, for the span and the error message."""

    __slots__ = ("_served", "last", "tried")

    def __init__(self) -> None:
        self.tried: list[dict[str, Any]] = []
        self.last: BaseException | None = None
        self._served: tuple[str, int] | None = None  # the model that answered, and its place in the chain

    def note(self, model: str, **info: Any) -> None:
        self.tried.append({"model": model, **info})

    def skipped(self, model: str, exc: Exception) -> Any:
        """Note a model skipped for its open breaker; the caller moves on (``_NEXT``)."""
        self.last = exc
        self.note(model, skipped="breaker_open", retry_after=getattr(exc, "retry_after", None))
        return _NEXT

    def served(self, model: str, position: int) -> None:
        self._served = (model, position)

    def annotate(self) -> None:
        """Put what was tried on the call's LM span (when the run records spans), served or not."""
        model, position = self._served if self._served is not None else (None, None)
        _annotate(model, self, position)

    def summary(self) -> str:
        parts = []
        for t in self.tried:
            what = t.get("skipped") or t.get("cause") or t.get("error") or "ok"
            parts.append(f"{t['model']}: {what}")
        return "; ".join(parts)


# What applies to one model of a chain: its policy, retry budget, rate limiters and breaker.
_Link: TypeAlias = "tuple[_ModelPolicy, RetryBudget, list[Limiter], Breaker]"


class ResilientLM(dspy.LM):  # type: ignore[misc]  # dspy.LM is untyped
    """A ``dspy.LM`` (the primary model, its settings and connections) whose calls go through
    :class:`Resilience`: limits, breaker, retries with backoff and budget, fallbacks, the run's deadline.

    Built by :meth:`Resilience.wrap`. DSPy's own retries are off (``num_retries`` reads 0 to DSPy); the
    primary's retry count lives in the settings (``[resilience] retries``, else ``num_retries``).
    """

    _resilience: Resilience
    _program_limiter: Limiter | None
    fallbacks: list[Any]
    fallback_names: tuple[str, ...]
    primary: Any

    @classmethod
    def around(
        cls,
        lm: Any,
        resilience: Resilience,
        fallbacks: list[Any],
        names: tuple[str, ...],
        program_limiter: Limiter | None = None,
    ) -> ResilientLM:
        wrapped: ResilientLM = copy.copy(lm)  # dspy.LM.__copy__: same settings, shared engine pools
        wrapped.__class__ = cls
        wrapped.__dict__.pop("_dspex_links", None)
        own = wrapped.__dict__.pop("num_retries", None)
        if not isinstance(getattr(lm, "_dspex_retries", None), int):  # a bare fallback already has it
            wrapped._dspex_retries = own
        wrapped._resilience = resilience
        wrapped._program_limiter = program_limiter
        wrapped.fallbacks = fallbacks
        wrapped.fallback_names = names
        wrapped.primary = lm
        return wrapped

    # DSPy reads num_retries inside execute(); this loop owns retries, so DSPy sees none.
    @property
    def num_retries(self) -> int:
        return 0

    @num_retries.setter
    def num_retries(self, value: int) -> None:  # dspy.LM.__init__ and copy(num_retries=) set it
        pass

    def __deepcopy__(self, memo: dict[int, Any]) -> ResilientLM:
        # Programs are deep-copied per run; the copy shares this process's resilience and fallbacks.
        new: ResilientLM = copy.copy(self)
        new.__dict__.pop("_dspex_links", None)
        new.kwargs = copy.deepcopy(self.kwargs, memo)
        new.history = []
        new.callbacks = list(self.callbacks)
        return new

    def dump_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.primary.dump_state()
        state.update(
            {k: v for k, v in self.kwargs.items() if k in state or k in ("temperature", "max_tokens")}
        )
        return state

    def __repr__(self) -> str:
        chain = " -> ".join((self.model, *self.fallback_names))
        return f"ResilientLM({chain})"

    def _chain(self) -> Iterable[tuple[int, Any, str, _Link]]:
        """The models to try, in order: this LM, then its fallbacks, each with what applies to it."""
        links = self.__dict__.get("_dspex_links")
        if links is None:  # the same for every call of this LM: worked out once (copies start afresh)
            links = [self._link(lm) for lm in (self, *self.fallbacks)]
            self.__dict__["_dspex_links"] = links
        if not self.fallbacks:  # one model, the common case: no generator, zip and enumerate per call
            return ((0, self, self.model, links[0]),)
        return [
            (position, lm, lm.model, link)
            for position, (lm, link) in enumerate(zip((self, *self.fallbacks), links, strict=True))
        ]

    def _link(self, lm: Any) -> _Link:
        policy = self._resilience.policy(lm)
        return (policy, *self._setup(policy))

    def _go_on(self, attempts: _Attempts) -> bool:
        """Whether the last model's failure is one that moves the call to the next model."""
        last = attempts.last
        return last is not None and failure_cause(last) in self._resilience.config.fallback_on

    def _setup(self, policy: _ModelPolicy) -> tuple[RetryBudget, list[Limiter], Breaker]:
        resilience = self._resilience
        limiters = [x for x in (resilience.limiter(policy), self._program_limiter) if x is not None]
        return resilience.budget(policy.key), limiters, resilience.breaker(policy)

    def _after_failure(
        self,
        lm: Any,
        model: str,
        exc: Exception,
        attempt: int,
        policy: _ModelPolicy,
        budget: RetryBudget,
        attempts: _Attempts,
    ) -> Any:
        """Note a failed attempt; return the delay before retrying it or ``_NEXT`` (the next model), or
        raise it when neither would help (the deadline, a request error)."""
        attempts.last = exc
        attempts.note(model, attempt=attempt, **_describe(exc))
        if isinstance(exc, DeadlineExceeded):
            raise exc
        delay = self._retry_delay(lm, exc, attempt, policy, budget)
        if delay is not None:
            return delay
        if failure_cause(exc) is None:
            raise exc
        return _NEXT

    # -- sync ---------------------------------------------------------------------------------------
    @traced("lm")  # it overrides BaseLM.__call__, which the instrumentation wraps: its own LM span
    @with_callbacks  # type: ignore[untyped-decorator]
    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        attempts = _Attempts()
        try:
            for position, lm, model, link in self._chain():
                outcome = self._try_model(lm, model, link, attempts, prompt, messages, kwargs)
                if outcome is not _NEXT:
                    attempts.served(model, position)
                    return outcome
                if not self._go_on(attempts):
                    break
            raise _final(attempts)
        finally:
            attempts.annotate()

    def _try_model(
        self,
        lm: Any,
        model: str,
        link: _Link,
        attempts: _Attempts,
        prompt: Any,
        messages: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        policy, budget, limiters, breaker = link
        attempt = 0
        while True:
            when = deadline()
            if when is not None:
                check_deadline(f"an LM call to {model}")
            call = prepare(lm, prompt, messages, kwargs)
            lease = _acquire(limiters, _estimate_tokens(call), model) if limiters else None
            try:
                permit = breaker.before()
            except Exception as exc:
                if lease is not None:
                    lease.release(0)
                return attempts.skipped(model, exc)
            if attempt == 0:
                budget.call()
            try:
                result = execute(lm, call) if when is None else _call_before(when, execute, lm, call)
            except Exception as exc:
                (breaker.failure if failure_cause(exc) is not None else breaker.success)(permit)
                if lease is not None:
                    lease.release(None)
                delay = self._after_failure(lm, model, exc, attempt, policy, budget, attempts)
                if delay is _NEXT:
                    return _NEXT
                if delay > 0:
                    t0 = time.perf_counter()
                    time.sleep(delay)
                    _wait_span(t0, "backoff", model, attempt=attempt + 1)
                attempt += 1
                continue
            breaker.success(permit)
            if lease is not None:
                lease.release(_used_tokens(result))
            attempts.note(model, attempt=attempt, ok=True)
            return finalize(lm, call, result)

    def _retry_delay(
        self, lm: Any, exc: BaseException, attempt: int, policy: _ModelPolicy, budget: RetryBudget
    ) -> float | None:
        """Seconds to wait before retrying ``exc`` on the same model, or None to stop retrying it."""
        if not dspy.is_retryable_lm_error(exc) or attempt >= self._resilience.retries(policy, lm):
            return None
        config = self._resilience.config
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            if hint > config.max_retry_after_s:
                return None
            delay = float(hint)
        else:
            ceiling = min(config.backoff_max_s, config.backoff_base_s * 2**attempt)
            delay = random.uniform(ceiling / 2, ceiling)  # exponential backoff, "equal jitter"
        left = remaining()
        if left is not None and delay >= left:
            return None  # waiting would pass the deadline: try the next model, or fail now
        if not budget.spend():
            return None
        return delay

    # -- async --------------------------------------------------------------------------------------
    @traced("lm")
    @with_callbacks  # type: ignore[untyped-decorator]
    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        attempts = _Attempts()
        try:
            for position, lm, model, link in self._chain():
                outcome = await self._atry_model(lm, model, link, attempts, prompt, messages, kwargs)
                if outcome is not _NEXT:
                    attempts.served(model, position)
                    return outcome
                if not self._go_on(attempts):
                    break
            raise _final(attempts)
        finally:
            attempts.annotate()

    async def _atry_model(
        self,
        lm: Any,
        model: str,
        link: _Link,
        attempts: _Attempts,
        prompt: Any,
        messages: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        policy, budget, limiters, breaker = link
        attempt = 0
        while True:
            when = deadline()
            if when is not None:
                check_deadline(f"an LM call to {model}")
            call = prepare(lm, prompt, messages, kwargs, asynchronous=True)
            lease = await _aacquire(limiters, _estimate_tokens(call), model) if limiters else None
            try:
                permit = await breaker.abefore()
            except Exception as exc:
                if lease is not None:
                    await lease.arelease(0)
                return attempts.skipped(model, exc)
            if attempt == 0:
                budget.call()
            try:
                result = await _aexecute_before(lm, call)
            except Exception as exc:
                await (breaker.afailure if failure_cause(exc) is not None else breaker.asuccess)(permit)
                if lease is not None:
                    await lease.arelease(None)
                delay = self._after_failure(lm, model, exc, attempt, policy, budget, attempts)
                if delay is _NEXT:
                    return _NEXT
                if delay > 0:
                    t0 = time.perf_counter()
                    await asyncio.sleep(delay)
                    _wait_span(t0, "backoff", model, attempt=attempt + 1)
                attempt += 1
                continue
            await breaker.asuccess(permit)
            if lease is not None:
                await lease.arelease(_used_tokens(result))
            attempts.note(model, attempt=attempt, ok=True)
            return finalize(lm, call, result)


async def _aexecute_before(lm: Any, call: Any) -> Any:
    """``aexecute(lm, call)``, cancelled at the run's deadline."""
    left = remaining()
    if left is None:
        return await aexecute(lm, call)
    try:
        async with asyncio.timeout(max(0.0, left)):
            return await aexecute(lm, call)
    except TimeoutError:
        raise DeadlineExceeded(
            "the run's deadline passed during an LM call; raise timeout= or lower the LM's latency"
        ) from None


_NEXT: Any = object()  # sentinel: this model gave up, try the next one


class _Leases:
    """The leases one attempt holds (the model's limits, the program's), released together."""

    def __init__(self, leases: list[Any]) -> None:
        self.leases = leases

    def release(self, tokens_used: int | None) -> None:
        for lease in self.leases:
            lease.release(tokens_used)

    async def arelease(self, tokens_used: int | None) -> None:
        for lease in self.leases:
            await lease.arelease(tokens_used)


def _acquire(limiters: list[Limiter], tokens: int, model: str) -> _Leases | None:
    if not limiters:
        return None
    t0 = time.perf_counter()
    leases = _Leases([])
    try:
        for limiter in limiters:
            leases.leases.append(limiter.acquire(tokens, deadline=deadline()))
    except BaseException:
        leases.release(0)
        raise
    _wait_span(t0, "rate_limit", model)
    return leases


async def _aacquire(limiters: list[Limiter], tokens: int, model: str) -> _Leases | None:
    if not limiters:
        return None
    t0 = time.perf_counter()
    leases = _Leases([])
    try:
        for limiter in limiters:
            leases.leases.append(await limiter.aacquire(tokens, deadline=deadline()))
    except BaseException:
        await leases.arelease(0)
        raise
    _wait_span(t0, "rate_limit", model)
    return leases


# -- output that fails to parse -----------------------------------------------------------------------
def _next_in_chain(lm: Any) -> Any:
    """The LM that takes over from ``lm`` when its output cannot be parsed, or None."""
    if not isinstance(lm, ResilientLM) or not lm.fallbacks:
        return None
    if "parse" not in lm._resilience.config.fallback_on:
        return None
    resilience = lm._resilience
    rest = lm.fallback_names[1:]
    return ResilientLM.around(lm.fallbacks[0], resilience, lm.fallbacks[1:], rest, lm._program_limiter)


def _parse_failed(lm: Any, nxt: Any, exc: BaseException) -> None:
    recorder = active()
    if recorder is not None:
        now = time.perf_counter()
        recorder.add_span(
            "wait", "parse_fallback", now, now, model=lm.model, to=nxt.model, error=str(exc)[:300]
        )


class _ParseFallback:
    """Mixed into the run's adapter class: output the adapter cannot parse (after DSPy's own JSON
    fallback) is asked again of the next model of the LM's chain."""

    def __call__(self, lm: Any, lm_kwargs: Any, signature: Any, demos: Any, inputs: Any) -> Any:
        try:
            return super().__call__(lm, lm_kwargs, signature, demos, inputs)  # type: ignore[misc]
        except dspy_errors.AdapterParseError as exc:
            nxt = _next_in_chain(lm)
            if nxt is None or dspy.settings.send_stream is not None:  # never replay visible output
                raise
            _parse_failed(lm, nxt, exc)
            return self.__call__(nxt, lm_kwargs, signature, demos, inputs)

    async def acall(self, lm: Any, lm_kwargs: Any, signature: Any, demos: Any, inputs: Any) -> Any:
        try:
            return await super().acall(lm, lm_kwargs, signature, demos, inputs)  # type: ignore[misc]
        except dspy_errors.AdapterParseError as exc:
            nxt = _next_in_chain(lm)
            if nxt is None or dspy.settings.send_stream is not None:
                raise
            _parse_failed(lm, nxt, exc)
            return await self.acall(nxt, lm_kwargs, signature, demos, inputs)


def parse_fallback_adapter(adapter: Any) -> Any:
    """``adapter`` (None: DSPy's default ChatAdapter) with :class:`_ParseFallback` mixed in (its class
    keeps its name and bases: :func:`dspex.telemetry.instrument.with_mixin`)."""
    return with_mixin(adapter, _ParseFallback)


def _raise(exc: BaseException) -> Any:
    raise exc


def _wait_span(t0: float, reason: str, model: str, **attrs: Any) -> None:
    t1 = time.perf_counter()
    if t1 - t0 < _WAIT_SPAN_S:
        return
    recorder = active()
    if recorder is not None:
        recorder.add_span("wait", reason, t0, t1, model=model, reason=reason, **attrs)


def _annotate(served_by: str | None, attempts: _Attempts, position: int | None) -> None:
    recorder = active()
    if recorder is None:
        return
    info: dict[str, Any] = {"served_by": served_by, "tried": attempts.tried}
    if position:
        info["fallback"] = position
    recorder.annotate("lm", model=served_by, resilience=info)


def _final(attempts: _Attempts) -> BaseException:
    """The error a call that every model failed raises: the last model's, with what was tried."""
    from dspex.lm.breaker import BreakerOpen

    last: BaseException | None = attempts.last
    assert last is not None  # a model was tried or skipped
    if isinstance(last, BreakerOpen) and all(t.get("skipped") for t in attempts.tried):
        waits = [t["retry_after"] for t in attempts.tried if t.get("retry_after") is not None]
        return BreakerOpen(
            f"every model of the chain has an open circuit breaker ({attempts.summary()}); "
            "retry after the cooldown or configure a fallback that is up",
            endpoint=getattr(last, "endpoint", "?"),
            retry_after=min(waits) if waits else None,
        )
    if len(attempts.tried) > 1 and hasattr(last, "add_note"):
        last.add_note(f"dspex resilience tried: {attempts.summary()}")
    return last
