"""The retry budget: retries allowed per minute of calls, counted per second in bounded memory."""

from __future__ import annotations

import pytest

from dspex.lm import resilient
from dspex.lm.resilient import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(resilient.time, "monotonic", clock)
    return clock


def test_retries_are_a_share_of_the_last_minutes_calls_plus_the_minimum(clock: Clock) -> None:
    budget = RetryBudget(ratio=0.1, minimum=2)
    for _ in range(30):
        budget.call()
        clock.now += 0.5  # 30 calls over 15 s
    assert budget.status() == {"calls_last_min": 30, "retries_last_min": 0, "allowed": 5.0}
    assert [budget.spend() for _ in range(6)] == [True] * 5 + [False]
    assert budget.status()["retries_last_min"] == 5


def test_calls_and_retries_older_than_a_minute_no_longer_count(clock: Clock) -> None:
    budget = RetryBudget(ratio=1.0, minimum=0)
    for _ in range(10):
        budget.call()
    assert budget.spend()
    clock.now += 59.0  # the same window: its first second is still in
    assert budget.status()["calls_last_min"] == 10
    clock.now += 1.0
    assert budget.status() == {"calls_last_min": 0, "retries_last_min": 0, "allowed": 0.0}
    assert not budget.spend()  # no calls in the window: nothing to spend


def test_a_long_stream_of_calls_keeps_one_count_per_second(clock: Clock) -> None:
    budget = RetryBudget(ratio=0.2, minimum=0)
    for _ in range(10 * 60 * 100):  # 100 calls a second for ten minutes
        budget.call()
        clock.now += 0.01
    assert len(budget._calls) <= RetryBudget.WINDOW_S
    assert budget.status()["calls_last_min"] in range(5_900, 6_001)
