"""Circuit breakers: every transition, in this process and shared through Redis, on a hand-stepped clock."""

from __future__ import annotations

import itertools
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from dspex.errors import ConfigurationError, LMError
from dspex.lm.breaker import Breaker, BreakerOpen, Breakers, BreakerSpec, Permit

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on Redis (deleted afterwards), so parallel runs never collide."""
    name = f"dspex-test-{uuid.uuid4().hex}"
    yield name
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


MakeBreakers = Callable[[], Breakers]


@pytest.fixture(params=["memory", "redis"])
def make_breakers(request: pytest.FixtureRequest, prefix: str, clock: Clock) -> Iterator[MakeBreakers]:
    """Builds Breakers on the test's clock; on Redis every one shares the state (like two processes)."""
    shared = request.param == "redis"
    if shared and not _redis_answers():
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    made: list[Breakers] = []
    local: list[Breakers] = []

    def make() -> Breakers:
        if not shared:
            # In one process "another Breakers" would be another state; hand back the same object.
            if not local:
                local.append(Breakers(clock=clock))
            return local[0]
        breakers = Breakers(REDIS_URL, prefix=prefix, clock=clock)
        made.append(breakers)
        return breakers

    yield make
    for breakers in made + local:
        breakers.close()


SPEC = BreakerSpec(failure_rate=0.5, min_calls=4, window_s=10, cooldown_s=30)


def _call(breaker: Breaker, *, ok: bool) -> Permit:
    permit = breaker.before()
    (breaker.success if ok else breaker.failure)(permit)
    return permit


def _open(breaker: Breaker) -> None:
    for _ in range(breaker.spec.min_calls):
        _call(breaker, ok=False)
    assert breaker.state()["state"] == "open"


def test_spec_rejects_values_that_cannot_work() -> None:
    with pytest.raises(ConfigurationError, match=r"failure_rate=0 must be in \(0, 1\]"):
        BreakerSpec(failure_rate=0)
    with pytest.raises(ConfigurationError, match="probes=0 must be an integer >= 1"):
        BreakerSpec(probes=0)
    with pytest.raises(ConfigurationError, match="cooldown_s=-1"):
        BreakerSpec(cooldown_s=-1)


def test_closed_needs_min_calls_before_it_opens(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    for _ in range(3):
        _call(breaker, ok=False)
    state = breaker.state()
    assert state["state"] == "closed"
    assert (state["calls"], state["failures"], state["opens"], state["opened_at"]) == (3, 3, 0, None)
    _call(breaker, ok=False)
    state = breaker.state()
    assert state["state"] == "open"
    assert state["opens"] == 1
    assert state["failure_rate"] == 1.0
    assert state["retry_after"] == pytest.approx(30)
    assert state["opened_at"] is not None


def test_opens_when_the_failure_rate_reaches_the_threshold(make_breakers: MakeBreakers) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    for ok in (True, True, True, False, False):
        _call(breaker, ok=ok)
    assert breaker.state()["state"] == "closed"  # 2 of 5 failed: 0.4
    _call(breaker, ok=False)  # 3 of 6: 0.5
    assert breaker.state()["state"] == "open"
    assert breaker.state()["failure_rate"] == 0.5


def test_failures_leave_the_window_after_window_s(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    for _ in range(3):
        _call(breaker, ok=False)
    clock.advance(11)
    assert breaker.state()["calls"] == 0
    _call(breaker, ok=False)
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["calls"] == 1


def test_open_fails_fast_with_the_cooldown_left(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    _open(breaker)
    clock.advance(12)
    with pytest.raises(
        BreakerOpen, match=r"'e' is open \(4 of 4 calls failed within 10s\).*18\.0s"
    ) as raised:
        breaker.before()
    error = raised.value
    assert error.code == "breaker_open"
    assert error.retryable
    assert error.endpoint == "e"
    assert error.retry_after == pytest.approx(18)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.endpoint, copy.retry_after, str(copy)) == (
        BreakerOpen,
        "e",
        error.retry_after,
        str(error),
    )
    assert isinstance(copy, LMError)


def test_half_open_lets_one_probe_through_and_its_success_closes(
    make_breakers: MakeBreakers, clock: Clock
) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    _open(breaker)
    clock.advance(30)
    assert breaker.state()["state"] == "half_open"
    assert breaker.state()["retry_after"] == 0
    probe = breaker.before()
    assert probe.probe
    with pytest.raises(BreakerOpen, match="half-open with its 1 probe") as raised:
        breaker.before()
    assert raised.value.retry_after == pytest.approx(30)  # the probe's place lapses after a cooldown
    breaker.success(probe)
    state = breaker.state()
    assert (state["state"], state["calls"], state["failures"], state["opened_at"]) == ("closed", 0, 0, None)
    assert not breaker.before().probe


def test_a_probe_failure_reopens_for_a_fresh_cooldown(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    _open(breaker)
    clock.advance(31)
    breaker.failure(breaker.before())
    state = breaker.state()
    assert state["state"] == "open"
    assert state["opens"] == 2
    assert state["retry_after"] == pytest.approx(30)
    clock.advance(29)
    with pytest.raises(BreakerOpen):
        breaker.before()
    clock.advance(1)
    assert breaker.before().probe


def test_successes_to_close_and_several_probes(make_breakers: MakeBreakers, clock: Clock) -> None:
    spec = BreakerSpec(
        failure_rate=0.5, min_calls=2, window_s=10, cooldown_s=5, probes=2, successes_to_close=2
    )
    breaker = make_breakers().breaker("e", spec)
    _open(breaker)
    clock.advance(5)
    first, second = breaker.before(), breaker.before()
    assert first.probe
    assert second.probe
    with pytest.raises(BreakerOpen, match="2 probe"):
        breaker.before()
    breaker.success(first)
    assert breaker.state()["state"] == "half_open"
    third = breaker.before()  # the first's place is free again
    breaker.success(second)
    assert breaker.state()["state"] == "closed"
    breaker.failure(third)  # a probe of a half-open that has since closed: stale, ignored
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["calls"] == 0


def test_a_lost_probe_does_not_wedge_the_breaker(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    _open(breaker)
    clock.advance(30)
    breaker.before()  # its caller crashed: it never reports
    clock.advance(29.9)
    with pytest.raises(BreakerOpen) as raised:
        breaker.before()
    assert raised.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    breaker.success(breaker.before())
    assert breaker.state()["state"] == "closed"


def test_outcomes_of_calls_from_before_a_transition_are_ignored(
    make_breakers: MakeBreakers, clock: Clock
) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    slow = breaker.before()  # a call that began while closed ...
    _open(breaker)
    clock.advance(30)
    breaker.success(slow)  # ... and ended after the breaker opened: it says nothing about a probe
    assert breaker.state()["state"] == "half_open"
    assert breaker.before().probe


def test_a_dead_endpoint_gets_at_most_one_probe_per_cooldown(
    make_breakers: MakeBreakers, clock: Clock
) -> None:
    """The chaos target, with two callers (two processes when on Redis) polling every 0.25 s for 10 min."""
    one, two = make_breakers().breaker("dead", SPEC), make_breakers().breaker("dead", SPEC)
    _open(one)
    probes: list[float] = []
    for tick in range(2400):
        for index, breaker in enumerate((one, two)):
            try:
                permit = breaker.before()
            except BreakerOpen:
                continue
            assert permit.probe
            probes.append(clock.now)
            if (tick + index) % 3:  # two probes in three fail, the others are lost (their caller crashed)
                breaker.failure(permit)
        clock.advance(0.25)
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    assert len(probes) >= 15
    assert len(probes) <= 600 / 30
    assert min(gaps) >= 30
    assert one.state()["state"] in ("open", "half_open")


def test_racing_callers_get_exactly_one_probe(make_breakers: MakeBreakers, clock: Clock) -> None:
    breakers = [make_breakers().breaker("e", SPEC) for _ in range(2)]
    _open(breakers[0])
    clock.advance(30)
    start = threading.Barrier(16)
    permits: list[Permit] = []
    refused: list[BreakerOpen] = []

    def caller(breaker: Breaker) -> None:
        start.wait()
        try:
            permits.append(breaker.before())
        except BreakerOpen as exc:
            refused.append(exc)

    threads = [threading.Thread(target=caller, args=(breakers[i % 2],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(permits) == 1
    assert permits[0].probe
    assert len(refused) == 15


def test_status_lists_every_breaker_by_endpoint(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers()
    zeta = breakers.breaker("zeta", SPEC)
    assert breakers.breaker("zeta", SPEC) is zeta
    breakers.breaker("alpha", SPEC)
    _open(zeta)
    other = make_breakers()  # on Redis: another process sees the breakers this one created
    status = other.status()
    assert [s["endpoint"] for s in status] == ["alpha", "zeta"]
    assert [s["state"] for s in status] == ["closed", "open"]
    assert set(status[0]) == {
        "endpoint",
        "state",
        "calls",
        "failures",
        "failure_rate",
        "opened_at",
        "retry_after",
        "opens",
    }


def test_a_spec_change_keeps_the_state(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers()
    _open(breakers.breaker("e", SPEC))
    changed = breakers.breaker("e", BreakerSpec(min_calls=100, cooldown_s=60))
    assert changed.spec.min_calls == 100
    assert changed.state()["state"] == "open"


def test_shared_breakers_use_redis_time_without_a_clock(prefix: str) -> None:
    if not _redis_answers():
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    one, two = Breakers(REDIS_URL, prefix=prefix), Breakers(REDIS_URL, prefix=prefix)
    assert one.shared
    _open(one.breaker("e", SPEC))
    with pytest.raises(BreakerOpen) as raised:
        two.breaker("e", SPEC).before()
    assert raised.value.retry_after is not None
    assert 29 < raised.value.retry_after <= 30
    import time

    assert abs(two.breaker("e", SPEC).state()["opened_at"] - time.time()) < 5
    one.close()
    two.close()


def test_redis_down_is_a_retryable_lm_error() -> None:
    breakers = Breakers("redis://127.0.0.1:1/0")
    with pytest.raises(
        LMError, match=r"circuit breaker cannot use Redis at redis://127\.0\.0\.1:1/0"
    ) as raised:
        breakers.breaker("e", SPEC).before()
    assert raised.value.retryable
    assert not isinstance(raised.value, BreakerOpen)
    breakers.close()


async def test_async_methods_move_the_same_state(make_breakers: MakeBreakers, clock: Clock) -> None:
    breaker = make_breakers().breaker("e", SPEC)
    for _ in range(SPEC.min_calls):
        await breaker.afailure(await breaker.abefore())
    with pytest.raises(BreakerOpen):
        await breaker.abefore()
    clock.advance(30)
    probe = await breaker.abefore()
    assert probe.probe
    await breaker.asuccess(probe)
    assert breaker.state()["state"] == "closed"
