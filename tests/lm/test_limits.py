"""Rate limits per model: RPM, TPM and concurrency, in this process and shared through Redis.

The per-minute windows are scaled down to 1 s (``window_s=1``) where a test must see one pass; a test
that must see nothing pass uses the real 60 s window.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from dspex.errors import ConfigurationError, DeadlineExceeded, LMError
from dspex.lm.limits import Limits, LimitSpec

REDIS_URL = "redis://127.0.0.1:6379/0"
MakeLimits = Callable[..., Limits]


def _redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


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


@pytest.fixture(params=["memory", "redis"])
def make_limits(request: pytest.FixtureRequest, prefix: str) -> Iterator[MakeLimits]:
    """Builds Limits in this process or on Redis (skipped when Redis does not answer at 127.0.0.1:6379)."""
    shared = request.param == "redis"
    if shared and not _redis_answers():
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    made: list[Limits] = []

    def make(*, window_s: int = 60, slot_lease_s: float = 300.0) -> Limits:
        limits = Limits(
            REDIS_URL if shared else None, prefix=prefix, window_s=window_s, slot_lease_s=slot_lease_s
        )
        made.append(limits)
        return limits

    yield make
    for limits in made:
        limits.close()


@pytest.fixture
def redis_prefix(prefix: str) -> str:
    if not _redis_answers():
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    return prefix


def test_spec_validates_and_says_what_is_active() -> None:
    assert not LimitSpec().active()
    assert LimitSpec(max_concurrent=1).active()
    with pytest.raises(ConfigurationError, match="rpm=0 must be a positive integer"):
        LimitSpec(rpm=0)
    with pytest.raises(ConfigurationError, match=r"tpm=1\.5"):
        LimitSpec(tpm=1.5)  # type: ignore[arg-type]  # the check under test


def test_no_limits_admit_at_once(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec())
    lease = limiter.acquire(tokens=10**9, deadline=time.monotonic())
    lease.release(tokens_used=10**9)
    assert limiter.status() == {
        "key": "m",
        "rpm": None,
        "tpm": None,
        "max_concurrent": None,
        "requests_last_min": None,
        "tokens_last_min": None,
        "in_flight": None,
    }


def test_rpm_admits_the_limit_then_waits_for_the_oldest_to_leave_the_window(
    make_limits: MakeLimits,
) -> None:
    limiter = make_limits(window_s=1).limiter("m", LimitSpec(rpm=3))
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire().release()
    assert limiter.status()["requests_last_min"] == 3
    # The 4th can only go once the 1st is a full window old: a deadline before that fails at once.
    with pytest.raises(DeadlineExceeded, match="rpm=3") as raised:
        limiter.acquire(deadline=time.monotonic() + 0.05)
    assert raised.value.waited_s is not None
    assert raised.value.waited_s < 0.05
    lease = limiter.acquire()
    assert time.monotonic() - started >= 0.99
    assert lease.waited_s > 0
    lease.release()


def test_a_call_larger_than_tpm_is_a_configuration_error(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec(tpm=1000))
    with pytest.raises(ConfigurationError, match=r"1001 tokens can never fit 'm'.*tpm=1000"):
        limiter.acquire(tokens=1001)


def test_tpm_refusal_does_not_charge_rpm(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec(rpm=10, tpm=100))
    limiter.acquire(tokens=60).release()
    with pytest.raises(DeadlineExceeded, match="tpm=100"):
        limiter.acquire(tokens=60, deadline=time.monotonic() + 1)
    status = limiter.status()
    assert status["requests_last_min"] == 1
    assert 59 <= status["tokens_last_min"] <= 60


def test_release_charges_tokens_beyond_the_estimate_never_refunds_and_is_idempotent(
    make_limits: MakeLimits,
) -> None:
    limiter = make_limits().limiter("m", LimitSpec(tpm=100))
    lease = limiter.acquire(tokens=10)
    lease.release(tokens_used=95)
    lease.release(tokens_used=95)  # a second release is a no-op
    assert 94 <= limiter.status()["tokens_last_min"] <= 95
    limiter.acquire(tokens=2).release(tokens_used=1)  # fewer than estimated: the estimate stays charged
    assert 96 <= limiter.status()["tokens_last_min"] <= 97
    # Tokens used are charged even past the limit, so the window holds the next callers back for them.
    limiter.acquire(tokens=3).release(tokens_used=30)
    assert 126 <= limiter.status()["tokens_last_min"] <= 127
    with pytest.raises(DeadlineExceeded, match="tpm=100"):
        limiter.acquire(tokens=0, deadline=time.monotonic() + 1)


def test_max_concurrent_holds_then_admits_a_waiter_when_a_slot_frees(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec(max_concurrent=2))
    first, second = limiter.acquire(), limiter.acquire()
    assert limiter.status()["in_flight"] == 2
    with pytest.raises(DeadlineExceeded, match="all 2 concurrent calls to 'm'"):
        limiter.acquire(deadline=time.monotonic() + 0.05)
    admitted = threading.Event()

    def third() -> None:
        limiter.acquire(deadline=time.monotonic() + 10).release()
        admitted.set()

    waiter = threading.Thread(target=third)
    waiter.start()
    assert not admitted.wait(0.05)
    first.release()
    assert admitted.wait(5)
    waiter.join(5)
    second.release()
    assert limiter.status()["in_flight"] == 0


def test_a_failed_rate_wait_gives_the_slot_back(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec(rpm=1, max_concurrent=1))
    limiter.acquire().release()
    with pytest.raises(DeadlineExceeded, match="rpm=1"):
        limiter.acquire(deadline=time.monotonic() + 0.05)
    assert limiter.status()["in_flight"] == 0


async def test_async_acquire_holds_concurrency_and_never_blocks_the_loop(make_limits: MakeLimits) -> None:
    limiter = make_limits(window_s=1).limiter("m", LimitSpec(rpm=2, max_concurrent=1))
    holding = 0
    most = 0

    async def call() -> None:
        nonlocal holding, most
        lease = await limiter.aacquire(deadline=time.monotonic() + 10)
        holding += 1
        most = max(most, holding)
        await asyncio.sleep(0.01)
        holding -= 1
        await lease.arelease()

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    await asyncio.gather(call(), call(), call())  # the 3rd waits ~1 s for the rpm window
    ticking.cancel()
    assert most == 1
    assert time.monotonic() - started >= 0.99
    assert ticks >= 20  # the loop ran other tasks all through the wait


async def test_async_deadline_and_cancelled_waiter_leaks_no_slot(make_limits: MakeLimits) -> None:
    limiter = make_limits().limiter("m", LimitSpec(max_concurrent=1))
    held = await limiter.aacquire()
    with pytest.raises(DeadlineExceeded):
        await limiter.aacquire(deadline=time.monotonic() + 0.05)
    waiting = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await held.arelease()
    lease = await limiter.aacquire(deadline=time.monotonic() + 2)
    await lease.arelease()
    await asyncio.sleep(0.05)  # a take that finished in its thread after the cancel gives back meanwhile
    assert limiter.status()["in_flight"] == 0


def test_limiter_is_kept_per_key_and_spec_and_listed_by_key(make_limits: MakeLimits) -> None:
    limits = make_limits()
    b = limits.limiter("b", LimitSpec(rpm=5))
    assert limits.limiter("b", LimitSpec(rpm=5)) is b
    replaced = limits.limiter("b", LimitSpec(rpm=6))
    assert replaced is not b
    assert replaced.spec.rpm == 6
    limits.limiter("a", LimitSpec(tpm=9))
    assert [s["key"] for s in limits.status()] == ["a", "b"]
    with pytest.raises(ConfigurationError, match="needs a key"):
        limits.limiter("", LimitSpec())


def test_two_processes_share_rpm_and_slots_through_redis(redis_prefix: str) -> None:
    one, two = (Limits(REDIS_URL, prefix=redis_prefix) for _ in range(2))
    assert one.shared
    spec = LimitSpec(rpm=3, max_concurrent=2)
    a, b = one.limiter("m", spec), two.limiter("m", spec)
    a.acquire().release()
    a.acquire().release()
    held = b.acquire()
    with pytest.raises(DeadlineExceeded, match="rpm=3"):
        a.acquire(deadline=time.monotonic() + 1)
    assert a.status()["requests_last_min"] == 3
    assert a.status()["in_flight"] == 1
    held.release()
    assert b.status()["in_flight"] == 0
    one.close()
    two.close()


def test_a_crashed_holder_frees_its_shared_slot_after_the_lease(redis_prefix: str) -> None:
    crashed = Limits(REDIS_URL, prefix=redis_prefix, slot_lease_s=0.3)
    crashed.limiter("m", LimitSpec(max_concurrent=1)).acquire()  # never released: its process "died"
    died = time.monotonic()
    crashed.close()
    survivor = Limits(REDIS_URL, prefix=redis_prefix)
    limiter = survivor.limiter("m", LimitSpec(max_concurrent=1))
    with pytest.raises(DeadlineExceeded):
        limiter.acquire(deadline=time.monotonic() + 0.05)
    lease = limiter.acquire(deadline=time.monotonic() + 5)
    assert time.monotonic() - died >= 0.29
    lease.release()
    survivor.close()


def test_redis_down_is_a_retryable_lm_error_naming_the_server() -> None:
    limits = Limits("redis://127.0.0.1:1/0")
    with pytest.raises(LMError, match=r"Redis at redis://127\.0\.0\.1:1/0.*DSPEX_REDIS_URL") as raised:
        limits.limiter("m", LimitSpec(rpm=1)).acquire()
    assert raised.value.retryable
    limits.close()


def test_bad_redis_url_and_window_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="not one: use redis://"):
        Limits("http://user:secret@host")
    with pytest.raises(ConfigurationError, match="window_s=0"):
        Limits(window_s=0)


def test_import_dspex_stays_light() -> None:
    code = "import sys, dspex, dspex.lm.limits; print(sorted({'limits', 'redis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
