from __future__ import annotations

from dspex.lm.pricing import Price, Prices
from dspex.telemetry.usage import CallUsage, UsageTotals


def test_count_and_add_usage_report_the_call_and_sum_per_model() -> None:
    totals = UsageTotals(prices=Prices({"m": Price(1.0, 2.0)}, use_dspy_metadata=False))
    call = totals.add_usage("m", {"prompt_tokens": 1000, "completion_tokens": 500})
    assert call == CallUsage(1000, 500, 1500, 0.002)
    assert totals.count("m", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 16}) == (
        10,
        5,
        16,
        (10 * 1.0 + 5 * 2.0) / 1e6,
    )
    assert totals.count("unpriced", {"prompt_tokens": 1}) == (1, 0, 1, None)
    usage, total, cost = totals.summary()
    assert usage["m"]["calls"] == 2
    assert usage["m"]["total_tokens"] == 1516
    assert total == 1517
    assert cost is None  # one model's price is unknown


def test_prices_are_looked_up_once_and_unknown_stays_unknown() -> None:
    prices = Prices({"openai/known": Price(1.0, 1.0)}, use_dspy_metadata=False)
    for _ in range(2):  # the second time from the cache
        assert prices.price("openai/known") == Price(1.0, 1.0)
        assert prices.price("other/known") is None  # the bare name "known" is not in the table
        assert prices.price("nobody/knows") is None
        assert prices.cost("nobody/knows", 10, 10) is None
        assert prices.cost("openai/known", 10, 10) == 20 / 1e6
