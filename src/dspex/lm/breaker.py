"""Circuit breakers per model endpoint: closed, open, half-open, opened by the failure rate over a window.

A :class:`Breaker` guards one endpoint. The caller asks :meth:`Breaker.before` for a :class:`Permit`
before each call and hands it back to :meth:`Breaker.success` or :meth:`Breaker.failure` (what counts as
a failure is the caller's choice; the breaker only counts; async callers use ``abefore``, ``asuccess`` and
``afailure``)::

    breakers = Breakers("redis://127.0.0.1:6379/0")       # or Breakers() for this process only
    breaker = breakers.breaker("https://api.openai.com/v1", BreakerSpec(failure_rate=0.5, min_calls=10))
    permit = breaker.before()                                # raises BreakerOpen(retry_after=...) when open
    try:
        response = call_the_model()
    except TransientError:
        breaker.failure(permit)
        raise
    breaker.success(permit)

The states:

- **closed**: calls and failures are counted in a sliding window of ``window_s`` (buckets of a second or
  less). When at least ``min_calls`` calls ended in the window and ``failures / calls >= failure_rate``,
  it opens.
- **open**: :meth:`~Breaker.before` raises :class:`BreakerOpen` at once, with ``retry_after`` the
  cooldown left. After ``cooldown_s`` it is half-open.
- **half-open**: ``before`` hands out at most ``probes`` probe permits at a time; other callers get
  ``BreakerOpen``. ``successes_to_close`` probe successes close it (with an empty window); a probe failure
  opens it again for a fresh cooldown. A probe whose caller never reports (it crashed) holds its place
  for ``cooldown_s`` only, so a dead endpoint gets at most ``probes`` calls per cooldown, and a lost
  probe never wedges the breaker.

A result reported on a permit from before the last transition (a call that began while closed and ended
after the breaker opened) is ignored, so stale outcomes never move a breaker that has moved on.

With a Redis URL the whole state lives in Redis and every transition is one Lua script, atomic across
processes, on Redis's clock (``TIME``); so a breaker one process opened is open for all. In this process
it is the same state machine under a lock, on ``time.monotonic``. ``clock=`` replaces either clock (the
tests step time by hand). pybreaker and purgatory count consecutive failures rather than a failure rate
over a window, and pybreaker's Redis storage updates its fields without atomicity across processes, so
this state machine is ours.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from dspex.errors import ConfigurationError, LMError
from dspex.lm._redis import connect, redacted, redis_errors

if TYPE_CHECKING:
    import redis

__all__ = ["Breaker", "BreakerOpen", "BreakerSpec", "BreakerState", "Breakers", "Permit"]

BreakerState = Literal["closed", "open", "half_open"]
KEY_TTL_S = 86_400  # a breaker no process has touched for a day is forgotten (starts closed again)


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """When a breaker opens, how long it stays open, and how it probes its way closed again.

    >>> BreakerSpec(failure_rate=0.5, min_calls=10, window_s=30, cooldown_s=30, probes=1)
    """

    failure_rate: float = 0.5  # open when failures / calls over the window >= this ...
    min_calls: int = 10  # ... and at least this many calls ended in the window
    window_s: float = 30.0
    cooldown_s: float = 30.0  # open -> half-open after this
    probes: int = 1  # calls let through in half-open (at most this many in flight)
    successes_to_close: int = 1  # probe successes that close it

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ConfigurationError(
                f"breaker failure_rate={self.failure_rate!r} must be in (0, 1], e.g. 0.5 for half the calls"
            )
        for name in ("min_calls", "probes", "successes_to_close"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"breaker {name}={value!r} must be an integer >= 1")
        for name in ("window_s", "cooldown_s"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"breaker {name}={getattr(self, name)!r} must be > 0 seconds")

    @property
    def bucket_s(self) -> float:
        """The window's resolution: a second, or a tenth of a window shorter than 10 s."""
        return min(1.0, self.window_s / 10)


class BreakerOpen(LMError):
    """The endpoint's circuit breaker is open (or half-open with its probes out): the call was not made.

    ``retry_after`` is how many seconds until a probe may go; take a fallback model meanwhile.
    """

    code = "breaker_open"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        retry_after: float | None,
        execution_id: str | None = None,
    ) -> None:
        super().__init__(message, retryable=True, retry_after=retry_after, execution_id=execution_id)
        self.endpoint = endpoint

    def _state(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "retry_after": self.retry_after, "execution_id": self.execution_id}


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; hand it back to :meth:`Breaker.success` or :meth:`Breaker.failure`."""

    probe: bool  # a half-open probe: its outcome closes or reopens the breaker
    epoch: int = field(repr=False)  # the transition it was given after; outcomes from older ones are stale
    id: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one step of the state machine left behind (a permit when one was given)."""

    permit: Permit | None
    retry_after: float | None
    state: BreakerState
    opened_at: float | None  # on the breaker's clock
    opens: int
    calls: int
    failures: int
    now: float
    reason: str  # why it last opened


class _LocalCore:
    """The state machine in this process, under a lock (the Lua script below is the same on Redis)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.state: BreakerState = "closed"
        self.opened_at: float | None = None
        self.opens = 0
        self.epoch = 0
        self.successes = 0
        self.reason = ""
        self.buckets: dict[int, list[int]] = {}  # bucket index -> [calls, failures]
        self.probes: dict[str, float] = {}  # probe permit id -> when its place lapses
        self._closed = Permit(probe=False, epoch=0)  # see closed_permit

    def step(self, op: str, spec: BreakerSpec, permit: Permit | None) -> _Outcome:
        with self._lock:
            now = self._clock()
            if (
                self.state == "open"
                and self.opened_at is not None
                and now >= self.opened_at + spec.cooldown_s
            ):
                self.state, self.successes = "half_open", 0
            given: Permit | None = None
            retry_after: float | None = None
            if op == "before":
                given, retry_after = self._before(spec, now)
            elif op in ("success", "failure") and permit is not None and permit.epoch == self.epoch:
                self._record(spec, now, permit, failed=op == "failure")
            calls = failures = 0
            if op == "state":  # the window is trimmed and counted only when someone looks (or a failure)
                calls, failures = self._window(spec, now)
                retry_after = self._retry_after(spec, now)
            return _Outcome(
                given, retry_after, self.state, self.opened_at, self.opens, calls, failures, now, self.reason
            )

    def count_success(self, spec: BreakerSpec, permit: Permit) -> None:
        """:meth:`step` ``("success")`` for a non-probe permit, without building the outcome nobody reads."""
        with self._lock:
            now = self._clock()
            if (
                self.state == "open"
                and self.opened_at is not None
                and now >= self.opened_at + spec.cooldown_s
            ):
                self.state, self.successes = "half_open", 0
            if permit.epoch == self.epoch:
                self._record(spec, now, permit, failed=False)

    def closed_permit(self) -> Permit:
        """The permit of a closed breaker in this epoch: one object, shared (a permit is immutable)."""
        permit = self._closed
        if permit.epoch != self.epoch:
            permit = self._closed = Permit(probe=False, epoch=self.epoch)
        return permit

    def _before(self, spec: BreakerSpec, now: float) -> tuple[Permit | None, float | None]:
        if self.state == "closed":
            return self.closed_permit(), None
        if self.state == "half_open":
            self.probes = {pid: until for pid, until in self.probes.items() if until > now}
            if len(self.probes) < spec.probes:
                permit = Permit(probe=True, epoch=self.epoch, id=uuid.uuid4().hex)
                self.probes[permit.id] = now + spec.cooldown_s
                return permit, None
        return None, self._retry_after(spec, now)

    def _retry_after(self, spec: BreakerSpec, now: float) -> float | None:
        if self.state == "open" and self.opened_at is not None:
            return max(self.opened_at + spec.cooldown_s - now, 0.0)
        if self.state == "half_open":
            live = [until for until in self.probes.values() if until > now]
            return 0.0 if len(live) < spec.probes else max(min(live) - now, 0.0)
        return None

    def _record(self, spec: BreakerSpec, now: float, permit: Permit, *, failed: bool) -> None:
        if permit.probe:
            self.probes.pop(permit.id, None)
            if failed:
                self._open(now, "its half-open probe failed")
                return
            self.successes += 1
            if self.successes >= spec.successes_to_close:
                self.state, self.opened_at, self.successes = "closed", None, 0
                self.epoch += 1
                self.buckets.clear()
            return
        bucket_s = spec.bucket_s
        index = math.floor(now / bucket_s)
        counts = self.buckets.get(index)
        if counts is None:  # a new bucket (at most one a bucket_s): bound those of a long run of successes
            counts = self.buckets[index] = [0, 0]
            if not failed and len(self.buckets) > 4 * math.ceil(spec.window_s / bucket_s):
                self._window(spec, now)
        counts[0] += 1
        counts[1] += failed
        if not failed:  # a success cannot open it; the window is trimmed on the next failure or look
            return
        calls, failures = self._window(spec, now)
        if calls >= spec.min_calls and failures / calls >= spec.failure_rate:
            self._open(now, f"{failures} of {calls} calls failed within {spec.window_s:g}s")

    def _open(self, now: float, reason: str) -> None:
        self.state, self.opened_at, self.successes, self.reason = "open", now, 0, reason
        self.opens += 1
        self.epoch += 1
        self.probes.clear()

    def _window(self, spec: BreakerSpec, now: float) -> tuple[int, int]:
        oldest = math.floor(now / spec.bucket_s) - math.ceil(spec.window_s / spec.bucket_s)
        for index in [i for i in self.buckets if i <= oldest]:
            del self.buckets[index]
        return sum(c for c, _ in self.buckets.values()), sum(f for _, f in self.buckets.values())


# KEYS: 1 state hash, 2 window hash (c<bucket>/f<bucket> -> count), 3 probes zset (id -> lapses at),
#       4 the set of every endpoint's name.
# ARGV: 1 op (before|success|failure|state), 2 now ('' for Redis TIME), 3 failure_rate, 4 min_calls,
#       5 window_s, 6 cooldown_s, 7 probes, 8 successes_to_close, 9 bucket_s, 10 permit id,
#       11 permit epoch, 12 permit is a probe (1/0), 13 key ttl, 14 spec JSON, 15 endpoint, 16 window_s as text.
# Returns: {permit given (1/0), retry_after or '', state, opened_at or '', opens, epoch, calls, failures, now,
#           why it last opened}.
_SCRIPT = """
local now
if ARGV[2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
    now = tonumber(ARGV[2])
end
local op = ARGV[1]
local failure_rate, min_calls = tonumber(ARGV[3]), tonumber(ARGV[4])
local window_s, cooldown_s = tonumber(ARGV[5]), tonumber(ARGV[6])
local probes, to_close, bucket_s = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local h = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'opens', 'epoch', 'successes', 'reason')
local state = h[1] or 'closed'
local opened_at = tonumber(h[2])
local opens, epoch, successes = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
local reason = h[6] or ''
local current = math.floor(now / bucket_s)
local oldest = current - math.ceil(window_s / bucket_s)

local function window()
    local flat = redis.call('HGETALL', KEYS[2])
    local calls, failures, stale = 0, 0, {}
    for i = 1, #flat, 2 do
        local name = flat[i]
        if tonumber(string.sub(name, 2)) <= oldest then
            table.insert(stale, name)
        elseif string.sub(name, 1, 1) == 'c' then
            calls = calls + tonumber(flat[i + 1])
        else
            failures = failures + tonumber(flat[i + 1])
        end
    end
    if #stale > 0 then redis.call('HDEL', KEYS[2], unpack(stale)) end
    return calls, failures
end
local function open_it(why)
    state, opened_at, successes, reason = 'open', now, 0, why
    opens, epoch = opens + 1, epoch + 1
    redis.call('DEL', KEYS[3])
end
local function retry_after()
    if state == 'open' then return math.max(opened_at + cooldown_s - now, 0) end
    if state == 'half_open' then
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
        if redis.call('ZCARD', KEYS[3]) < probes then return 0 end
        local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
        return math.max(tonumber(first[2]) - now, 0)
    end
    return nil
end

if state == 'open' and opened_at and now >= opened_at + cooldown_s then
    state, successes = 'half_open', 0
end
local given, wait = 0, nil
if op == 'before' then
    if state == 'closed' then
        given = 1
    elseif state == 'half_open' then
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
        if redis.call('ZCARD', KEYS[3]) < probes then
            redis.call('ZADD', KEYS[3], now + cooldown_s, ARGV[10])
            given = 1
        end
    end
    if given == 0 then wait = retry_after() end
elseif (op == 'success' or op == 'failure') and tonumber(ARGV[11]) == epoch then
    local failed = op == 'failure'
    if ARGV[12] == '1' then
        redis.call('ZREM', KEYS[3], ARGV[10])
        if failed then
            open_it('its half-open probe failed')
        else
            successes = successes + 1
            if successes >= to_close then
                state, opened_at, successes, epoch = 'closed', nil, 0, epoch + 1
                redis.call('DEL', KEYS[2], KEYS[3])
            end
        end
    else
        redis.call('HINCRBY', KEYS[2], 'c' .. current, 1)
        if failed then redis.call('HINCRBY', KEYS[2], 'f' .. current, 1) end
        local calls, failures = window()
        if calls >= min_calls and failures / calls >= failure_rate then
            open_it(failures .. ' of ' .. calls .. ' calls failed within ' .. ARGV[16] .. 's')
        end
    end
elseif op == 'state' then
    wait = retry_after()
end

local calls, failures = window()
redis.call('HSET', KEYS[1], 'state', state, 'opens', opens, 'epoch', epoch, 'successes', successes,
    'spec', ARGV[14], 'reason', reason)
if opened_at then
    redis.call('HSET', KEYS[1], 'opened_at', tostring(opened_at))
else
    redis.call('HDEL', KEYS[1], 'opened_at')
end
redis.call('SADD', KEYS[4], ARGV[15])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[13])) end
return {given, wait and tostring(wait) or '', state, opened_at and tostring(opened_at) or '', opens, epoch,
    calls, failures, tostring(now), reason}
"""


class _RedisCore:
    """The state machine as one Lua script on Redis: every step is atomic across processes."""

    def __init__(self, client: redis.Redis, prefix: str, endpoint: str, clock: Callable[[], float] | None):
        self._client = client
        self._clock = clock
        self._endpoint = endpoint
        base = f"{prefix}:breaker:{endpoint}"
        self._keys = [base, f"{base}:window", f"{base}:probes", f"{prefix}:breakers"]
        self._script = client.register_script(_SCRIPT)

    def step(self, op: str, spec: BreakerSpec, permit: Permit | None) -> _Outcome:
        probe_id = uuid.uuid4().hex if op == "before" else (permit.id if permit else "")
        args: list[str | int] = [
            op,
            "" if self._clock is None else repr(self._clock()),
            repr(spec.failure_rate),
            spec.min_calls,
            repr(spec.window_s),
            repr(spec.cooldown_s),
            spec.probes,
            spec.successes_to_close,
            repr(spec.bucket_s),
            probe_id,
            -1 if permit is None else permit.epoch,
            1 if permit is not None and permit.probe else 0,
            KEY_TTL_S,
            json.dumps(asdict(spec)),
            self._endpoint,
            f"{spec.window_s:g}",
        ]
        with redis_errors(self._client, "circuit breaker"):
            raw = self._script(keys=self._keys, args=args)
        given, wait, state, opened_at, opens, epoch, calls, failures, now, reason = (
            v.decode() if isinstance(v, bytes) else v for v in raw
        )
        permit_out = None
        if int(given):
            probe = state == "half_open"
            permit_out = Permit(probe=probe, epoch=int(epoch), id=probe_id if probe else "")
        return _Outcome(
            permit=permit_out,
            retry_after=float(wait) if wait != "" else None,
            state=cast(BreakerState, state),
            opened_at=float(opened_at) if opened_at != "" else None,
            opens=int(opens),
            calls=int(calls),
            failures=int(failures),
            now=float(now),
            reason=reason,
        )


class Breaker:
    """One endpoint's circuit breaker (see the module docstring); made by :meth:`Breakers.breaker`."""

    def __init__(self, endpoint: str, spec: BreakerSpec, core: _LocalCore | _RedisCore) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self._core = core

    def before(self) -> Permit:
        """A permit for one call, or :class:`BreakerOpen` (with ``retry_after``) when it may not go.

        >>> permit = breaker.before()
        """
        core = self._core
        if isinstance(core, _LocalCore) and core.state == "closed":
            # The common case, without the lock: a permit of a stale epoch is ignored when reported.
            return core.closed_permit()
        outcome = core.step("before", self.spec, None)
        if outcome.permit is not None:
            return outcome.permit
        if outcome.state == "half_open":
            why = f"half-open with its {self.spec.probes} probe(s) out"
        else:
            why = f"open ({outcome.reason})"
        wait = outcome.retry_after
        raise BreakerOpen(
            f"the circuit breaker of {self.endpoint!r} is {why}; the call was not made. "
            f"A probe may go in {wait or 0:.1f}s: use a fallback model or retry after that",
            endpoint=self.endpoint,
            retry_after=wait,
        )

    def success(self, permit: Permit) -> None:
        """The call made under ``permit`` succeeded."""
        core = self._core
        if isinstance(core, _LocalCore) and not permit.probe:
            core.count_success(self.spec, permit)  # the common case: no state to move, nothing to report
            return
        core.step("success", self.spec, permit)

    def failure(self, permit: Permit) -> None:
        """The call made under ``permit`` failed in a way that counts against the endpoint."""
        self._core.step("failure", self.spec, permit)

    async def abefore(self) -> Permit:
        """:meth:`before` for async callers: on Redis the exchange runs in a worker thread."""
        return self.before() if isinstance(self._core, _LocalCore) else await asyncio.to_thread(self.before)

    async def asuccess(self, permit: Permit) -> None:
        """:meth:`success` for async callers."""
        if isinstance(self._core, _LocalCore):
            self.success(permit)
        else:
            await asyncio.to_thread(self.success, permit)

    async def afailure(self, permit: Permit) -> None:
        """:meth:`failure` for async callers."""
        if isinstance(self._core, _LocalCore):
            self.failure(permit)
        else:
            await asyncio.to_thread(self.failure, permit)

    def state(self) -> dict[str, Any]:
        """The breaker as status views show it; ``opened_at`` in seconds since the epoch.

        >>> breaker.state()["state"]
        'closed'
        """
        outcome = self._core.step("state", self.spec, None)
        opened_at = None
        if outcome.opened_at is not None:
            # On whichever clock the breaker runs (monotonic, Redis TIME, a test's), as wall time.
            opened_at = time.time() - (outcome.now - outcome.opened_at)
        return {
            "endpoint": self.endpoint,
            "state": outcome.state,
            "calls": outcome.calls,
            "failures": outcome.failures,
            "failure_rate": outcome.failures / outcome.calls if outcome.calls else 0.0,
            "opened_at": opened_at,
            "retry_after": outcome.retry_after,
            "opens": outcome.opens,
        }

    def __repr__(self) -> str:
        return f"Breaker({self.endpoint!r}, {self.spec})"


class Breakers:
    """The circuit breakers of one process, by endpoint; in this process only, or shared through Redis.

    ``clock`` (seconds, any origin) replaces ``time.monotonic`` (or Redis ``TIME`` when shared): every
    process sharing a Redis must then use the same clock, as tests stepping time by hand do.

    >>> breakers = Breakers(os.environ.get("DSPEX_REDIS_URL"))
    >>> breakers.breaker("https://api.openai.com/v1", BreakerSpec()).state()["state"]
    'closed'
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        prefix: str = "dspex",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._url = redis_url
        self._prefix = prefix
        self._clock = clock
        self._client = None if redis_url is None else connect(redis_url)
        self._breakers: dict[str, Breaker] = {}
        self._cores: dict[str, _LocalCore] = {}
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether breaker states are shared with other processes through Redis."""
        return self._client is not None

    def _core(self, endpoint: str) -> _LocalCore | _RedisCore:
        if self._client is not None:
            return _RedisCore(self._client, self._prefix, endpoint, self._clock)
        # One state per endpoint for the life of this object: a spec change keeps what was counted.
        if endpoint not in self._cores:
            self._cores[endpoint] = _LocalCore(self._clock or time.monotonic)
        return self._cores[endpoint]

    def breaker(self, endpoint: str, spec: BreakerSpec) -> Breaker:
        """The breaker of ``endpoint``; the same object while ``spec`` is the same."""
        if not endpoint:
            raise ConfigurationError("a circuit breaker needs an endpoint name; got an empty one")
        with self._lock:
            current = self._breakers.get(endpoint)
            if current is None or current.spec != spec:
                current = self._breakers[endpoint] = Breaker(endpoint, spec, self._core(endpoint))
                if self._client is not None:
                    current.state()  # stores it (and its spec) in Redis, so every process's status lists it
            return current

    def status(self) -> list[dict[str, Any]]:
        """Every breaker's :meth:`Breaker.state`: this object's and, when shared, any process's; by endpoint."""
        with self._lock:
            breakers = dict(self._breakers)
        if self._client is not None:
            with redis_errors(self._client, "circuit breaker"):
                members: set[bytes] = self._client.smembers(f"{self._prefix}:breakers")  # type: ignore[assignment]  # redis-py types replies as bytes | str; a client without decode_responses gives bytes
                names = {n.decode() for n in members}
                for name in sorted(names - breakers.keys()):
                    stored = self._client.hget(f"{self._prefix}:breaker:{name}", "spec")
                    if stored is None:  # forgotten after KEY_TTL_S untouched
                        self._client.srem(f"{self._prefix}:breakers", name)
                        continue
                    breakers[name] = Breaker(name, BreakerSpec(**json.loads(stored)), self._core(name))
        return [breakers[name].state() for name in sorted(breakers)]

    def close(self) -> None:
        """Close the Redis connections (in-process breakers hold none)."""
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        where = redacted(self._url) if self._url else "this process"
        return f"Breakers({where}, {len(self._breakers)} breakers)"
