"""Parallel trials for the holistic optimizer: ``parallel`` trials in flight at once in each driver, and
any number of driver processes sharing one optimization.

::

    optimizer = ParallelOptimizer(space, bindings, exact_match, n_trials=40, parallel=4,
                                  remote=lambda config: app.router.evaluation("qa", pool="cluster", ...).program)
    result = optimizer.optimize(program, devset, db=app.db, registry=app.programs, program_name="qa")

    # on another machine sharing the database: one more driver of the same run
    ParallelOptimizer(space, bindings, exact_match, n_trials=40, parallel=4, join=True).optimize(
        program, devset, db=url, optimization_id=result_id)

Everything else is :class:`~dspex.optimize.search.HolisticOptimizer`'s: the run and its trials are rows
of the project database, and the run ends with exactly ``n_trials`` finished trials.

How drivers share a run (Optuna's own ``RDBStorage`` cannot live in the project database: it stamps
Alembic's ``alembic_version`` table). The trial rows are the shared study. Each driver keeps a replica
of it in memory and takes each trial with
:meth:`~dspex.store.optimizations.OptimizationRepository.claim_trial`: one write transaction under the
run's lock (SQLite's write lock; ``SELECT ... FOR UPDATE`` of the run's row on PostgreSQL) in which it
marks failed the running trials of drivers that are gone, copies into its replica the rows that are new
or finished since it last looked (other drivers' running trials as ``RUNNING``), checks that the budget
has room (finished + running < ``n_trials``; the LM-call budget), asks Optuna, and inserts the next
number, which is always the replica's own. Asked while others run, multivariate TPE's ``constant_liar``
counts them as bad results, so parallel asks spread instead of repeating one point. When a trial ends the
driver tells its replica and writes the row; the others read it at their next claim.

Crashes. A driver renews the lease of its running trials (``lease_s``, on a heartbeat thread); its
trials are marked failed, and so redone under new numbers, when the lease passes or, on the same machine,
as soon as its process is gone (:mod:`dspex.distributed.drivers`). A driver started again therefore
resumes at once, as a single driver always did. Failed trials do not count, so exactly ``n_trials`` finish.

Owner and joiners. The driver started without ``join`` owns the run: it creates or resumes it, and when
the budget is spent it saves the best version and records the result. A driver with ``join=True`` adds
trials to an existing running run and returns the result without saving anything; it never changes the
run's status (a joiner that fails or is stopped leaves the run to its owner), and it stops when the owner
ends the run ``failed`` or ``cancelled``. Ownership is exclusive in the store (``optimizations.owner``,
with a lease the owner renews every third of ``lease_s`` and clears when it ends): a second owner of a run
whose owner is alive is refused with a ConfigurationError that says to join instead; one whose owner is
gone (its process ended on this machine, or its lease passed: a new owner waits up to one ``lease_s`` for
that when the holder ran on another machine) takes the run over and resumes it.

Pruning: the serial optimizer's successive halving, which judges a trial against every trial that
reported the same minibatch, trials still in flight included. Its start-up bracket (trials scored side
by side before any is judged) is not used here: trials in flight are judged as they report.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState as OptunaState

from dspex.distributed._parallel import MAX_PARALLEL, check_parallel
from dspex.distributed.drivers import Driver, Heartbeat, gone, this_driver
from dspex.errors import ConfigurationError
from dspex.optimize.search import (
    OBJECTIVES,
    HolisticOptimizer,
    OptimizationResult,
    OptimizationStopped,
    TrialProgress,
    _best_by_quality,
    _tpe,
)
from dspex.store.optimizations import OptimizationRepository, TrialBoard, TrialRecord, TrialState
from dspex.variables.binding import apply
from dspex.variables.configuration import Configuration

__all__ = ["MAX_PARALLEL", "ParallelOptimizer", "check_parallel"]

logger = logging.getLogger("dspex.distributed")
_GONE = "the process running this trial stopped before it finished (it ended, or its lease passed)"
_STATES = {"complete": OptunaState.COMPLETE, "pruned": OptunaState.PRUNED}


@dataclass(slots=True)
class _Replica:
    """This driver's copy of the run's study: Optuna in memory, rows ``0..known-1`` copied in; ``watch``
    holds other drivers' trials copied while running, to be brought up to date when they end."""

    study: optuna.Study
    storage: optuna.storages.InMemoryStorage
    objectives: tuple[str, ...]
    known: int = 0
    watch: set[int] = field(default_factory=set)

    def sync(self, rows: tuple[TrialRecord, ...], mine: set[int]) -> None:
        for row in rows:
            if row.number < self.known:
                if row.number in self.watch and row.state != "running":
                    self._ended(row)
                    self.watch.discard(row.number)
                continue
            if row.number != self.known:
                raise ConfigurationError(
                    f"trial {row.number} of optimization {row.optimization_id!r} follows trial "
                    f"{self.known - 1}: trial numbers are not contiguous; was a trial row deleted?"
                )
            self.study.add_trial(self._frozen(row))
            if row.state == "running" and row.number not in mine:
                self.watch.add(row.number)
            self.known += 1

    def _frozen(self, row: TrialRecord) -> optuna.trial.FrozenTrial:
        stored = row.params
        values = None
        if row.state == "complete":
            assert row.scores is not None
            values = [float(row.scores[o]) for o in self.objectives]
        return optuna.trial.create_trial(
            state=OptunaState.RUNNING if row.state == "running" else _STATES.get(row.state, OptunaState.FAIL),
            values=values,
            params=stored.get("values", {}),
            distributions={k: json_to_distribution(d) for k, d in stored.get("distributions", {}).items()},
            system_attrs=stored.get("system_attrs", {}),
            intermediate_values=row.intermediate,
        )

    def _ended(self, row: TrialRecord) -> None:
        """Another driver's trial, copied while it ran, ended: its result goes into the replica."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, row.number)
        for step, value in row.intermediate.items():
            self.storage.set_trial_intermediate_value(trial_id, step, value)
        for key, value in row.params.get("system_attrs", {}).items():
            self.storage.set_trial_system_attr(trial_id, key, value)
        values = None
        if row.state == "complete":
            assert row.scores is not None
            values = [float(row.scores[o]) for o in self.objectives]
        self.storage.set_trial_state_values(trial_id, _STATES.get(row.state, OptunaState.FAIL), values)


class ParallelOptimizer(HolisticOptimizer):
    """:class:`HolisticOptimizer` with ``parallel`` trials at once, sharing the run with any other driver
    of it (see the module docstring). ``join``: add trials to another driver's run instead of owning it;
    ``lease_s``: how long a silent driver's trials stay running before another driver redoes them;
    ``poll_s``: how often a driver with no room re-reads the run while other drivers' trials hold it."""

    def __init__(
        self,
        *args: Any,
        parallel: int = 2,
        join: bool = False,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        **kwargs: Any,
    ) -> None:
        check_parallel(parallel)
        for name, value in (("lease_s", lease_s), ("poll_s", poll_s)):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
        super().__init__(*args, **kwargs)
        self.parallel = parallel
        self.join = join
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)

    # -- the run ---------------------------------------------------------------------------------------
    def _start(
        self, repo: OptimizationRepository, run_id: str, program_name: str | None, settings: Any
    ) -> None:
        if not self.join:  # the owner: as a serial optimizer owns its run (HolisticOptimizer._own_run)
            super()._start(repo, run_id, program_name, settings)
            return
        try:
            stored = repo.get(run_id)
        except ConfigurationError:
            raise ConfigurationError(
                f"no optimization {run_id!r} to join; start it first (its owner creates it), then join it"
            ) from None
        budget = self._budget()
        if stored.budget.get("shared") is not True:
            raise ConfigurationError(
                f"optimization {run_id!r} is driven by one process: it was started (or last resumed) "
                "without shared=True or parallel > 1 (`dspex optimize --shared`, `--parallel N`, jobs with "
                "drivers=N or parallel=N), so it cannot be joined"
            )
        mismatch = [
            name
            for name, mine, theirs in (
                ("space", json.loads(json.dumps(self.space.describe())), stored.space),
                ("objectives", list(self.objectives), stored.objectives),
                (
                    "program, devset, seed, pruning or bindings",
                    json.loads(json.dumps(settings)),
                    stored.settings,
                ),
                ("budget", budget, stored.budget),
            )
            if mine != theirs
        ]
        if mismatch:
            raise ConfigurationError(
                f"optimization {run_id!r} was started with another {mismatch[0]}; join it with the same inputs"
            )
        if stored.status != "running":
            raise ConfigurationError(f"optimization {run_id!r} is {stored.status}; there is nothing to join")

    def _budget(self) -> dict[str, Any]:
        # Marks the run as shared: a joiner refuses a run whose owner drives it alone (the serial
        # optimizer rewrites the budget without it when it resumes the run).
        return {**super()._budget(), "shared": True}

    def _ended(self, repo: OptimizationRepository, run_id: str, status: str, error: str) -> None:
        if not self.join:  # a joiner's failure or stop is its own; the run stays its owner's
            super()._ended(repo, run_id, status, error)

    def _replica(self, run_id: str, driver: Driver, replayed: int) -> _Replica:
        sampler = self._sampler
        directions = [OBJECTIVES[o] for o in self.objectives]
        if sampler is None:
            # Seeded as the serial optimizer seeds it (past the trials already in the run); a joiner
            # also by its own id, so that drivers starting together do not draw the same start-up points.
            seed = self.seed + replayed + (zlib.crc32(driver.nonce.encode()) if self.join else 0)
            if len(directions) == 1:
                sampler = _tpe(seed, constant_liar=True)
            else:
                sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
        pruner: optuna.pruners.BasePruner = (
            optuna.pruners.SuccessiveHalvingPruner(
                min_resource=self.pruning.min_examples, reduction_factor=self.pruning.growth
            )
            if self.pruning is not None
            else optuna.pruners.NopPruner()
        )
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(
            storage=storage, directions=directions, sampler=sampler, pruner=pruner, study_name=run_id
        )
        return _Replica(study, storage, self.objectives)

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
        driver = this_driver()
        lock = threading.Lock()  # the replica: asks and tells here, reports from the trial threads
        replica: list[_Replica] = []
        running: dict[
            Future[tuple[TrialState, dict[str, Any]]], tuple[Any, int, dict[str, Any], dict[str, Any]]
        ] = {}
        asked: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
        failures = [0]
        best: list[TrialRecord | None] = [None]

        def room(board: TrialBoard) -> bool:
            if self.max_lm_calls is not None and board.lm_calls >= self.max_lm_calls:
                return False
            return board.finished + board.running < self.n_trials

        def decide(board: TrialBoard) -> Mapping[str, Any] | None:
            with lock:
                if not replica:
                    replica.append(self._replica(run_id, driver, len(board.rows)))
                    for row in board.rows:
                        best[0] = _best_by_quality(best[0], row)
                mine = {number for _, number, _, _ in running.values()}
                replica[0].sync(board.rows, mine)
                if board.status != "running" or not room(board):
                    return None
                trial = replica[0].study.ask()
                replica[0].known += 1  # this trial's row is the one claim_trial inserts now
                params, distributions = self._suggest(trial)
            asked.append((trial, params, distributions))
            return {
                "values": params,
                "distributions": {k: distribution_to_json(d) for k, d in distributions.items()},
            }

        def claim() -> tuple[int | None, TrialBoard]:
            asked.clear()
            return repo.claim_trial(
                run_id,
                driver=driver.id,
                lease_s=self.lease_s,
                since=replica[0].known if replica else 0,
                watch=set(replica[0].watch) if replica else set(),
                gone=lambda other: gone(other, me=driver),
                decide=decide,
                reason=_GONE,
            )

        beat = Heartbeat(
            lambda: repo.renew_trials(run_id, driver.id, self.lease_s),
            self.lease_s / 3,
            name=f"dspex-lease-{run_id}",
        )
        with beat, ThreadPoolExecutor(self.parallel, thread_name_prefix="dspex-trial") as executor:
            try:
                while True:
                    board: TrialBoard | None = None
                    while len(running) < self.parallel:
                        if should_stop is not None:
                            should_stop()  # raises OptimizationStopped before a trial is started
                        number, board = claim()
                        if self.join and board.status in ("failed", "cancelled"):
                            raise OptimizationStopped(
                                f"optimization {run_id!r} ended {board.status}; this joined driver stops",
                                cancelled=False,
                            )
                        if number is None:
                            break
                        trial, params, distributions = asked[0]
                        if number != trial.number:
                            raise ConfigurationError(
                                f"optimization {run_id!r} got trial number {number} but its study expected "
                                f"{trial.number}: a driver outside this protocol (a serial HolisticOptimizer?) "
                                "is numbering its trials; run every driver of a shared run as ParallelOptimizer"
                            )
                        future = executor.submit(self._run_trial, trial, params, program, devset, base)
                        running[future] = (trial, number, params, distributions)
                    if not running:
                        if board is not None and board.running == 0:
                            return  # the budget is spent and no driver has a trial in flight
                        # Other drivers' trials hold the rest of the budget: one may fail and free room.
                        threading.Event().wait(self.poll_s)
                        continue
                    # Below `parallel` for lack of room: wake up now and then to look for it again.
                    timeout = None if len(running) >= self.parallel else self.poll_s
                    done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                    for future in done:
                        trial, number, params, distributions = running.pop(future)
                        state, outcome = (
                            future.result()
                        )  # a bug in a trial (not a failed trial) stops the run
                        recorded = self._record(
                            repo,
                            run_id,
                            replica[0],
                            lock,
                            trial,
                            number,
                            params,
                            distributions,
                            state,
                            outcome,
                        )
                        failures[0] = failures[0] + 1 if state == "failed" else 0
                        if recorded and on_trial is not None:
                            stored = repo.trials(run_id)
                            record = next(t for t in stored if t.number == number)
                            best[0] = _best_by_quality(best[0], record)
                            finished = sum(t.state in ("complete", "pruned") for t in stored)
                            lm_calls = sum(t.lm_calls for t in stored)
                            on_trial(TrialProgress(record, finished, self.n_trials, lm_calls, best[0]))
                        if failures[0] >= self.max_failures:
                            raise ConfigurationError(
                                f"{failures[0]} trials in a row failed (last: {outcome.get('error')}); "
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
                        repo, run_id, replica[0], lock, trial, number, params, distributions, state, outcome
                    )

    def _record(
        self,
        repo: OptimizationRepository,
        run_id: str,
        replica: _Replica,
        lock: threading.Lock,
        trial: Any,
        number: int,
        params: dict[str, Any],
        distributions: dict[str, Any],
        state: TrialState,
        outcome: dict[str, Any],
    ) -> bool:
        """Tell the replica and finish the trial's row (with the sampler/pruner attributes other drivers
        and a resume copy); False when another driver had already marked it failed (this driver's lease
        passed while it ran): the row keeps that, and the trial is redone under a new number."""
        outcome = dict(outcome)
        values = outcome.pop("values", None)
        with lock:
            if state == "complete":
                replica.study.tell(trial, values)
            else:
                replica.study.tell(trial, state=OptunaState.PRUNED if state == "pruned" else OptunaState.FAIL)
            system_attrs = replica.study.get_trials(deepcopy=False)[trial.number].system_attrs
        stored = {
            "values": params,
            "distributions": {k: distribution_to_json(d) for k, d in distributions.items()},
            "system_attrs": json.loads(json.dumps(system_attrs)),
        }
        if not repo.finish_trial(run_id, number, state=state, params=stored, if_running=True, **outcome):
            logger.warning(
                "optimization %s: trial %d was marked failed by another driver (this driver's lease of "
                "%.0f s passed while it ran); its %s result is dropped and the trial redone",
                run_id,
                number,
                self.lease_s,
                state,
            )
            return False
        return True

    # -- the result ------------------------------------------------------------------------------------
    def _finish(
        self,
        repo: OptimizationRepository,
        run_id: str,
        program: Any,
        devset: list[Any],
        trainset: Any,
        registry: Any,
        program_name: str | None,
    ) -> OptimizationResult:
        if not self.join:
            return super()._finish(repo, run_id, program, devset, trainset, registry, program_name)
        # A joiner reports what the run found and saves nothing: the owner saves the version.
        trials, best, pareto = self._front(repo, run_id)
        return OptimizationResult(
            id=run_id,
            objectives=self.objectives,
            best=best,
            pareto=tuple(pareto),
            trials=tuple(trials),
            lm_calls=sum(t.lm_calls for t in trials),
            program=apply(program, Configuration(best.configuration or {}), self.bindings, lms=self.lms),
            version_id=repo.get(run_id).result_version_id,
        )
