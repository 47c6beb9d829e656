"""Per-model rate limits: requests per minute, tokens per minute and calls in flight.

A :class:`Limiter` holds one model's limits; :meth:`Limiter.acquire` waits (``time.sleep`` for sync callers,
``asyncio.sleep`` for async ones) until the call may go, and the :class:`Lease` it returns frees the
concurrency slot and charges the tokens the call really used::

    limits = Limits("redis://127.0.0.1:6379/0")           # or Limits() for this process only
    limiter = limits.limiter("openai/gpt-4o-mini", LimitSpec(rpm=600, tpm=200_000, max_concurrent=16))
    lease = limiter.acquire(tokens=1200, deadline=time.monotonic() + 30)
    try:
        response = call_the_model()
    finally:
        lease.release(tokens_used=response.usage.total_tokens)

How each limit is counted (the counters are the ``limits`` library's, in memory or on Redis):

- ``rpm``: a moving window (``MovingWindowRateLimiter``): exact, one entry per request, so no 60 s span
  ever holds more than ``rpm`` requests. A full window tells when its oldest request leaves; the waiter
  sleeps until then.
- ``tpm``: a sliding-window counter (``SlidingWindowCounterRateLimiter``): the previous minute's count,
  weighted by how much of it still overlaps the moving window, plus the current minute's. A moving window
  stores one entry per unit, a million list entries for a 1M TPM limit, so tokens use the counter,
  which is exact for steady traffic and may let a burst at a minute's end overshoot the true moving
  window. Tokens are charged at acquire (the caller's estimate); :meth:`Lease.release` charges what the
  call used beyond it (never refunds), even when that takes the window over its limit, so the next
  callers wait for it.
- ``max_concurrent``: in this process a counter; shared, a Redis sorted set of holders scored by their
  lease's expiry (``slot_lease_s``), taken in a Lua script that first drops expired holders, so a process
  that crashed holding a slot frees it after the lease.

A call needs all three. It takes its concurrency slot first (holding it while it waits for the rates
is harmless: the call is not in flight yet); then, so that a request is never charged RPM and then
refused TPM, it checks that the tokens fit, takes the RPM entry, then charges the tokens. Two processes
racing for the last tokens between the check and the charge may leave one with its RPM entry taken
while it waits for tokens: the limits are never exceeded, a request's worth of RPM may go unused.

The async path sleeps with ``asyncio.sleep``; with Redis it runs each (sub-millisecond) Redis exchange
in a worker thread (``asyncio.to_thread``) on the same thread-safe connection pool as the sync path.
``limits.aio`` would need a Redis connection pool per event loop (asyncio connections belong to the
loop that made them) and DSPex acquires from many loops (the server's, each ``App.arun``); one pool and
a thread hop is simpler and never blocks a loop. In this process, counters are updated in place.

Without a Redis URL every limit holds for this process only: N processes get N times the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, DeadlineExceeded
from dspex.lm._redis import connect, redacted, redis_errors

if TYPE_CHECKING:
    import redis
    from limits import RateLimitItem
    from limits.storage import MemoryStorage, RedisStorage

__all__ = ["Lease", "LimitSpec", "Limiter", "Limits"]

MIN_STEP_S = 0.005  # the shortest sleep between checks: a reset that just passed is not spun on
SLOT_POLL_S = (0.005, 0.05)  # shared slots: first and longest poll step (a local release wakes at once)

_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
    return 1
end
return 0
"""
_COUNT_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One model's limits; ``None`` means no such limit.

    >>> LimitSpec(rpm=600, tpm=200_000, max_concurrent=16).active()
    True
    """

    rpm: int | None = None  # requests per minute (moving 60 s window)
    tpm: int | None = None  # tokens per minute (moving 60 s window, approximated; see the module doc)
    max_concurrent: int | None = None  # calls in flight at once

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"rate limit {name}={value!r} must be a positive integer, or None for no limit"
                )

    def active(self) -> bool:
        """Whether any limit is set."""
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


class _Slots:
    """Calls in flight for one key: ``take`` and ``give`` a holder token; waiters here are woken on a give."""

    def __init__(self) -> None:
        self._waiters: list[Callable[[], None]] = []
        self._waiters_lock = threading.Lock()

    def take(self, token: str, size: int) -> bool:
        raise NotImplementedError

    def give(self, token: str) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    poll_s: float | None = None  # how long a waiter may sleep before looking again (None: until woken)

    @contextlib.contextmanager
    def waiting(self, wake: Callable[[], None]) -> Iterator[None]:
        with self._waiters_lock:
            self._waiters.append(wake)
        try:
            yield
        finally:
            with self._waiters_lock:
                self._waiters.remove(wake)

    def _wake(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for wake in waiters:
            wake()


class _LocalSlots(_Slots):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._holders: set[str] = set()

    def take(self, token: str, size: int) -> bool:
        with self._lock:
            if len(self._holders) >= size:
                return False
            self._holders.add(token)
            return True

    def give(self, token: str) -> None:
        with self._lock:
            self._holders.discard(token)
        self._wake()

    def count(self) -> int:
        with self._lock:
            return len(self._holders)


class _RedisSlots(_Slots):
    poll_s = SLOT_POLL_S[0]

    def __init__(self, client: redis.Redis, key: str, lease_s: float) -> None:
        super().__init__()
        self._client = client
        self._key = key
        self._lease_s = lease_s
        self._take = client.register_script(_TAKE_SLOT)
        self._count = client.register_script(_COUNT_SLOTS)

    def take(self, token: str, size: int) -> bool:
        with redis_errors(self._client, "rate limiter"):
            return bool(self._take(keys=[self._key], args=[size, self._lease_s, token]))

    def give(self, token: str) -> None:
        try:
            with redis_errors(self._client, "rate limiter"):
                self._client.zrem(self._key, token)
        finally:
            self._wake()

    def count(self) -> int:
        with redis_errors(self._client, "rate limiter"):
            return int(self._count(keys=[self._key]))


class _Backend:
    """What every limiter of one :class:`Limits` shares: the counters' storage and the slot holders."""

    def __init__(self, redis_url: str | None, prefix: str, window_s: int, slot_lease_s: float) -> None:
        from limits.storage import MemoryStorage, RedisStorage
        from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

        self.prefix = prefix
        self.window_s = window_s
        self.slot_lease_s = slot_lease_s
        self.client: redis.Redis | None = None
        self.storage: MemoryStorage | RedisStorage
        if redis_url is None:
            self.storage = MemoryStorage()
        else:
            self.client = connect(redis_url)
            self.storage = RedisStorage(
                redis_url, connection_pool=self.client.connection_pool, key_prefix=f"{prefix}:limits"
            )
        self.moving = MovingWindowRateLimiter(self.storage)
        self.sliding = SlidingWindowCounterRateLimiter(self.storage)
        self._slots: dict[str, _Slots] = {}
        self._lock = threading.Lock()

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self.client is None else redis_errors(self.client, "rate limiter")

    def slots(self, key: str) -> _Slots:
        # One per key for the life of the Limits, so a limiter replaced by a spec change keeps its holders.
        with self._lock:
            if key not in self._slots:
                self._slots[key] = (
                    _LocalSlots()
                    if self.client is None
                    else _RedisSlots(self.client, f"{self.prefix}:slots:{key}", self.slot_lease_s)
                )
            return self._slots[key]

    def item(self, amount: int) -> RateLimitItem:
        from limits import RateLimitItemPerSecond

        return RateLimitItemPerSecond(amount, self.window_s)


@dataclass(slots=True)
class _Charged:
    """What one acquire has charged so far, so a retry never charges the same thing twice."""

    rpm: bool = False
    tpm: bool = False


class Lease:
    """A call's admission: :meth:`release` it when the call ends (success or not). Releasing twice is a no-op."""

    __slots__ = ("_limiter", "_lock", "_released", "_slot", "tokens", "waited_s")

    def __init__(self, limiter: Limiter, *, tokens: int, waited_s: float, slot: str | None) -> None:
        self._limiter = limiter
        self._slot = slot
        self._released = False
        self._lock = threading.Lock()
        self.tokens = tokens  # charged to the TPM window at acquire
        self.waited_s = waited_s  # how long acquire waited

    def release(self, tokens_used: int | None = None) -> None:
        """Free the concurrency slot; charge ``tokens_used`` beyond the tokens charged at acquire to TPM."""
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            extra = 0 if tokens_used is None else tokens_used - self.tokens
            if extra > 0:
                self._limiter._charge_tokens(extra)
        finally:
            if self._slot is not None:
                self._limiter._slots.give(self._slot)

    async def arelease(self, tokens_used: int | None = None) -> None:
        """:meth:`release` for async callers (the Redis exchange runs in a worker thread)."""
        if self._limiter._backend.client is None:
            self.release(tokens_used)
        else:
            await asyncio.to_thread(self.release, tokens_used)


class Limiter:
    """One model's limits (see the module docstring); made by :meth:`Limits.limiter`."""

    def __init__(self, key: str, spec: LimitSpec, backend: _Backend) -> None:
        self.key = key
        self.spec = spec
        self._backend = backend
        self._slots = backend.slots(key)
        self._rpm = None if spec.rpm is None else backend.item(spec.rpm)
        self._tpm = None if spec.tpm is None else backend.item(spec.tpm)

    # -- acquire ---------------------------------------------------------------------------------------

    def acquire(self, tokens: int = 0, *, deadline: float | None = None) -> Lease:
        """Wait until a call of ``tokens`` (estimated) tokens may go; the lease must be released.

        ``deadline`` is a ``time.monotonic()`` value: when the wait is known to end after it, or it
        passes, :class:`~dspex.errors.DeadlineExceeded` is raised (``waited_s`` says how long it waited).

        >>> lease = limiter.acquire(tokens=800, deadline=time.monotonic() + 10)
        >>> lease.release(tokens_used=950)
        """
        self._check_tokens(tokens)
        start = time.monotonic()
        slot = None
        if self.spec.max_concurrent is not None:
            slot = self._wait_slot(start, deadline)
        try:
            charged = _Charged()
            while (step := self._rate_step(tokens, charged)) is not None:
                self._raise_if_impossible(step, start, deadline)
                time.sleep(step)
        except BaseException:
            if slot is not None:
                self._slots.give(slot)
            raise
        return Lease(self, tokens=tokens, waited_s=time.monotonic() - start, slot=slot)

    async def aacquire(self, tokens: int = 0, *, deadline: float | None = None) -> Lease:
        """:meth:`acquire` for async callers: waits with ``asyncio.sleep``, never blocks the loop."""
        self._check_tokens(tokens)
        start = time.monotonic()
        shared = self._backend.client is not None
        slot = None
        if self.spec.max_concurrent is not None:
            slot = await self._await_slot(start, deadline)
        try:
            charged = _Charged()
            while True:
                if shared:
                    step = await asyncio.to_thread(self._rate_step, tokens, charged)
                else:
                    step = self._rate_step(tokens, charged)
                if step is None:
                    break
                self._raise_if_impossible(step, start, deadline)
                await asyncio.sleep(step)
        except BaseException:
            if slot is not None:
                # Cleanup, possibly on cancellation: one brief Redis command rather than an await.
                self._slots.give(slot)
            raise
        return Lease(self, tokens=tokens, waited_s=time.monotonic() - start, slot=slot)

    def _check_tokens(self, tokens: int) -> None:
        if tokens < 0:
            raise ConfigurationError(f"tokens={tokens} for {self.key!r}: a call's token estimate is >= 0")
        if self.spec.tpm is not None and tokens > self.spec.tpm:
            raise ConfigurationError(
                f"a call of {tokens} tokens can never fit {self.key!r}'s limit of tpm={self.spec.tpm}: "
                "raise tpm, or lower the call's max_tokens or prompt"
            )

    def _rate_step(self, tokens: int, charged: _Charged) -> float | None:
        """Charge what the call needs if it may go now (None), else how long until it might."""
        backend = self._backend
        with backend.guard():
            if self._tpm is not None and not charged.tpm:
                wait = self._tpm_wait(max(tokens, 1))
                if wait > 0:
                    return wait
            if self._rpm is not None and not charged.rpm:
                if not backend.moving.hit(self._rpm, "rpm", self.key):
                    reset = backend.moving.get_window_stats(self._rpm, "rpm", self.key).reset_time
                    return max(reset - time.time(), MIN_STEP_S)
                charged.rpm = True
            if (
                self._tpm is not None
                and not charged.tpm
                and tokens > 0
                and not backend.sliding.hit(self._tpm, "tpm", self.key, cost=tokens)
            ):
                # Another process took the last tokens since the check; the RPM entry stays taken.
                return max(self._tpm_wait(tokens), MIN_STEP_S)
            charged.tpm = True
        return None

    def _tpm_counts(self) -> tuple[int, float, int]:
        """(previous minute's count, its remaining weight's seconds, current minute's count)."""
        assert self._tpm is not None
        previous, previous_ttl, current, _ = self._backend.storage.get_sliding_window(
            self._tpm.key_for("tpm", self.key), self._tpm.get_expiry()
        )
        return previous, previous_ttl, current

    def _tpm_wait(self, need: int) -> float:
        """0 when ``need`` tokens fit now, else a lower bound of the wait until they do."""
        assert self._tpm is not None
        expiry = self._tpm.get_expiry()
        previous, previous_ttl, current = self._tpm_counts()
        weighted = previous * previous_ttl / expiry + current
        excess = math.floor(weighted) + need - self._tpm.amount
        if excess <= 0:
            return 0.0
        # The weighted count falls by at most (previous + current) / expiry tokens a second.
        return max(excess * expiry / max(previous + current, 1), MIN_STEP_S)

    def _charge_tokens(self, tokens: int) -> None:
        """Add ``tokens`` to the TPM window even past its limit: they were used, the next callers wait."""
        if self._tpm is None:
            return
        with self._backend.guard():
            self._backend.storage.acquire_sliding_window_entry(
                self._tpm.key_for("tpm", self.key), 2**53, self._tpm.get_expiry(), tokens
            )

    def _raise_if_impossible(self, step: float, start: float, deadline: float | None) -> None:
        if deadline is None:
            return
        now = time.monotonic()
        if now + step > deadline:
            waited = now - start
            raise DeadlineExceeded(
                f"the rate limits of {self.key!r} ({self._describe()}) hold this call for at least "
                f"{step:.2f}s more, past its deadline (waited {waited:.2f}s); "
                "give the run a longer timeout or the model higher limits",
                waited_s=waited,
            )

    def _slot_deadline_error(self, start: float) -> DeadlineExceeded:
        waited = time.monotonic() - start
        return DeadlineExceeded(
            f"all {self.spec.max_concurrent} concurrent calls to {self.key!r} stayed busy past this call's "
            f"deadline (waited {waited:.2f}s); give the run a longer timeout or raise max_concurrent",
            waited_s=waited,
        )

    def _wait_slot(self, start: float, deadline: float | None) -> str:
        assert self.spec.max_concurrent is not None
        token = uuid.uuid4().hex
        woken = threading.Event()
        poll = self._slots.poll_s
        with self._slots.waiting(woken.set):
            while True:
                woken.clear()
                if self._slots.take(token, self.spec.max_concurrent):
                    return token
                timeout = poll
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._slot_deadline_error(start)
                    timeout = remaining if timeout is None else min(timeout, remaining)
                woken.wait(timeout)
                if poll is not None:
                    poll = min(poll * 2, SLOT_POLL_S[1])

    async def _await_slot(self, start: float, deadline: float | None) -> str:
        assert self.spec.max_concurrent is not None
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        shared = self._backend.client is not None
        poll = self._slots.poll_s

        def wake() -> None:  # called from whichever thread gave a slot back
            if not loop.is_closed():
                loop.call_soon_threadsafe(woken.set)

        with self._slots.waiting(wake):
            while True:
                woken.clear()
                if shared:
                    took = await self._take_shared(token)
                else:
                    took = self._slots.take(token, self.spec.max_concurrent)
                if took:
                    return token
                timeout = poll
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._slot_deadline_error(start)
                    timeout = remaining if timeout is None else min(timeout, remaining)
                with contextlib.suppress(TimeoutError):  # a timeout here only means: look again
                    await asyncio.wait_for(woken.wait(), timeout)
                if poll is not None:
                    poll = min(poll * 2, SLOT_POLL_S[1])

    async def _take_shared(self, token: str) -> bool:
        assert self.spec.max_concurrent is not None
        taking = asyncio.ensure_future(asyncio.to_thread(self._slots.take, token, self.spec.max_concurrent))
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._give_back_if_taken(token))
            raise

    def _give_back_if_taken(self, token: str) -> Callable[[asyncio.Future[bool]], None]:
        """For a take cancelled mid-flight: it may still succeed in its thread; then give the slot back."""

        def give_back(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.exception() is None and done.result():
                # Off the loop: this callback runs on it, and the give is a Redis command.
                threading.Thread(target=self._slots.give, args=(token,), daemon=True).start()

        return give_back

    # -- status ----------------------------------------------------------------------------------------

    def _describe(self) -> str:
        spec = self.spec
        parts = [f"{name}={getattr(spec, name)}" for name in ("rpm", "tpm", "max_concurrent")]
        return ", ".join(p for p in parts if not p.endswith("=None")) or "no limits"

    def status(self) -> dict[str, Any]:
        """Limits and current use (best effort; ``None`` where no such limit is set, so nothing is counted).

        >>> limiter.status()["requests_last_min"]
        42
        """
        backend = self._backend
        requests = tokens = in_flight = None
        with backend.guard():
            if self._rpm is not None:
                remaining = backend.moving.get_window_stats(self._rpm, "rpm", self.key).remaining
                requests = self._rpm.amount - remaining
            if self._tpm is not None:
                previous, previous_ttl, current = self._tpm_counts()
                tokens = math.floor(previous * previous_ttl / self._tpm.get_expiry() + current)
        if self.spec.max_concurrent is not None:
            in_flight = self._slots.count()
        return {
            "key": self.key,
            "rpm": self.spec.rpm,
            "tpm": self.spec.tpm,
            "max_concurrent": self.spec.max_concurrent,
            "requests_last_min": requests,
            "tokens_last_min": tokens,
            "in_flight": in_flight,
        }

    def __repr__(self) -> str:
        return f"Limiter({self.key!r}, {self._describe()})"


class Limits:
    """The limiters of one process, by key; in this process only, or shared through Redis.

    ``window_s`` is the span the per-minute limits are counted over: 60, except where a test or a
    benchmark scales the minute down. ``slot_lease_s`` is how long a shared concurrency slot stays taken
    by a process that died holding it.

    >>> limits = Limits(os.environ.get("DSPEX_REDIS_URL"))
    >>> limits.limiter("openai/gpt-4o-mini", LimitSpec(rpm=600)).acquire().release()
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        prefix: str = "dspex",
        window_s: int = 60,
        slot_lease_s: float = 300.0,
    ) -> None:
        if isinstance(window_s, bool) or not isinstance(window_s, int) or window_s < 1:
            raise ConfigurationError(f"window_s={window_s!r} must be a whole number of seconds >= 1")
        if slot_lease_s <= 0:
            raise ConfigurationError(f"slot_lease_s={slot_lease_s!r} must be > 0 seconds")
        self._url = redis_url
        self._backend = _Backend(redis_url, prefix, window_s, slot_lease_s)
        self._limiters: dict[str, Limiter] = {}
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether the limits are shared with other processes through Redis."""
        return self._url is not None

    def limiter(self, key: str, spec: LimitSpec) -> Limiter:
        """The limiter for ``key`` (a model name); the same object while ``spec`` is the same."""
        if not key:
            raise ConfigurationError("a rate limit needs a key (the model's name); got an empty one")
        with self._lock:
            current = self._limiters.get(key)
            if current is None or current.spec != spec:
                current = self._limiters[key] = Limiter(key, spec, self._backend)
            return current

    def status(self) -> list[dict[str, Any]]:
        """Every limiter of this object's :meth:`Limiter.status`, by key."""
        with self._lock:
            limiters = sorted(self._limiters.values(), key=lambda limiter: limiter.key)
        return [limiter.status() for limiter in limiters]

    def close(self) -> None:
        """Close the Redis connections (in-process limits hold none)."""
        if self._backend.client is not None:
            self._backend.client.close()

    def __repr__(self) -> str:
        where = redacted(self._url) if self._url else "this process"
        return f"Limits({where}, {len(self._limiters)} limiters)"
