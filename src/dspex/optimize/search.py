"""The holistic optimizer: searches a program's variable space with Optuna, stored in the project database.

::

    optimizer = HolisticOptimizer(space, bindings, exact_match, n_trials=40, lms={"openai/small": lm})
    result = optimizer.optimize(program, devset, db=app.db, registry=app.programs, program_name="qa")
    result.best.configuration, result.best.scores, result.lm_calls, result.version_id

What a trial does: Optuna suggests every *active* leaf of the space (a conditional leaf only when its
parents' values activate it), :meth:`VariableSpace.from_flat` resolves the values (a configuration that
violates a constraint fails the trial), :func:`~dspex.variables.binding.apply` builds the configured
copy of the program and the :class:`~dspex.optimize.evaluate.Evaluator` scores it. One evaluation cache
serves every trial, keyed by the configuration id, so a configuration sampled twice, or the prefix of
the devset a trial already saw, costs no LM call.

Objectives: ``"quality"`` (the metric's mean, maximised) always; ``"cost"`` (USD per example, from the
token usage and ``prices``) and ``"latency"`` (seconds per example) are minimised. One objective uses
multivariate TPE (seeded, :func:`_tpe`); several use NSGA-II and the result is the Pareto front.

Pruning (single objective only; Optuna's pruners do not support several): the devset is shuffled once
(seeded) and evaluated on growing prefixes ``min_examples``, ``min_examples * growth``... then all of
it; after each prefix the score is reported and successive halving (:class:`SuccessiveHalving`, Optuna's
rule judged against every trial that reported the same prefix) stops the trials outside the top
``1/growth`` of their rung. Until a first trial completes, trials run as a start-up bracket
(:meth:`HolisticOptimizer._bracket_size`): ``growth ** 2`` of them are scored side by side on each prefix
before any is judged, so the first trial is not evaluated in full for want of anything to compare it
with. A stop or an error while bracket trials are open ends them ``failed`` (not counted).

Storage and resume: the run and every trial are rows of ``optimizations`` / ``optimization_trials``
(:mod:`dspex.store.optimizations`). Optuna's own ``RDBStorage`` cannot share the project database: it
stamps Alembic's ``alembic_version`` table with its own revision, the table dspex's migrations use.
So the study is in memory and the database is the record: a trial row is written ``running`` before
it is evaluated and finished afterwards, and a restarted run first marks the ``running`` rows of a
killed process ``failed``, then replays every finished trial into a fresh study (same numbers, same
params, values, intermediate values and sampler/pruner attributes) and continues. The run ends when
``n_trials`` trials are *finished* (``complete`` + ``pruned``); failed trials (constraint violations,
aborted evaluations, trials of a killed process) do not count, so the requested number is reached
exactly. One process runs an optimization at a time: the one that starts or resumes it owns it in the
store (``optimizations.owner``, with a lease of ``lease_s`` renewed every third of it, cleared when it
ends), as a shared run's owner does (:mod:`dspex.distributed.optimize`). A serial optimizer that finds
the run owned by a live driver is refused with a ConfigurationError that says to wait, or to add trials
with ``--join`` (``join=True``); one whose owner is gone (its process ended on this machine, or its
lease passed) takes the run over and resumes it.

Stopping early: ``on_trial`` may raise :class:`OptimizationStopped` after any trial (a job worker does,
when its job is cancelled or handed to another worker). With ``cancelled=True`` the run is recorded
``cancelled``; otherwise it stays ``running``, to be resumed by whoever optimizes it next. The trials
finished so far are kept either way, and no trial is left running.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState as OptunaState

from dspex.errors import ConfigurationError, did_you_mean
from dspex.jsonable import canonical_hash
from dspex.lm.pricing import Prices
from dspex.optimize._halving import OpenTrial, SearchPass, SuccessiveHalving
from dspex.optimize._run import Metrics, configuration_fingerprint
from dspex.optimize.cache import EvalCache, example_hash
from dspex.optimize.evaluate import Evaluator
from dspex.optimize.result import EvaluationAborted
from dspex.store import open_database
from dspex.store._engine import Database
from dspex.store.optimizations import OptimizationRecord, OptimizationRepository, TrialRecord, TrialState
from dspex.variables.binding import Bindings, apply
from dspex.variables.configuration import Configuration
from dspex.variables.kinds import ChoiceVariable, FloatVariable, IntVariable
from dspex.variables.space import Leaf, VariableSpace

__all__ = [
    "OBJECTIVES",
    "HolisticOptimizer",
    "Objective",
    "OptimizationResult",
    "OptimizationStopped",
    "Pruning",
    "TrialProgress",
]

Objective = Literal["quality", "cost", "latency"]
OBJECTIVES: Mapping[str, str] = {"quality": "maximize", "cost": "minimize", "latency": "minimize"}
_ABANDONED = "the process running this trial stopped before it finished"
_STOPPED = "the run stopped while this trial was open (evaluated side by side with others); not counted"


class OptimizationStopped(Exception):
    """Raised by an ``on_trial`` callback to stop a run after the trial it was told about.

    ``cancelled=True``: the run ends ``cancelled``. ``cancelled=False``: the run stays ``running`` so that
    another process (the job's next worker) resumes it. The exception propagates to the caller.
    """

    def __init__(self, message: str, *, cancelled: bool) -> None:
        super().__init__(message)
        self.cancelled = cancelled

    def __reduce__(self) -> tuple[Any, ...]:
        return (_stopped, (str(self), self.cancelled))


def _stopped(message: str, cancelled: bool) -> OptimizationStopped:
    return OptimizationStopped(message, cancelled=cancelled)


@dataclass(frozen=True, slots=True)
class Pruning:
    """Successive halving on growing minibatches: ``min_examples``, ``* growth``, ... then the devset."""

    min_examples: int = 10
    growth: int = 2

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise ConfigurationError(f"Pruning.min_examples must be >= 1, got {self.min_examples}")
        if self.growth < 2:
            raise ConfigurationError(f"Pruning.growth must be >= 2, got {self.growth}")

    def steps(self, total: int) -> list[int]:
        """The prefix sizes evaluated for a devset of ``total`` examples (the last is ``total``)."""
        sizes: list[int] = []
        size = self.min_examples
        while size < total:
            sizes.append(size)
            size *= self.growth
        return [*sizes, total]


@dataclass(frozen=True, slots=True)
class OptimizationResult:
    """What a run found. ``best``: the best complete trial by quality (for several objectives, the
    highest-quality point of the front); ``pareto``: the non-dominated complete trials (just ``best``
    for one objective); ``program``: the best configured program (after the final stage, if any)."""

    id: str
    objectives: tuple[str, ...]
    best: TrialRecord
    pareto: tuple[TrialRecord, ...]
    trials: tuple[TrialRecord, ...]
    lm_calls: int
    program: Any = field(repr=False)
    final_score: float | None = None
    final_lm_calls: int = 0
    version_id: str | None = None

    @property
    def best_configuration(self) -> Configuration:
        assert self.best.configuration is not None  # complete trials have one
        return Configuration(self.best.configuration)

    @property
    def finished(self) -> int:
        """Trials that count toward ``n_trials``: complete and pruned."""
        return sum(t.state in ("complete", "pruned") for t in self.trials)


@dataclass(frozen=True, slots=True)
class TrialProgress:
    """What ``on_trial`` receives after each trial of this process: the trial as stored, the run's
    finished (complete + pruned) trials against ``n_trials``, its LM calls so far, and the best complete
    trial so far by quality (None while there is none). Trials replayed on resume are counted, not sent."""

    trial: TrialRecord
    finished: int
    n_trials: int
    lm_calls: int
    best: TrialRecord | None


def _best_by_quality(best: TrialRecord | None, trial: TrialRecord) -> TrialRecord | None:
    if trial.state != "complete" or trial.scores is None:
        return best
    if best is None or best.scores is None or float(trial.scores["quality"]) > float(best.scores["quality"]):
        return trial
    return best


def _tpe(seed: int, *, constant_liar: bool = False) -> optuna.samplers.TPESampler:
    """Multivariate TPE over groups of parameters that appear together: it models how variables
    interact (a model with its temperature, a module type with its demo count) and handles the
    conditional parts of a space, where independent per-variable TPE samples each one alone.
    ``benchmarks/optimizers.py`` measures it against plain TPE. Optuna still marks ``multivariate``
    and ``group`` experimental (since 2.2); the ``optuna<5`` pin and this module's tests hold them.
    ``constant_liar``: for trials asked in parallel (:mod:`dspex.distributed.optimize`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=constant_liar
        )


def _distribution(leaf: Leaf) -> optuna.distributions.BaseDistribution:
    v = leaf.variable
    if isinstance(v, FloatVariable):
        return optuna.distributions.FloatDistribution(v.low, v.high, log=v.log, step=v.step)
    if isinstance(v, IntVariable):
        return optuna.distributions.IntDistribution(v.low, v.high, log=v.log, step=v.step)
    if isinstance(v, ChoiceVariable):
        return optuna.distributions.CategoricalDistribution(tuple(v.choices))
    raise ConfigurationError(f"variable {leaf.path!r} of kind {v.kind!r} cannot be searched")


def _program_identity(program: Any) -> str:
    """The program's class and saved state, without its LMs (their api_base may change between runs)."""
    state = {
        name: {k: v for k, v in part.items() if k != "lm"} if isinstance(part, dict) else part
        for name, part in program.dump_state().items()
    }
    return canonical_hash(
        {"class": f"{type(program).__module__}.{type(program).__qualname__}", "state": state}
    )


def _dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        x, y = (x, y) if d == "maximize" else (-x, -y)
        if x < y:
            return False
        better = better or x > y
    return better


class HolisticOptimizer:
    """Searches ``space`` (applied to a program through ``bindings``) for the best configuration.

    - ``metric``: what :class:`Evaluator` takes; its primary score is the ``quality`` objective.
    - ``objectives``: ``("quality",)`` (default) or with ``"cost"`` and/or ``"latency"``.
    - ``n_trials``: finished (complete + pruned) trials to reach; ``max_lm_calls``: no new trial (nor
      start-up bracket) starts once the run's trials made this many LM calls (the trials already open
      finish, so it may overshoot; for a hard cap, the DSPy optimizer jobs' ``max_lm_calls``).
    - ``sampler``: an Optuna sampler (default multivariate TPE, or NSGA-II for several objectives, seeded
      by ``seed``).
    - ``pruning``: a :class:`Pruning`, ``None`` for the default (on for one objective), ``False`` for off.
    - ``lms``: model name -> LM for ``model`` variables; ``lm``: the LM for everything else.
    - ``prices``: a :class:`~dspex.lm.pricing.Prices` for the ``cost`` objective.
    - ``final_stage``: a DSPy optimizer (``dspy.BootstrapFewShot(...)``, MIPROv2, GEPA...) compiled on the
      best configured program with the trainset.
    - ``max_failures``: consecutive failed trials (constraint violations, aborted evaluations) after which
      the run stops with an error, so an over-constrained space cannot loop forever.
    """

    lease_s: float = 30.0  # the owner's lease on its run (ParallelOptimizer takes it as an argument)
    poll_s: float = 0.5  # how often a would-be owner re-reads a run whose holder may have lapsed

    def __init__(
        self,
        space: VariableSpace,
        bindings: Bindings | Sequence[Any],
        metric: Metrics,
        *,
        objectives: Sequence[str] = ("quality",),
        n_trials: int = 30,
        max_lm_calls: int | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        seed: int = 0,
        pruning: Pruning | Literal[False] | None = None,
        lms: Mapping[str, Any] | None = None,
        lm: Any = None,
        prices: Prices | None = None,
        concurrency: int = 8,
        cache: bool | EvalCache = True,
        final_stage: Any = None,
        max_failures: int = 50,
        remote: Callable[[Configuration], Any] | None = None,
    ) -> None:
        if not isinstance(space, VariableSpace):
            raise ConfigurationError(f"space must be a VariableSpace, got {type(space).__name__}")
        self.space = space
        self.bindings = bindings if isinstance(bindings, Bindings) else Bindings(bindings)
        known = {*space.names, *(d.name for d in space.derived)}
        for name in self.bindings.variables:
            if name not in known:
                raise ConfigurationError("a binding names " + did_you_mean(name, known, what="variable"))
        objectives = tuple(objectives)
        for objective in objectives:
            if objective not in OBJECTIVES:
                raise ConfigurationError(did_you_mean(str(objective), OBJECTIVES, what="objective"))
        if "quality" not in objectives or len(set(objectives)) != len(objectives):
            raise ConfigurationError(
                f"objectives must include 'quality' once, with optional 'cost' and 'latency'; got {objectives}"
            )
        self.objectives: tuple[str, ...] = ("quality", *(o for o in objectives if o != "quality"))
        if n_trials < 1:
            raise ConfigurationError(f"n_trials must be >= 1, got {n_trials}")
        if max_lm_calls is not None and max_lm_calls < 1:
            raise ConfigurationError(f"max_lm_calls must be >= 1 or None, got {max_lm_calls}")
        if pruning and len(self.objectives) > 1:
            raise ConfigurationError(
                "pruning needs a single objective (Optuna's pruners do not support several); pass pruning=False"
            )
        if pruning is None:
            pruning = Pruning() if len(self.objectives) == 1 else False
        self.pruning: Pruning | None = pruning or None
        self.n_trials = n_trials
        self.max_lm_calls = max_lm_calls
        self.seed = seed
        self._sampler = sampler
        self.lms = lms
        self.lm = lm
        self.prices = prices if prices is not None else Prices()
        self.evaluator = Evaluator(metric, concurrency=concurrency, cache=cache)
        self.final_stage = final_stage
        if final_stage is not None and not callable(getattr(final_stage, "compile", None)):
            raise ConfigurationError(
                f"final_stage must be a DSPy optimizer with .compile(), got {final_stage!r}"
            )
        self.max_failures = max_failures
        # configuration -> a RemoteProgram (App.optimize(pool=...)): trials evaluate on a worker pool,
        # which applies the configuration to its own copy of the program version.
        self.remote = remote
        self._cost_per_example: dict[str, float] = {}
        self._owners: dict[str, tuple[Any, Any]] = {}  # run id -> this owner (a Driver) and its lease's beat

    # -- public ------------------------------------------------------------------------------------
    def optimize(
        self,
        program: Any,
        devset: Sequence[Any],
        *,
        trainset: Sequence[Any] | None = None,
        db: Database | str | None = None,
        optimization_id: str | None = None,
        registry: Any = None,
        program_name: str | None = None,
        on_trial: Callable[[TrialProgress], None] | None = None,
        should_stop: Callable[[], None] | None = None,
    ) -> OptimizationResult:
        """Run (or resume) the search. ``db`` keeps the run (a Database or URL; default a temporary
        SQLite file, so no resume); the same ``optimization_id`` (default: derived from the space,
        objectives, seed, program and devset) resumes it. With ``registry`` and ``program_name`` the best
        configured program is saved as a version in ``optimizing``. ``on_trial`` is called with a
        :class:`TrialProgress` after each trial this process runs (for progress displays);
        ``should_stop`` before each trial starts: it raises :class:`OptimizationStopped` to stop there
        (a job worker that was cancelled or lost its lease must not start another trial)."""
        devset = list(devset)
        if not devset:
            raise ConfigurationError("the devset is empty; the optimizer needs examples to score trials")
        if (registry is None) != (program_name is None):
            raise ConfigurationError("pass both registry= and program_name= to save a version, or neither")
        if self.final_stage is not None and not trainset:
            raise ConfigurationError("final_stage needs a non-empty trainset")
        # The cache key covers the LM; the stored identity covers the program only, so that a run resumed
        # with an equivalent LM elsewhere (another api_base, a restarted server) is the same run.
        base = configuration_fingerprint(program, self.lm)
        order = list(range(len(devset)))
        random.Random(self.seed).shuffle(order)
        shuffled = [devset[i] for i in order]
        settings = {
            "v": 1,
            "seed": self.seed,
            "program": _program_identity(program),
            "devset": canonical_hash(sorted(example_hash(e) for e in devset)),
            "pruning": None
            if self.pruning is None
            else {"min_examples": self.pruning.min_examples, "growth": self.pruning.growth},
            "bindings": self.bindings.to_json(),
        }
        run_id = (
            optimization_id
            or "opt-"
            + canonical_hash({"space": self.space.id, "objectives": self.objectives, "settings": settings})[
                :16
            ]
        )
        with tempfile.TemporaryDirectory(prefix="dspex-opt-") as tmp:
            database = (
                open_database(db if isinstance(db, str) else f"sqlite:///{tmp}/opt.db")
                if not isinstance(db, Database)
                else db
            )
            try:
                repo = OptimizationRepository(database)
                self._start(repo, run_id, program_name, settings)
                try:
                    self._search(repo, run_id, program, shuffled, base, on_trial, should_stop)
                    return self._finish(repo, run_id, program, devset, trainset, registry, program_name)
                except OptimizationStopped as exc:
                    if exc.cancelled:
                        self._ended(repo, run_id, "cancelled", f"cancelled: {exc}")
                    raise
                except Exception as exc:
                    self._ended(repo, run_id, "failed", f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    self._left(repo, run_id)
            finally:
                if not isinstance(db, Database):
                    database.dispose()

    # -- the run -----------------------------------------------------------------------------------
    def _left(self, repo: OptimizationRepository, run_id: str) -> None:
        """This call is done with the run, however it ended: its owner lets go of it here."""
        held = self._owners.pop(run_id, None)
        if held is not None:
            owner, beat = held
            beat.__exit__(None, None, None)
            repo.release_owner(run_id, owner.id)

    def _own_run(
        self, repo: OptimizationRepository, run_id: str, program_name: str | None, settings: Any
    ) -> None:
        """Create or resume the run as its owner (one owner per run, in the store), with a lease renewed
        on a heartbeat until :meth:`_left`; refused, before anything of the run changes, while a live
        driver owns it."""
        # The owner lease and the driver ids live with the shared runs (dspex.distributed.drivers, stdlib
        # only); imported here, lazily, so a serial run and a shared one claim the same way.
        from dspex.distributed.drivers import Heartbeat, this_driver

        owner = this_driver()
        self._own(repo, run_id, owner)
        try:
            self._create(repo, run_id, program_name, settings)
        except BaseException:  # another run under this id: it stays as it was, owner-free
            repo.release_owner(run_id, owner.id)
            raise
        self._own(repo, run_id, owner)  # the run exists now: two owners that both created it race here
        beat = Heartbeat(
            lambda: repo.renew_owner(run_id, owner.id, self.lease_s),
            self.lease_s / 3,
            name=f"dspex-owner-{run_id}",
        )
        self._owners[run_id] = (owner, beat.__enter__())

    def _own(self, repo: OptimizationRepository, run_id: str, owner: Any) -> None:
        """Take the run's ownership, or say who holds it and what to do. A holder on this machine is
        alive (a gone one is taken over at once): refused at once. One on another machine is given one
        lease to lapse: an owner job retried elsewhere after its worker died takes the run over then,
        while a live holder, renewing its lease, is still there and this owner is refused."""
        from dspex.distributed.drivers import Driver, gone

        deadline = time.monotonic() + self.lease_s + self.poll_s
        while True:
            holder = repo.claim_owner(
                run_id, driver=owner.id, lease_s=self.lease_s, gone=lambda other: gone(other, me=owner)
            )
            if holder is None or time.monotonic() >= deadline:
                break
            held_by = Driver.parse(holder)
            if held_by is not None and held_by.place == owner.place:  # its pid exists: it is alive
                break
            time.sleep(self.poll_s)
        if holder is not None:
            raise ConfigurationError(
                f"optimization {run_id!r} already has an owner, driver {holder}, which saves its version; "
                "wait for it to end (or for its lease of "
                f"{self.lease_s:g} s to pass) and start this one again, or add trials to it with join=True "
                "(`dspex optimize --join`, `dspex optimizations join`; a shared run only)"
            )

    def _ended(self, repo: OptimizationRepository, run_id: str, status: str, error: str) -> None:
        """Record a run that ended early (a driver that joined another's run leaves that to it)."""
        repo.update(run_id, status=status, error=error)

    def _start(
        self, repo: OptimizationRepository, run_id: str, program_name: str | None, settings: Any
    ) -> None:
        """Start or resume the run (as its owner; a ParallelOptimizer's joiner overrides this)."""
        self._own_run(repo, run_id, program_name, settings)

    def _create(
        self, repo: OptimizationRepository, run_id: str, program_name: str | None, settings: Any
    ) -> None:
        """Create the run's row, or check a resumed one was started with the same inputs and mark it
        running."""
        record = OptimizationRecord(
            id=run_id,
            program=program_name,
            space=self.space.describe(),
            objectives=list(self.objectives),
            budget=self._budget(),
            settings=settings,
        )
        stored, created = repo.create(record)
        if created:
            return
        if stored.space != json.loads(json.dumps(record.space)) or stored.objectives != record.objectives:
            raise ConfigurationError(
                f"optimization {run_id!r} exists with another space or objectives; pick another optimization_id"
            )
        if stored.settings != json.loads(json.dumps(settings)):
            raise ConfigurationError(
                f"optimization {run_id!r} exists with another program, devset, seed, pruning or bindings; "
                "resume it with the same ones or pick another optimization_id"
            )
        repo.update(run_id, status="running", error=None, budget=record.budget)

    def _budget(self) -> dict[str, Any]:
        """The run's budget as recorded (and compared by a driver that joins it)."""
        return {"n_trials": self.n_trials, "max_lm_calls": self.max_lm_calls}

    def _study(self, repo: OptimizationRepository, run_id: str) -> optuna.Study:
        directions = [OBJECTIVES[o] for o in self.objectives]
        repo.abandon_running(run_id, _ABANDONED)
        replayed = repo.trials(run_id)
        sampler = self._sampler
        if sampler is None:
            # A resumed run seeds its sampler past the trials it replays: the same seed would draw the
            # same random start-up configurations again and spend LM calls re-trying them.
            seed = self.seed + len(replayed)
            if len(directions) == 1:
                sampler = _tpe(seed)
            else:
                sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
        pruner: optuna.pruners.BasePruner = (
            SuccessiveHalving(self.pruning.growth) if self.pruning is not None else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(directions=directions, sampler=sampler, pruner=pruner, study_name=run_id)
        for t in replayed:
            stored = t.params
            distributions = {k: json_to_distribution(d) for k, d in stored.get("distributions", {}).items()}
            values = None
            if t.state == "complete":
                assert t.scores is not None
                values = [float(t.scores[o]) for o in self.objectives]
            study.add_trial(
                optuna.trial.create_trial(
                    state={"complete": OptunaState.COMPLETE, "pruned": OptunaState.PRUNED}.get(
                        t.state, OptunaState.FAIL
                    ),
                    values=values,
                    params=stored.get("values", {}),
                    distributions=distributions,
                    system_attrs=stored.get("system_attrs", {}),
                    intermediate_values=t.intermediate,
                )
            )
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
        previous = repo.trials(run_id)
        search = SearchPass(self._study(repo, run_id), repo, run_id, on_trial)
        search.lm_calls = sum(t.lm_calls for t in previous)
        for t in previous:
            search.best = _best_by_quality(search.best, t)
        while (count := repo.count(run_id)) < self.n_trials:
            if self.max_lm_calls is not None and search.lm_calls >= self.max_lm_calls:
                break
            if should_stop is not None:
                should_stop()  # raises OptimizationStopped before a trial is started
            size = self._bracket_size(search.study, len(devset), self.n_trials - count)
            opened: list[OpenTrial] = []
            try:
                for _ in range(size):
                    opened.append(self._open(search, program, base))
                if size == 1:
                    self._close(search, opened[0], *self._evaluate(opened[0], devset))
                else:
                    self._bracket(search, opened, devset)
            except BaseException:
                # Stopped (on_trial raised OptimizationStopped after a bracket trial ended) or failed:
                # the trials still open end as failed, with what they spent, so none is left running.
                self._abandon(search, [run for run in opened if not run.closed])
                raise

    def _bracket_size(self, study: optuna.Study, total: int, remaining: int) -> int:
        """How many trials to open together: a start-up bracket while no trial has completed (with
        pruning on), otherwise one.

        Successive halving (Optuna's, asynchronous) promotes a trial that has nothing to compare with:
        the run's first trial is evaluated on the whole devset, whatever it scores on its first
        minibatch, and so are the later ones that happen to beat the few scores already seen. Until the
        first trial completes, trials are therefore run as one synchronous bracket, the way Hyperband
        runs its brackets: all of them on the first minibatch, then the top ``1/growth`` of them on the
        next, and so on; one survivor reaches the whole devset. Its size is ``growth ** 2`` (4 with the
        default growth), fewer when the minibatch ladder has fewer rungs (``growth ** (rungs - 1)``
        trials halve down to one) or when fewer trials remain. The default sampler draws these trials at
        random (they are within multivariate TPE's random start-up), as it would one by one."""
        if self.pruning is None or any(
            t.state == OptunaState.COMPLETE for t in study.get_trials(deepcopy=False)
        ):
            return 1
        rungs = len(self.pruning.steps(total)) - 1
        return max(1, min(int(self.pruning.growth ** min(2, rungs)), remaining))

    def _open(self, search: SearchPass, program: Any, base: str) -> OpenTrial:
        """Ask Optuna for a trial, write its ``running`` row and build its configured program."""
        trial = search.study.ask()
        params, distributions = self._suggest(trial)
        run_id = search.run_id
        number = search.repo.start_trial(
            run_id,
            {
                "values": params,
                "distributions": {k: distribution_to_json(d) for k, d in distributions.items()},
            },
        )
        if number != trial.number:
            raise ConfigurationError(
                f"optimization {run_id!r} got trial number {number} but expected {trial.number}: "
                "another process is running it; run one process per optimization"
            )
        return self._prepare(trial, params, program, base, number=number, distributions=distributions)

    def _bracket(self, search: SearchPass, opened: list[OpenTrial], devset: list[Any]) -> None:
        """Successive halving over ``opened``, rung by rung: every open trial is scored on the rung's
        minibatch before any of them is judged, so each is compared with all the others."""
        live: list[OpenTrial] = []
        for run in opened:
            if run.error is not None:
                self._close(search, run, "failed", run.failure())
            else:
                live.append(run)
        while live:
            waiting: list[OpenTrial] = []
            for run in live:
                ended = self._step(run, devset)
                if ended is None:
                    waiting.append(run)
                else:
                    self._close(search, run, *ended)
            live = []
            for run in waiting:
                if run.trial.should_prune():
                    self._close(search, run, "pruned", run.ended())
                else:
                    live.append(run)

    def _abandon(self, search: SearchPass, runs: list[OpenTrial]) -> None:
        """End trials cut off by a stop or an error as ``failed`` (they do not count toward
        ``n_trials``), keeping their minibatch scores and LM calls."""
        for run in runs:
            run.closed = True
            search.study.tell(run.trial, state=OptunaState.FAIL)
            outcome = {k: v for k, v in run.ended().items() if k not in ("values", "scores")}
            outcome["error"] = _STOPPED
            search.repo.finish_trial(
                search.run_id,
                run.number,
                state="failed",
                params={
                    "values": run.params,
                    "distributions": {k: distribution_to_json(d) for k, d in run.distributions.items()},
                },
                **outcome,
            )

    def _close(self, search: SearchPass, run: OpenTrial, state: TrialState, outcome: dict[str, Any]) -> None:
        """Tell Optuna how the trial ended, finish its row, report progress."""
        study, repo, run_id, on_trial = search.study, search.repo, search.run_id, search.on_trial
        trial, number, params = run.trial, run.number, run.params
        run.closed = True
        search.lm_calls += outcome.get("lm_calls", 0)
        search.failures = search.failures + 1 if state == "failed" else 0
        values = outcome.pop("values", None)
        if state == "complete":
            study.tell(trial, values)
        else:
            study.tell(trial, state=OptunaState.PRUNED if state == "pruned" else OptunaState.FAIL)
        # The pruner and NSGA-II keep state in system attrs; stored so that a resumed study has it.
        system_attrs = study.get_trials(deepcopy=False)[trial.number].system_attrs
        stored_params = {
            "values": params,
            "distributions": {k: distribution_to_json(d) for k, d in run.distributions.items()},
            "system_attrs": json.loads(json.dumps(system_attrs)),
        }
        repo.finish_trial(run_id, number, state=state, params=stored_params, **outcome)
        if on_trial is not None:
            stored = repo.trials(run_id)
            record = next(t for t in stored if t.number == number)
            search.best = _best_by_quality(search.best, record)
            finished = sum(t.state in ("complete", "pruned") for t in stored)
            on_trial(TrialProgress(record, finished, self.n_trials, search.lm_calls, search.best))
        if search.failures >= self.max_failures:
            raise ConfigurationError(
                f"{search.failures} trials in a row failed (last: {outcome.get('error')}); "
                "loosen the constraints or fix the program"
            )

    def _suggest(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, Any]]:
        params: dict[str, Any] = {}
        distributions: dict[str, Any] = {}
        for leaf in self.space.leaves():
            if not leaf.is_active(params):
                continue  # inactive: never suggested, so the sampler sees the conditional space
            distribution = _distribution(leaf)
            if isinstance(distribution, optuna.distributions.FloatDistribution):
                value: Any = trial.suggest_float(
                    leaf.path,
                    distribution.low,
                    distribution.high,
                    log=distribution.log,
                    step=distribution.step,
                )
            elif isinstance(distribution, optuna.distributions.IntDistribution):
                value = trial.suggest_int(
                    leaf.path,
                    distribution.low,
                    distribution.high,
                    log=distribution.log,
                    step=distribution.step,
                )
            else:
                assert isinstance(distribution, optuna.distributions.CategoricalDistribution)
                value = trial.suggest_categorical(leaf.path, distribution.choices)
            params[leaf.path] = value
            distributions[leaf.path] = distribution
        return params, distributions

    def _prepare(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        program: Any,
        base: str,
        *,
        number: int | None = None,
        distributions: dict[str, Any] | None = None,
    ) -> OpenTrial:
        """The trial's configured program, or its error when the params violate a constraint."""
        run = OpenTrial(
            trial=trial,
            number=trial.number if number is None else number,
            params=params,
            distributions=distributions or {},
        )
        started = time.perf_counter()
        try:
            config = self.space.from_flat(params)
        except ConfigurationError as exc:
            run.error = exc.message
            run.seconds = time.perf_counter() - started
            return run
        run.config = config
        run.configured = (
            self.remote(config)
            if self.remote is not None
            else apply(program, config, self.bindings, lms=self.lms)
        )
        run.key = f"{base}:{config.id}"
        run.outcome = {"configuration": config.to_json(), "configuration_id": config.id}
        run.seconds = time.perf_counter() - started
        return run

    def _step(self, run: OpenTrial, devset: list[Any]) -> tuple[TrialState, dict[str, Any]] | None:
        """Evaluate the trial's next minibatch. None: it has more to go (its score was reported to
        Optuna for the pruner); otherwise how it ended, ``complete`` or ``failed`` (an aborted
        evaluation)."""
        steps = self.pruning.steps(len(devset)) if self.pruning is not None else [len(devset)]
        size = steps[len(run.intermediate)]
        assert run.config is not None
        resumed = time.perf_counter()
        try:
            result = self.evaluator.run(
                run.configured,
                devset[:size],
                configuration_id=run.key,
                lm=self.lm if self.remote is None else None,
            )
        except EvaluationAborted as exc:
            run.seconds += time.perf_counter() - resumed
            run.outcome.update(error=str(exc), lm_calls=run.lm_calls)
            return "failed", run.ended()
        run.seconds += time.perf_counter() - resumed
        run.lm_calls += result.lm_calls
        run.fresh += result.n - result.cached
        run.spent += self._cost(result.usage)
        run.intermediate[size] = result.score
        run.outcome.update(
            intermediate=run.intermediate, lm_calls=run.lm_calls, cost_usd=run.spent if run.spent else None
        )
        if size < len(devset):
            run.trial.report(result.score, size)
            return None
        scores = {"quality": result.score}
        if "cost" in self.objectives:
            if run.fresh:
                self._cost_per_example[run.config.id] = run.spent / run.fresh
            scores["cost"] = self._cost_per_example.get(run.config.id, 0.0)
        if "latency" in self.objectives:
            scores["latency"] = (
                sum(r.duration_ms for r in result.records) / 1000 / max(1, len(result.records))
            )
        run.outcome.update(scores=scores, values=[scores[o] for o in self.objectives])
        return "complete", run.ended()

    def _evaluate(self, run: OpenTrial, devset: list[Any]) -> tuple[TrialState, dict[str, Any]]:
        """Run one trial to its end: minibatch after minibatch until the pruner stops it or it completes."""
        if run.error is not None:
            return "failed", run.failure()
        while (ended := self._step(run, devset)) is None:
            if run.trial.should_prune():
                return "pruned", run.ended()
        return ended

    def _run_trial(
        self, trial: optuna.Trial, params: dict[str, Any], program: Any, devset: list[Any], base: str
    ) -> tuple[TrialState, dict[str, Any]]:
        """One trial from its params to how it ended (the parallel optimizer runs these on threads)."""
        return self._evaluate(self._prepare(trial, params, program, base), devset)

    def _cost(self, usage: Mapping[str, Mapping[str, int]]) -> float:
        total = 0.0
        for model, counts in usage.items():
            cost = self.prices.cost(model, counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0))
            if cost is None:
                if "cost" in self.objectives:
                    raise ConfigurationError(
                        f"the cost objective needs the price of {model!r}: pass prices=Prices({{...}})"
                    )
                continue
            total += cost
        return total

    # -- the result --------------------------------------------------------------------------------
    def _front(
        self, repo: OptimizationRepository, run_id: str
    ) -> tuple[list[TrialRecord], TrialRecord, list[TrialRecord]]:
        """The run's trials, its best complete trial (by quality, the earlier on a tie) and its Pareto
        front (the best alone with one objective); ``ConfigurationError`` when no trial completed."""
        trials = repo.trials(run_id)
        complete = [t for t in trials if t.state == "complete" and t.scores is not None]
        if not complete:
            raise ConfigurationError(
                f"optimization {run_id!r} has no complete trial (budget too small, or every trial pruned "
                "or failed); raise n_trials or max_lm_calls"
            )
        directions = [OBJECTIVES[o] for o in self.objectives]

        def vector(t: TrialRecord) -> list[float]:
            assert t.scores is not None
            return [float(t.scores[o]) for o in self.objectives]

        pareto = [
            t for t in complete if not any(_dominates(vector(o), vector(t), directions) for o in complete)
        ]
        best = max(pareto, key=lambda t: (vector(t)[0], -t.number))
        return trials, best, pareto if len(self.objectives) > 1 else [best]

    def _finish(
        self,
        repo: OptimizationRepository,
        run_id: str,
        program: Any,
        devset: list[Any],
        trainset: Sequence[Any] | None,
        registry: Any,
        program_name: str | None,
    ) -> OptimizationResult:
        trials, best, pareto = self._front(repo, run_id)
        configured = apply(program, Configuration(best.configuration or {}), self.bindings, lms=self.lms)
        final_score, final_calls = None, 0
        if self.final_stage is not None:
            assert trainset is not None
            with dspy.context(**({"lm": self.lm} if self.lm is not None else {})):
                configured = self.final_stage.compile(configured, trainset=list(trainset))
            final = self.evaluator.run(configured, devset, lm=self.lm)
            final_score, final_calls = final.score, final.lm_calls
        version_id = None
        if registry is not None and program_name is not None:
            version = registry.save_version(
                program_name,
                configured,
                status="optimizing",
                variables=best.configuration,
                bindings=self.bindings,
                note=f"optimization {run_id}"
                + (f", final stage {type(self.final_stage).__name__}" if self.final_stage else ""),
            )
            version_id = version.id
        repo.update(
            run_id,
            status="succeeded",
            best=best.to_json(),
            pareto=[t.to_json() for t in pareto],
            result_version_id=version_id,
            error=None,
        )
        return OptimizationResult(
            id=run_id,
            objectives=self.objectives,
            best=best,
            pareto=tuple(pareto),
            trials=tuple(trials),
            lm_calls=sum(t.lm_calls for t in trials),
            program=configured,
            final_score=final_score,
            final_lm_calls=final_calls,
            version_id=version_id,
        )
