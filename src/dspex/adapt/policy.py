"""The bandit: which arm serves the next run, learnt from the rewards of the runs before.

Pure and in memory: :class:`PolicyState` is fed the events of the shared log
(:mod:`dspex.store.adapt`) in order and answers :meth:`PolicyState.choose`. ::

    state = PolicyState(PolicyConfig(), arms=["a", "b"])
    state.observe_serve("a", reason="explore", failed=False, reward=0.9)
    decision = state.choose(["a", "b"], context=None, rng=numpy.random.default_rng(0))
    decision.arm, decision.reason          # ("a", "exploit")

Algorithms. ``thompson`` (default): discounted Thompson sampling with Beta posteriors; rewards are in
[0, 1] and update ``alpha += r, beta += 1 - r`` (the usual extension of Beta-Bernoulli to fractional
rewards). ``ucb``: discounted UCB (Garivier and Moulines, 2011), index ``mean + c * sqrt(2 ln N / n)``.

Drift. Every observed reward first multiplies every arm's counts by ``discount`` (so an observation made
``k`` rewards ago weighs ``discount ** k``; 1.0 remembers forever), and a change detector watches each
arm's rewards: Page's two-sided CUSUM of :mod:`dspex.telemetry.detect`, standardised by the arm's first
``detector_warmup`` rewards. When it alarms, the arm's statistics are reset to the prior and every other
arm keeps at most ``reset_keep`` effective observations (its mean, with a wider posterior): when one arm
changes, the world may have changed for the others too, so they are looked at again.

Safe exploration. A choice that is not the arm with the best posterior mean is exploration; when the
share of exploration among the last ``explore_window`` runs served (by every process) has reached
``explore_ceiling``, the best arm serves instead (reason ``guardrail``). Guardrails retire an arm whose
error rate has a Wilson lower bound above ``max_error_rate``, or whose mean quality has an upper bound
below ``min_quality``, after ``guardrail_min_runs`` runs (the decision is the caller's to store).

Context. When an adaptive program declares features, a run's context is a short string built from them;
each arm keeps statistics per context too, and its posterior in a context is the context's counts plus
``context_prior`` pseudo-observations at the arm's overall mean (a context seen rarely leans on the arm's
overall record; a context seen often speaks for itself).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from dspex.adapt._settings import from_mapping
from dspex.errors import ConfigurationError
from dspex.telemetry.detect import Cusum

__all__ = ["REASONS", "Algorithm", "ArmView", "Decision", "PolicyConfig", "PolicyState", "Reason"]

Algorithm = Literal["thompson", "ucb"]
Reason = Literal["exploit", "explore", "guardrail", "frozen"]
REASONS: tuple[Reason, ...] = ("exploit", "explore", "guardrail", "frozen")
_Z = 1.96  # two-sided 95% for the guardrails' Wilson bounds


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The policy's settings (module docstring); JSON in the adaptive program's spec."""

    algorithm: Algorithm = "thompson"
    discount: float = 0.998
    explore_ceiling: float = 0.25
    explore_window: int = 200
    ucb_c: float = 0.5
    detector: bool = True
    detector_warmup: int = 20
    detector_k: float = 0.5
    detector_h: float = 8.0
    detector_min_shift: float = 0.1
    reset_keep: float = 10.0
    max_error_rate: float = 0.5
    min_quality: float | None = None
    guardrail_min_runs: int = 20
    context_prior: float = 5.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ("thompson", "ucb"):
            raise ConfigurationError(f"policy algorithm is 'thompson' or 'ucb', got {self.algorithm!r}")
        _number("discount", self.discount, 0.5, 1.0)
        _number("explore_ceiling", self.explore_ceiling, 0.0, 1.0)
        _number("max_error_rate", self.max_error_rate, 0.0, 1.0)
        if self.min_quality is not None:
            _number("min_quality", self.min_quality, 0.0, 1.0)
        for name in (
            "ucb_c",
            "detector_k",
            "detector_h",
            "detector_min_shift",
            "reset_keep",
            "context_prior",
        ):
            _number(name, getattr(self, name), 0.0, 1e9)
        for name in ("explore_window", "detector_warmup", "guardrail_min_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise ConfigurationError(f"policy setting {name!r} is a whole number >= 1, got {value!r}")
        if not isinstance(self.detector, bool):
            raise ConfigurationError(f"policy setting 'detector' is true or false, got {self.detector!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigurationError(f"policy seed is a whole number or null, got {self.seed!r}")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyConfig:
        return from_mapping(cls, data, "policy", "a policy is a mapping of settings")

    @property
    def horizon(self) -> int:
        """How many past rewards still weigh at least 0.1% (what a restarting process replays)."""
        if self.discount >= 1.0:
            return 20_000
        return min(20_000, max(1000, math.ceil(math.log(1e-3) / math.log(self.discount))))


def _number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"policy setting {name!r} is a number in [{low:g}, {high:g}], got {value!r}")
    if not low <= value <= high:
        raise ConfigurationError(f"policy setting {name!r} is a number in [{low:g}, {high:g}], got {value!r}")


@dataclass(slots=True)
class _Discounted:
    """A discounted count and sum, discounted lazily: stored as of step ``t``."""

    n: float = 0.0
    total: float = 0.0
    t: int = 0

    def at(self, t: int, gamma: float) -> tuple[float, float]:
        if t == self.t or gamma >= 1.0:
            return self.n, self.total
        factor = gamma ** (t - self.t)
        return self.n * factor, self.total * factor

    def add(self, t: int, gamma: float, value: float) -> None:
        n, total = self.at(t, gamma)
        self.n, self.total, self.t = n + 1.0, total + value, t

    def cap(self, t: int, gamma: float, keep: float) -> None:
        n, total = self.at(t, gamma)
        if n > keep > 0:
            total, n = total * keep / n, keep
        elif keep <= 0:
            n = total = 0.0
        self.n, self.total, self.t = n, total, t


@dataclass(slots=True)
class _Arm:
    rewards: _Discounted = field(default_factory=_Discounted)
    contexts: dict[str, _Discounted] = field(default_factory=dict)
    runs: _Discounted = field(default_factory=_Discounted)  # total: failures
    quality: _Discounted = field(default_factory=_Discounted)
    served: int = 0
    rewarded: int = 0
    reward_sum: float = 0.0
    resets: int = 0
    detector: Cusum | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Which arm serves a run and why; ``best`` is the arm with the best posterior mean."""

    arm: str
    reason: Reason
    best: str
    context: str | None = None


@dataclass(frozen=True, slots=True)
class ArmView:
    """What the policy believes about one arm now (for the API, the CLI and the signals)."""

    arm: str
    mean: float | None
    low: float
    high: float
    effective_n: float
    served: int
    rewarded: int
    mean_reward_all: float | None
    error_rate: float | None
    resets: int

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "posterior_mean": self.mean,
            "interval": [self.low, self.high],
            "effective_n": self.effective_n,
            "served": self.served,
            "rewarded": self.rewarded,
            "mean_reward": self.mean_reward_all,
            "error_rate": self.error_rate,
            "resets": self.resets,
        }


def _beta_interval(alpha: float, beta: float) -> tuple[float, float]:
    """A normal approximation of the central 95% of Beta(alpha, beta), clipped to [0, 1]."""
    mean = alpha / (alpha + beta)
    sd = math.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1.0)))
    return max(0.0, mean - _Z * sd), min(1.0, mean + _Z * sd)


def _wilson(successes: float, n: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1.0 + _Z * _Z / n
    center = (p + _Z * _Z / (2 * n)) / denominator
    half = _Z * math.sqrt(p * (1 - p) / n + _Z * _Z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


class PolicyState:
    """The policy's statistics over the events it was fed (module docstring). Not thread-safe: the
    adaptive program holds a lock around it."""

    def __init__(self, config: PolicyConfig, arms: Sequence[str] = ()) -> None:
        self.config = config
        self.arms: dict[str, _Arm] = {}
        self.step = 0  # rewards observed: the clock of the discount
        self.run_step = 0  # runs observed: the clock of the guardrails' counts
        self.reasons: collections.deque[str] = collections.deque(maxlen=config.explore_window)
        for arm in arms:
            self.add_arm(arm)

    def add_arm(self, arm: str) -> None:
        if arm not in self.arms:
            self.arms[arm] = _Arm(detector=self._detector())

    def _detector(self) -> Cusum | None:
        c = self.config
        if not c.detector:
            return None
        return Cusum(
            warmup=c.detector_warmup,
            k=c.detector_k,
            h=c.detector_h,
            sd_floor=0.05,
            min_shift=c.detector_min_shift,
        )

    # -- feeding it ----------------------------------------------------------------------------------
    def observe_serve(
        self,
        arm: str,
        *,
        reason: str | None,
        failed: bool,
        reward: float | None = None,
        quality: float | None = None,
        context: str | None = None,
    ) -> bool:
        """One run ``arm`` served; with its reward when known at once. True when the change detector
        reset the arm (see :meth:`observe_reward`)."""
        self.add_arm(arm)
        state = self.arms[arm]
        state.served += 1
        self.run_step += 1
        state.runs.add(self.run_step, self.config.discount, 1.0 if failed else 0.0)
        self.reasons.append(reason or "exploit")
        if reward is None:
            return False
        return self.observe_reward(arm, reward, quality=quality, context=context)

    def observe_reward(
        self, arm: str, reward: float, *, quality: float | None = None, context: str | None = None
    ) -> bool:
        """One reward for ``arm`` (a served run's, maybe delayed). True when the change detector alarmed
        and the arm's statistics were reset."""
        self.add_arm(arm)
        state = self.arms[arm]
        gamma = self.config.discount
        self.step += 1
        reward = min(1.0, max(0.0, float(reward)))
        state.rewards.add(self.step, gamma, reward)
        if context is not None:
            state.contexts.setdefault(context, _Discounted()).add(self.step, gamma, reward)
        if quality is not None:
            state.quality.add(self.step, gamma, min(1.0, max(0.0, float(quality))))
        state.rewarded += 1
        state.reward_sum += reward
        if state.detector is not None and state.detector.add(reward) is not None:
            self.reset(arm)
            return True
        return False

    def reset(self, arm: str) -> None:
        """Forget ``arm``'s rewards (back to the prior); other arms keep ``reset_keep`` observations."""
        keep = self.config.reset_keep
        gamma = self.config.discount
        for name, state in self.arms.items():
            if name == arm:
                state.rewards = _Discounted(t=self.step)
                state.contexts = {}
                state.quality = _Discounted(t=self.step)
                state.resets += 1
            else:
                state.rewards.cap(self.step, gamma, keep)
                state.quality.cap(self.step, gamma, keep)
                for stat in state.contexts.values():
                    stat.cap(self.step, gamma, keep)

    # -- reading it ----------------------------------------------------------------------------------
    def _posterior(self, arm: str, context: str | None) -> tuple[float, float]:
        """Beta(alpha, beta) of ``arm``'s reward, in ``context`` when given."""
        state = self.arms[arm]
        n, total = state.rewards.at(self.step, self.config.discount)
        alpha, beta = 1.0 + total, 1.0 + max(0.0, n - total)
        if context is None:
            return alpha, beta
        stat = state.contexts.get(context)
        n_c, total_c = stat.at(self.step, self.config.discount) if stat is not None else (0.0, 0.0)
        mean = alpha / (alpha + beta)
        weight = min(n, self.config.context_prior)
        return 1.0 + total_c + weight * mean, 1.0 + max(0.0, n_c - total_c) + weight * (1.0 - mean)

    def best(self, candidates: Sequence[str], context: str | None = None) -> str:
        """The candidate with the best posterior mean among those with rewards (else the first)."""
        observed = [a for a in candidates if self.arms[a].rewards.at(self.step, self.config.discount)[0] > 0]
        pool = observed or list(candidates)

        def mean(arm: str) -> float:
            alpha, beta = self._posterior(arm, context)
            return alpha / (alpha + beta)

        return max(pool, key=mean)

    def explore_share(self) -> float:
        if not self.reasons:
            return 0.0
        return sum(1 for r in self.reasons if r == "explore") / len(self.reasons)

    def choose(self, candidates: Sequence[str], *, context: str | None, rng: Any) -> Decision:
        """The arm to serve the next run among ``candidates`` (active arms), and why."""
        if not candidates:
            raise ConfigurationError("the adaptive program has no active arm to serve; add arms")
        for arm in candidates:
            self.add_arm(arm)
        if len(candidates) == 1:
            only = candidates[0]
            reason: Reason = "guardrail" if len(self.arms) > 1 else "exploit"
            return Decision(only, reason, only, context)
        best = self.best(candidates, context)
        if self.config.algorithm == "thompson":
            scores = {}
            for arm in candidates:
                alpha, beta = self._posterior(arm, context)
                scores[arm] = float(rng.beta(alpha, beta))
        else:
            scores = self._ucb(candidates, context)
        pick = max(candidates, key=lambda a: scores[a])
        if pick == best:
            return Decision(best, "exploit", best, context)
        if self.explore_share() >= self.config.explore_ceiling:
            return Decision(best, "guardrail", best, context)
        return Decision(pick, "explore", best, context)

    def _ucb(self, candidates: Sequence[str], context: str | None) -> dict[str, float]:
        counts = {}
        for arm in candidates:
            alpha, beta = self._posterior(arm, context)
            counts[arm] = (alpha + beta - 2.0, alpha / (alpha + beta))
        total = sum(n for n, _ in counts.values())
        scores = {}
        for arm, (n, mean) in counts.items():
            if n < 1e-9:
                scores[arm] = math.inf
            else:
                scores[arm] = mean + self.config.ucb_c * math.sqrt(2.0 * math.log(max(total, 1.0 + 1e-9)) / n)
        return scores

    def breaches(self, candidates: Sequence[str]) -> list[tuple[str, str]]:
        """Arms among ``candidates`` a guardrail would retire, with the reason."""
        c = self.config
        found = []
        for arm in candidates:
            state = self.arms.get(arm)
            if state is None:
                continue
            n, failures = state.runs.at(self.run_step, c.discount)
            if n >= c.guardrail_min_runs:
                low, _ = _wilson(failures, n)
                if low > c.max_error_rate:
                    found.append(
                        (
                            arm,
                            f"error rate {failures / n:.0%} over the recent runs (limit {c.max_error_rate:.0%})",
                        )
                    )
                    continue
            if c.min_quality is not None:
                qn, qtotal = state.quality.at(self.step, c.discount)
                if qn >= c.guardrail_min_runs:
                    _, high = _wilson(qtotal, qn)
                    if high < c.min_quality:
                        found.append(
                            (
                                arm,
                                f"mean quality {qtotal / qn:.2f} over the recent runs (floor {c.min_quality:.2f})",
                            )
                        )
        return found

    def view(self, arm: str) -> ArmView:
        self.add_arm(arm)
        state = self.arms[arm]
        n, _ = state.rewards.at(self.step, self.config.discount)
        alpha, beta = self._posterior(arm, None)
        low, high = _beta_interval(alpha, beta)
        runs, failures = state.runs.at(self.run_step, self.config.discount)
        return ArmView(
            arm=arm,
            mean=alpha / (alpha + beta) if n > 0 else None,
            low=low,
            high=high,
            effective_n=n,
            served=state.served,
            rewarded=state.rewarded,
            mean_reward_all=state.reward_sum / state.rewarded if state.rewarded else None,
            error_rate=failures / runs if runs > 0 else None,
            resets=state.resets,
        )

    def degraded(self, candidates: Sequence[str], below: float, min_n: float) -> bool:
        """Whether every candidate's posterior mean is below ``below`` with at least ``min_n`` effective
        rewards each (the re-optimization trigger)."""
        if not candidates:
            return False
        for arm in candidates:
            view = self.view(arm)
            if view.mean is None or view.effective_n < min_n or view.mean >= below:
                return False
        return True
