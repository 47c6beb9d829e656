"""The bandit on its own: convergence, drift recovery, safe exploration, guardrails, contexts, settings."""

from __future__ import annotations

import numpy as np
import pytest

from dspex.adapt.features import Feature, context_of
from dspex.adapt.policy import PolicyConfig, PolicyState
from dspex.adapt.reward import Reward
from dspex.errors import ConfigurationError


def play(
    state: PolicyState,
    means: dict[str, float],
    runs: int,
    rng: np.random.Generator,
    env: np.random.Generator,
) -> dict[str, int]:
    """Serve ``runs`` runs with Bernoulli rewards of these means; counts per arm."""
    counts = dict.fromkeys(means, 0)
    for _ in range(runs):
        decision = state.choose(list(means), context=None, rng=rng)
        counts[decision.arm] += 1
        reward = float(env.random() < means[decision.arm])
        state.observe_serve(decision.arm, reason=decision.reason, failed=False, reward=reward, quality=reward)
    return counts


@pytest.mark.parametrize("algorithm", ["thompson", "ucb"])
def test_it_converges_to_the_best_arm_on_a_stationary_stream(algorithm: str) -> None:
    means = {"a": 0.5, "b": 0.8, "c": 0.3}
    state = PolicyState(PolicyConfig(algorithm=algorithm), list(means))  # type: ignore[arg-type]
    rng, env = np.random.default_rng(1), np.random.default_rng(2)
    play(state, means, 300, rng, env)
    late = play(state, means, 500, rng, env)
    assert late["b"] / 500 >= 0.8
    assert state.best(list(means)) == "b"
    view = state.view("b")
    assert view.mean is not None
    assert view.low < 0.8 < view.high


def test_it_recovers_after_a_drift() -> None:
    before = {"a": 0.85, "b": 0.6}
    after = {"a": 0.2, "b": 0.6}
    state = PolicyState(PolicyConfig(), list(before))
    rng, env = np.random.default_rng(3), np.random.default_rng(4)
    counts = play(state, before, 600, rng, env)
    assert counts["a"] > counts["b"]
    play(state, after, 100, rng, env)
    late = play(state, after, 300, rng, env)
    assert late["b"] / 300 >= 0.8
    assert state.view("a").resets >= 1  # the change detector reset it rather than waiting for the discount


def test_without_forgetting_or_detection_a_drift_is_slow_to_notice() -> None:
    # The same stream with discount 1.0 and no detector: the old arm keeps most traffic for longer.
    before, after = {"a": 0.85, "b": 0.6}, {"a": 0.2, "b": 0.6}
    state = PolicyState(PolicyConfig(discount=1.0, detector=False), list(before))
    rng, env = np.random.default_rng(3), np.random.default_rng(4)
    play(state, before, 600, rng, env)
    soon = play(state, after, 40, rng, env)
    adaptive = PolicyState(PolicyConfig(), list(before))
    rng, env = np.random.default_rng(3), np.random.default_rng(4)
    play(adaptive, before, 600, rng, env)
    soon_adaptive = play(adaptive, after, 40, rng, env)
    assert soon_adaptive["b"] > soon["b"]


def test_exploration_stays_under_its_ceiling() -> None:
    means = dict.fromkeys("abcdefgh", 0.5)  # nothing to learn: Thompson would explore a lot
    state = PolicyState(PolicyConfig(explore_ceiling=0.1, explore_window=100, detector=False), list(means))
    rng, env = np.random.default_rng(5), np.random.default_rng(6)
    reasons: dict[str, int] = {}
    for _ in range(600):
        decision = state.choose(list(means), context=None, rng=rng)
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
        reward = float(env.random() < 0.5)
        state.observe_serve(decision.arm, reason=decision.reason, failed=False, reward=reward)
    assert state.explore_share() <= 0.11
    assert reasons["explore"] <= 0.1 * 600 + 10
    assert reasons["guardrail"] > 0  # the ceiling turned explorations into the best arm


def test_guardrail_flags_an_arm_that_fails_and_one_below_the_quality_floor() -> None:
    state = PolicyState(
        PolicyConfig(guardrail_min_runs=10, max_error_rate=0.3, min_quality=0.4), ["ok", "err", "bad"]
    )
    for _ in range(30):
        state.observe_serve("ok", reason="exploit", failed=False, reward=0.9, quality=0.9)
        state.observe_serve("err", reason="explore", failed=True, reward=0.0, quality=0.0)
        state.observe_serve("bad", reason="explore", failed=False, reward=0.1, quality=0.05)
    flagged = dict(state.breaches(["ok", "err", "bad"]))
    assert set(flagged) == {"err", "bad"}
    assert "error rate 100%" in flagged["err"]
    assert "mean quality 0.05" in flagged["bad"]


def test_a_new_arm_is_tried_and_can_take_over() -> None:
    state = PolicyState(PolicyConfig(), ["a"])
    rng, env = np.random.default_rng(7), np.random.default_rng(8)
    play(state, {"a": 0.5}, 100, rng, env)
    state.add_arm("b")
    play(state, {"a": 0.5, "b": 0.9}, 200, rng, env)
    late = play(state, {"a": 0.5, "b": 0.9}, 200, rng, env)
    assert late["b"] / 200 >= 0.8


def test_contexts_learn_a_different_best_arm_each() -> None:
    features = [Feature("topic")]
    means = {("math", "a"): 0.9, ("math", "b"): 0.3, ("geo", "a"): 0.3, ("geo", "b"): 0.9}
    state = PolicyState(PolicyConfig(detector=False), ["a", "b"])
    rng, env = np.random.default_rng(9), np.random.default_rng(10)
    for i in range(1200):
        topic = "math" if i % 2 else "geo"
        context = context_of(features, {"topic": topic})
        decision = state.choose(["a", "b"], context=context, rng=rng)
        reward = float(env.random() < means[(topic, decision.arm)])
        state.observe_serve(
            decision.arm, reason=decision.reason, failed=False, reward=reward, context=context
        )
    assert state.best(["a", "b"], "topic=math") == "a"
    assert state.best(["a", "b"], "topic=geo") == "b"


def test_length_features_bucket_inputs() -> None:
    feature = Feature("question", kind="length", bounds=(10, 100))
    assert [feature.bucket({"question": "x" * n}) for n in (3, 50, 500)] == ["<10", "10-100", ">=100"]
    assert (
        context_of([feature, Feature("topic")], {"question": "hi", "topic": "a|b"})
        == "question=<10|topic=a/b"
    )


def test_reward_combines_quality_cost_and_latency() -> None:
    reward = Reward(quality=2.0, cost=1.0, latency=1.0, cost_scale_usd=0.01, latency_scale_ms=1000)
    assert reward.combine(1.0, 0.0, 0.0) == 1.0
    assert reward.combine(0.5, 0.005, 500.0) == pytest.approx((1.0 + 0.5 + 0.5) / 4)
    assert reward.combine(1.0, 1.0, 10_000.0) == pytest.approx(0.5)  # cost and latency terms floor at 0
    assert reward.combine(None, 0.0, 0.0) is None  # quality still to come (feedback)
    assert Reward(quality=0.0, latency=1.0).combine(None, None, 250.0) == pytest.approx(0.95)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PolicyConfig(algorithm="greedy"), "'thompson' or 'ucb'"),  # type: ignore[arg-type]
        (lambda: PolicyConfig(discount=0.1), "'discount' is a number in \\[0.5, 1\\]"),
        (lambda: PolicyConfig(explore_ceiling=2), "'explore_ceiling'"),
        (lambda: PolicyConfig.from_json({"discont": 0.9}), "unknown policy setting\\(s\\) \\['discont'\\]"),
        (lambda: Reward(quality=0, cost=0, latency=0), "a weight > 0"),
        (lambda: Reward(latency_scale_ms=0), "'latency_scale_ms' is a finite number > 0"),
        (lambda: Reward.from_json({"qualty": 1}), "unknown reward setting"),
        (lambda: Feature("question", kind="length"), "needs bounds"),
        (lambda: Feature("not a field"), "names an input field"),
    ],
)
def test_bad_settings_say_what_to_change(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]
