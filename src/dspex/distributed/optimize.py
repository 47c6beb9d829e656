"""Parallel trials for the holistic optimizer: ``parallel`` trials in flight at once, each evaluated
where its program runs (threads here, or a pool's workers / Ray actors with ``remote=``).

::

    optimizer = ParallelOptimizer(space, bindings, exact_match, n_trials=40, parallel=4,
                                  remote=lambda config: app.router.evaluation("qa", pool="cluster", ...).program)
    result = optimizer.optimize(program, devset, db=app.db, registry=app.programs, program_name="qa")

Everything else is :class:`~dspex.optimize.search.HolisticOptimizer`'s: the run and its trials are rows
of the project database, a killed driver's ``running`` trials are marked failed and the finished ones
replayed on resume, and the run ends with exactly ``n_trials`` finished trials.

How trials stay contiguous and unique: this process is the only one that asks Optuna (its study is
replayed from the database) and numbers trials (``start_trial`` under the database's write lock, checked
against Optuna's number); asks and tells happen under one lock, evaluations outside it. Trials asked
while others are running see them through multivariate TPE's ``constant_liar`` (the parallel-safe
setting: a running trial counts as a bad result, so the sampler spreads parallel asks instead of
repeating one point).

Pruning: the serial optimizer's successive halving, which judges a trial against every trial that
reported the same minibatch, trials still in flight included. Its start-up bracket (trials scored side
by side before any is judged) is not used here: trials in flight are judged as they report.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState as OptunaState

from dspex.errors import ConfigurationError
from dspex.optimize.search import HolisticOptimizer, TrialProgress, _best_by_quality, _tpe
from dspex.store.optimizations import OptimizationRepository, TrialRecord, TrialState

__all__ = ["ParallelOptimizer"]


class ParallelOptimizer(HolisticOptimizer):
    """:class:`HolisticOptimizer` with ``parallel`` trials at once (see the module docstring)."""

    def __init__(self, *args: Any, parallel: int = 2, **kwargs: Any) -> None:
        if not isinstance(parallel, int) or parallel < 1:
            raise ConfigurationError(f"parallel must be an int >= 1 (trials at once), got {parallel!r}")
        super().__init__(*args, **kwargs)
        self.parallel = parallel

    def _study(self, repo: OptimizationRepository, run_id: str) -> optuna.Study:
        study = super()._study(repo, run_id)
        if self._sampler is None and len(self.objectives) == 1:
            # The serial optimizer's sampler, seeded as it seeds it (past the replayed trials), plus
            # constant_liar: trials asked while others run are steered away from them.
            study.sampler = _tpe(self.seed + len(study.trials), constant_liar=True)
        return study

    def _search(
        self,
        repo: OptimizationRepository,
        run_id: str,
        program: Any,
        devset: list[Any],
        base: str,
        on_trial: Callable[[TrialProgress], None] | None = None,
        should_stop: Callable[[], None] | None = None,
    ) -> None:
        study = self._study(repo, run_id)
        previous = repo.trials(run_id)
        totals = {"lm_calls": sum(t.lm_calls for t in previous), "failures": 0}
        best: list[TrialRecord | None] = [None]
        for t in previous:
            best[0] = _best_by_quality(best[0], t)
        lock = threading.Lock()
        running: dict[
            Future[tuple[TrialState, dict[str, Any]]], tuple[Any, int, dict[str, Any], dict[str, Any]]
        ] = {}

        def room() -> bool:
            if self.max_lm_calls is not None and totals["lm_calls"] >= self.max_lm_calls:
                return False
            return repo.count(run_id) + len(running) < self.n_trials

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="dspex-trial") as executor:
            try:
                while True:
                    while len(running) < self.parallel and room():
                        if should_stop is not None:
                            should_stop()  # raises OptimizationStopped before a trial is started
                        with lock:
                            trial = study.ask()
                            params, distributions = self._suggest(trial)
                            number = repo.start_trial(
                                run_id,
                                {
                                    "values": params,
                                    "distributions": {
                                        k: distribution_to_json(d) for k, d in distributions.items()
                                    },
                                },
                            )
                        if number != trial.number:
                            raise ConfigurationError(
                                f"optimization {run_id!r} got trial number {number} but expected {trial.number}: "
                                "another process is running it; run one driver per optimization"
                            )
                        future = executor.submit(self._run_trial, trial, params, program, devset, base)
                        running[future] = (trial, number, params, distributions)
                    if not running:
                        return
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        trial, number, params, distributions = running.pop(future)
                        state, outcome = (
                            future.result()
                        )  # a bug in a trial (not a failed trial) stops the run
                        self._record(
                            repo, run_id, study, lock, trial, number, params, distributions, state, outcome
                        )
                        totals["lm_calls"] += outcome.get("lm_calls", 0)
                        totals["failures"] = totals["failures"] + 1 if state == "failed" else 0
                        if on_trial is not None:
                            stored = repo.trials(run_id)
                            record = next(t for t in stored if t.number == number)
                            best[0] = _best_by_quality(best[0], record)
                            finished = sum(t.state in ("complete", "pruned") for t in stored)
                            on_trial(
                                TrialProgress(record, finished, self.n_trials, totals["lm_calls"], best[0])
                            )
                        if totals["failures"] >= self.max_failures:
                            raise ConfigurationError(
                                f"{totals['failures']} trials in a row failed (last: {outcome.get('error')}); "
                                "loosen the constraints or fix the program"
                            )
            finally:
                # Stopped (or failed): the trials in flight finish and are recorded, so none is left running.
                for future in list(running):
                    trial, number, params, distributions = running.pop(future)
                    try:
                        state, outcome = future.result()
                    except Exception as exc:  # recorded as the trial's failure; the first error is raised
                        state, outcome = "failed", {"error": f"{type(exc).__name__}: {exc}"}
                    self._record(
                        repo, run_id, study, lock, trial, number, params, distributions, state, outcome
                    )

    def _record(
        self,
        repo: OptimizationRepository,
        run_id: str,
        study: optuna.Study,
        lock: threading.Lock,
        trial: Any,
        number: int,
        params: dict[str, Any],
        distributions: dict[str, Any],
        state: TrialState,
        outcome: dict[str, Any],
    ) -> None:
        """Tell Optuna and finish the trial's row (with the sampler/pruner attributes a resume replays)."""
        outcome = dict(outcome)
        values = outcome.pop("values", None)
        with lock:
            if state == "complete":
                study.tell(trial, values)
            else:
                study.tell(trial, state=OptunaState.PRUNED if state == "pruned" else OptunaState.FAIL)
            system_attrs = study.get_trials(deepcopy=False)[trial.number].system_attrs
        stored = {
            "values": params,
            "distributions": {k: distribution_to_json(d) for k, d in distributions.items()},
            "system_attrs": json.loads(json.dumps(system_attrs)),
        }
        repo.finish_trial(run_id, number, state=state, params=stored, **outcome)
