"""Successive halving for the holistic optimizer (:mod:`dspex.optimize.search`): the pruner, and a
trial that can be evaluated one minibatch at a time (what the start-up bracket needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from dspex.store.optimizations import OptimizationRepository, TrialRecord
from dspex.variables.configuration import Configuration

if TYPE_CHECKING:
    from dspex.optimize.search import TrialProgress

__all__ = ["OpenTrial", "SearchPass", "SuccessiveHalving"]


@dataclass(slots=True)
class SearchPass:
    """One process's pass over a run: its study, where its trials are written, and progress so far."""

    study: optuna.Study
    repo: OptimizationRepository
    run_id: str
    on_trial: Callable[[TrialProgress], None] | None
    lm_calls: int = 0
    failures: int = 0
    best: TrialRecord | None = None


@dataclass(slots=True, eq=False)
class OpenTrial:
    """A trial between its ``running`` row and its end: its configured program (or why it has none) and
    what its minibatches gave so far, so that it can be evaluated one minibatch at a time."""

    trial: optuna.Trial
    number: int
    params: dict[str, Any]
    distributions: dict[str, Any]
    config: Configuration | None = None
    configured: Any = None
    key: str = ""
    error: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    lm_calls: int = 0
    spent: float = 0.0
    fresh: int = 0
    seconds: float = 0.0
    closed: bool = False

    def ended(self) -> dict[str, Any]:
        """What to record: the outcome so far and the time spent on this trial."""
        return {**self.outcome, "duration_s": self.seconds}

    def failure(self) -> dict[str, Any]:
        """What to record for a trial whose params violate a constraint."""
        return {"error": self.error, "duration_s": self.seconds}


class SuccessiveHalving(optuna.pruners.BasePruner):
    """Successive halving on the minibatch ladder, judged against every trial that reported a score at
    the same minibatch size, the open ones included.

    Optuna's ``SuccessiveHalvingPruner`` ranks a trial only among the trials judged at that rung before
    it, so trials scored side by side (the start-up bracket, :meth:`HolisticOptimizer._bracket_size`)
    would be judged one at a time, the first against nothing. Here a trial goes on when its score is in
    the top ``1/growth`` of the rung's scores (at least the best one: Optuna's own rule). It needs only
    the trials' intermediate scores, which the trial rows store, so a resumed run judges the same way.
    Trials evaluated one by one are judged exactly as Optuna's pruner judges them."""

    def __init__(self, growth: int) -> None:
        self.growth = growth

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        competing = [value]
        for other in study.get_trials(deepcopy=False):
            score = other.intermediate_values.get(step)
            if other.number != trial.number and score is not None and not math.isnan(score):
                competing.append(score)
        competing.sort(reverse=True)
        return value < competing[max(0, len(competing) // self.growth - 1)]
