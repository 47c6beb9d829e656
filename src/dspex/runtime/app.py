"""``App``: run DSPy programs and record every run.

::

    with App() as app:                                  # settings from dspex.toml / DSPEX_* / defaults
        result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "2 + 2?"})
        result.outputs["answer"], result.execution_id
        app.executions.get(result.execution_id).trace   # the span tree
        app.programs.register("qa", "myapp.qa:build")   # the program registry (dspex.programs)
        app.run("qa", {"question": "2 + 2?"})           # production version (else newest draft)

Each run executes under ``dspy.context(lm=..., callbacks=[..., recorder], usage_tracker=recorder)``
(never ``dspy.configure``), and ends with a terminal execution record: ``succeeded``; ``failed`` on bad
input (``ValidationError``), LM failure (``LMError``) or any exception in the program
(``ExecutionError``, cause chained); ``cancelled`` on cancellation or interrupt. Records are written
behind the call by an :class:`~dspex.store.writer.ExecutionWriter`; ``close()`` flushes them. Opening
the store migrates it, replays records a failing database left in the spill file, and marks runs left
``running`` by dead recorders ``abandoned``.

Durability (``durability=`` per run, else the program's setting, else ``settings.durability``):
``async`` writes the terminal record behind the call (the caller never waits on the database; a process
killed right after the answer leaves the run ``abandoned``); ``sync`` commits it before the result is
returned or the error raised (one commit of latency; a kill -9 after the answer never contradicts it).
A run whose JSON-encoded inputs exceed ``settings.max_input_bytes`` fails with ``ValidationError``;
its record keeps the size instead of the inputs.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dspex.errors import ConfigurationError, DatabaseUnavailable
from dspex.lm.pricing import Prices
from dspex.runtime.cache import CacheSlot, ProgramCache
from dspex.runtime.pooled import PooledRun, PooledShard, check_crossing
from dspex.runtime.run import (
    SYNC_TIMEOUT_S,
    Durability,
    RunResult,
    _Run,
    check_durability,
)
from dspex.settings import Settings
from dspex.store import Database, open_database
from dspex.store.executions import ExecutionRepository, utcnow
from dspex.store.writer import ExecutionWriter

if TYPE_CHECKING:
    from dspex.adapt.manager import Adaptations
    from dspex.lm.models import ModelRegistry
    from dspex.lm.resilient import Resilience
    from dspex.modules import ToolRegistry
    from dspex.modules.policy import SpecPolicy, Trust
    from dspex.optimize.dspy_run import DSPyOptimizationResult, DSPyProgress
    from dspex.optimize.search import OptimizationResult, Pruning, TrialProgress
    from dspex.pools import Pools
    from dspex.pools.remote import PooledProgram
    from dspex.programs import ProgramRegistry
    from dspex.programs.datasets import Datasets
    from dspex.runtime.feedback import Feedback
    from dspex.runtime.router import Router
    from dspex.runtime.sessions import Sessions
    from dspex.store.cache import ProgramCacheRepository
    from dspex.store.evalcache import EvaluationCacheRepository
    from dspex.store.jobs import JobRepository
    from dspex.store.keys import ApiKeyRepository
    from dspex.store.optimizations import OptimizationRepository
    from dspex.telemetry.instrument import TraceLevel
    from dspex.telemetry.monitor import Signals
    from dspex.telemetry.otel import Telemetry
    from dspex.telemetry.signals import Thresholds
    from dspex.variables import Bindings, VariableSpace

__all__ = ["App", "Durability", "RunResult"]


logger = logging.getLogger("dspex.runtime")
# A routed program run with an lm= object stays here (an LM object cannot cross to a pool): its placement says so.
LM_GIVEN_REASON = "lm= given: an LM object runs inline ([routing] skipped)"


@dataclass(frozen=True, slots=True)
class _Stores:
    """What an App opens on its database, together."""

    db: Database
    executions: ExecutionRepository
    writer: ExecutionWriter
    programs: ProgramRegistry
    datasets: Datasets
    optimizations: OptimizationRepository
    jobs: JobRepository
    keys: ApiKeyRepository
    cache: ProgramCacheRepository
    sessions: Sessions


class App:
    """Runs programs and records them. Thread-safe; one per process is the usual shape."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        lm: Any = None,
        prices: Prices | None = None,
        record: bool = True,
        tools: ToolRegistry | None = None,
        telemetry: Telemetry | bool | None = None,
        trace: TraceLevel | None = None,
    ) -> None:
        self.settings = settings or Settings.load()
        # The span tree each run keeps (dspex.telemetry.instrument); None: the settings' level when
        # something reads it (the record, telemetry), else none.
        self._trace = trace
        # OpenTelemetry export (dspex.telemetry.otel): None builds it from the settings on first use.
        self._telemetry: Telemetry | None = telemetry if not isinstance(telemetry, bool) else None
        self._telemetry_ready = telemetry is not None and telemetry is not True
        self.prices = prices or Prices()
        self.record = record
        self._lm = lm
        self._tools = tools
        self._tools_loaded = False
        self._tools_lock = threading.Lock()  # not _lock: _open() reads the tools while holding that
        self._models: ModelRegistry | None = None
        self._resilience: Resilience | None = None
        self._models_lock = threading.Lock()  # not _lock: _open() reads the models while holding that
        self._lock = threading.Lock()
        self._pools: Pools | None = None
        self._router: Router | None = None
        self._stores: _Stores | None = None
        self._signals: Signals | None = None
        self._adaptations: Adaptations | None = None
        self._cache = ProgramCache(self)
        self.abandoned: list[str] = []
        self.replayed: tuple[int, int] = (0, 0)  # (spilled records written, still failing) at open

    # -- resources -----------------------------------------------------------------------------------
    def _open(self) -> _Stores:
        """The database and everything on it, opened (and migrated) on first use."""
        stores = self._stores
        if stores is not None:  # every run asks: no lock once open (close() sets it back to None)
            return stores
        with self._lock:
            if self._stores is None:
                from dspex.programs import ProgramRegistry
                from dspex.programs.datasets import Datasets
                from dspex.runtime.sessions import Sessions
                from dspex.store._engine import private_dir
                from dspex.store.cache import ProgramCacheRepository
                from dspex.store.jobs import JobRepository
                from dspex.store.keys import ApiKeyRepository
                from dspex.store.optimizations import OptimizationRepository
                from dspex.store.recorders import RecorderRepository
                from dspex.store.sessions import SessionRepository
                from dspex.store.writer import replay_spill

                home = self.settings.home
                # It holds the database and the spill file: owner-only. An existing directory is
                # tightened only under dspex's own name (home = "." must not chmod a project).
                if home.name == ".dspex" and home.is_dir():
                    private_dir(home)
                db = open_database(self.settings.resolved_database_url)
                executions = ExecutionRepository(db)
                spill_path = home / "unwritten-executions.jsonl"
                if self.record:  # an App that records nothing (a pool worker) leaves both to recorders
                    # Before the sweep: a spilled terminal record settles its run instead of "abandoned".
                    self.replayed = replay_spill(executions, spill_path)
                    self.abandoned = executions.mark_abandoned()
                self._stores = _Stores(
                    db=db,
                    executions=executions,
                    writer=ExecutionWriter(
                        executions,
                        spill_path=spill_path,
                        recorders=RecorderRepository(db) if self.record else None,
                        lease_s=self.settings.recorder_lease_s,
                    ),
                    programs=ProgramRegistry(db, tools=self.tools, models=self.models),
                    datasets=Datasets(db),
                    optimizations=OptimizationRepository(db),
                    jobs=JobRepository(db),
                    keys=ApiKeyRepository(db),
                    cache=ProgramCacheRepository(db),
                    sessions=Sessions(self, SessionRepository(db)),
                )
            return self._stores

    @property
    def tools(self) -> ToolRegistry:
        """The callables specs may name (tools, reward functions, space constraints): ``tools=`` given to
        the App plus the settings' ``[tools]`` (imported on first use: operator configuration). Specs
        received over the API may name these and nothing else."""
        from dspex.modules import ToolRegistry

        with self._tools_lock:
            if not self._tools_loaded:
                registry = self._tools if self._tools is not None else ToolRegistry()
                for name, path in sorted(self.settings.tools.items()):
                    if name not in registry:
                        registry.add(registry.resolve(path), name=name)
                self._tools, self._tools_loaded = registry, True
            assert self._tools is not None  # set just above
            return self._tools

    @property
    def models(self) -> ModelRegistry:
        """The configured models (the default ``lm`` and ``[models.NAME]``): all a spec received over
        the API may name, each built with its own endpoint and key from the settings."""
        with self._models_lock:
            if self._models is None:
                from dspex.lm.models import ModelRegistry
                from dspex.lm.resilient import Resilience

                models = ModelRegistry.from_settings(self.settings)
                resilience = Resilience.from_settings(self.settings, models=models)
                models.wrap = resilience.wrap  # every configured model an LM is built for gets it
                self._resilience = resilience
                self._models = models
            return self._models

    @property
    def telemetry(self) -> Telemetry | None:
        """The OpenTelemetry export of runs ([telemetry], ``OTEL_EXPORTER_OTLP_ENDPOINT``), or None when
        off; built on first use (:meth:`dspex.telemetry.otel.Telemetry.from_settings`)."""
        if self._telemetry_ready:
            return self._telemetry
        with self._models_lock:
            if not self._telemetry_ready:
                from dspex.telemetry.otel import Telemetry

                self._telemetry = Telemetry.from_settings(self.settings)
                self._telemetry_ready = True
        return self._telemetry

    @property
    def trace_level(self) -> TraceLevel:
        """The span tree runs record: ``full``, ``lean`` or ``off`` (see :mod:`dspex.telemetry.instrument`)."""
        if self._trace is not None:
            return self._trace
        if self.record or self.telemetry is not None:
            return self.settings.trace
        return "off"

    @property
    def resilience(self) -> Resilience:
        """Rate limits, circuit breakers, retries and fallbacks of every LM call a run makes
        (``[resilience]``; :mod:`dspex.lm.resilient`); ``status()`` for the breakers and limits."""
        resilience = self._resilience
        if resilience is None:
            self.models  # noqa: B018  # builds both
            resilience = self._resilience
            assert resilience is not None
        return resilience

    def spec_policy(self, trust: Trust = "untrusted") -> SpecPolicy:
        """What a spec may name: ``untrusted`` (received over the API) names only :attr:`tools` and
        :attr:`models`; ``trusted`` (Python, the CLI) may also name import paths and LM settings."""
        from dspex.modules.policy import SpecPolicy

        return SpecPolicy(trust, self.tools, self.models)

    @property
    def executions(self) -> ExecutionRepository:
        """The execution records (flush first to see runs that just ended)."""
        return self._open().executions

    @property
    def programs(self) -> ProgramRegistry:
        """The program registry on this App's database; ``run("name", ...)`` loads from it."""
        return self._open().programs

    @property
    def datasets(self) -> Datasets:
        """The named, versioned datasets on this App's database."""
        return self._open().datasets

    @property
    def optimizations(self) -> OptimizationRepository:
        """The optimization runs and their trials on this App's database (see :meth:`optimize`)."""
        return self._open().optimizations

    @property
    def evaluation_cache(self) -> EvaluationCacheRepository:
        """The evaluation cache in the database (``evaluation_cache``): predictions per (configuration,
        example), shared by every process, so a resumed optimization does not pay twice (see
        :meth:`optimize_with`); ``count``, ``clear`` and ``purge`` manage it."""
        from dspex.store.evalcache import EvaluationCacheRepository

        return EvaluationCacheRepository(self._open().db)

    @property
    def jobs(self) -> JobRepository:
        """The durable job queue (``dspex.jobs`` submits to it, ``dspex worker`` runs it)."""
        return self._open().jobs

    @property
    def keys(self) -> ApiKeyRepository:
        """The service's API keys (hashed; see :mod:`dspex.store.keys`)."""
        return self._open().keys

    @property
    def cache(self) -> ProgramCacheRepository:
        """The program-level result cache shared through the database (see :meth:`run`)."""
        return self._open().cache

    @property
    def feedback(self) -> Feedback:
        """Feedback on runs (:mod:`dspex.runtime.feedback`): ``app.feedback(execution_id, score=0.8,
        label="good", comment=...)`` stores it (committed before it returns); ``app.feedback.list(id)``
        reads it back. Counted in the quality :attr:`signals`."""
        from dspex.runtime.feedback import Feedback
        from dspex.store.feedback import FeedbackRepository

        return Feedback(lambda: self.executions, lambda: FeedbackRepository(self._open().db), self.flush)

    @property
    def signals(self) -> Signals:
        """Live signals over this App's records (:mod:`dspex.telemetry.signals`): rolling statistics,
        trends and anomalies per program, version, model and variable configuration, with the settings'
        thresholds (``[signals]``, else the defaults). One monitor per App, shared by its users (the service's ``/v1/signals`` and
        ``/metrics``); ``poll()`` reads what is new. :meth:`open_signals` makes one with other thresholds."""
        if self._signals is None:
            signals = self.open_signals()
            with self._lock:
                if self._signals is None:
                    self._signals = signals
        return self._signals

    @property
    def adapt(self) -> Adaptations:
        """Adaptive programs (:mod:`dspex.adapt`): ``app.adapt("qa-live", program="qa", space=...,
        arms=[...])`` starts one (or opens it), ``.run(inputs)`` serves a run from the arm a shared bandit
        picks; ``app.adapt.get(name).status()`` shows arms, shares, posteriors and reward over time."""
        if self._adaptations is None:
            from dspex.adapt.manager import Adaptations
            from dspex.store.adapt import AdaptiveRepository

            adaptations = Adaptations(self, lambda: AdaptiveRepository(self._open().db), lambda: self.tools)
            with self._lock:
                if self._adaptations is None:
                    self._adaptations = adaptations
        return self._adaptations

    def _run_adaptive(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        *,
        program_name: str,
        version_id: str,
        variables: Mapping[str, Any],
        adaptation: Mapping[str, Any],
        lm: Any,
        durability: Durability | None,
        timeout: float | None,
    ) -> RunResult:
        """One run of a configured program an adaptive program chose, its record tagged ``adaptation``."""
        run = self._adaptive(program, inputs, program_name, version_id, variables, adaptation, lm, durability)
        run.set_timeout(timeout)
        return run.finish(run.execute_sync)

    def _adaptive(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        program_name: str,
        version_id: str,
        variables: Mapping[str, Any],
        adaptation: Mapping[str, Any],
        lm: Any,
        durability: Durability | None,
    ) -> _Run:
        mode = check_durability(durability) or self.settings.durability
        run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode)
        run.base["adaptation"] = dict(adaptation)  # the terminal record carries it (run.py spreads base)
        return run

    async def _arun_adaptive(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        *,
        program_name: str,
        version_id: str,
        variables: Mapping[str, Any],
        adaptation: Mapping[str, Any],
        lm: Any,
        durability: Durability | None,
        timeout: float | None,
    ) -> RunResult:
        """Async :meth:`_run_adaptive`."""
        run = self._adaptive(program, inputs, program_name, version_id, variables, adaptation, lm, durability)
        run.set_timeout(timeout)
        return await run.afinish()

    def open_signals(self, thresholds: Thresholds | None = None, **options: Any) -> Signals:
        """A new signals monitor over this App's records with its own ``thresholds`` (and ``options`` of
        :class:`~dspex.telemetry.monitor.Signals`: ``clock``, ``lag_s``...). ::

            signals = app.open_signals(Thresholds(window_s=900))
        """
        from dspex.store.outcomes import OutcomeRepository
        from dspex.telemetry.monitor import Signals
        from dspex.telemetry.signals import Thresholds

        if thresholds is None:  # the settings' [signals] table over the defaults
            thresholds = Thresholds(**self.settings.signals)  # type: ignore[arg-type]  # checked at load
        return Signals(OutcomeRepository(self._open().db), thresholds, **options)

    @staticmethod
    def _check_program_name(name: Any, program_name: str | None) -> None:
        if program_name is not None and program_name != name:
            raise ConfigurationError(
                f"program_name={program_name!r} names another program than {name!r}; leave it out"
            )

    def _in_memory(self, name: str, version_id: str | None) -> bool:
        """Whether a run of ``name`` can be prepared without reading the database: the store is open and
        the program's settings and version are fresh in memory (:meth:`ProgramCache.in_memory`)."""
        return (self._stores is not None or not self.record) and self._cache.in_memory(name, version_id)

    def _loaded(self, name: str, version_id: str | None, program_name: str | None) -> tuple[Any, str] | None:
        """:meth:`_registered` when it reads nothing (:meth:`_in_memory`, the version's program built),
        else None: an async run then prepares on the event loop instead of a thread."""
        if not self._in_memory(name, version_id):
            return None
        version = self._cache.version(name, version_id)
        program = self.programs.loaded(version.id)
        if program is None:
            return None
        self._check_program_name(name, program_name)
        return program, version.id

    def _registered(self, name: str, version_id: str | None, program_name: str | None) -> tuple[Any, str]:
        """The module and version id to run for a registered program name."""
        self._check_program_name(name, program_name)
        version = self._cache.version(name, version_id)
        return self.programs.runnable(version), version.id

    def lm(self) -> Any:
        """The LM runs use when none is given: the one passed in, else one built from settings."""
        with self._lock:
            if self._lm is None:
                from dspex.lm import build_lm

                self._lm = build_lm(self.settings)
            return self._lm

    def prune(
        self,
        *,
        older_than_days: float | None = None,
        keep_per_program: int | None = None,
        traces_only: bool | None = None,
    ) -> int:
        """Apply retention: explicit arguments, else the ``retention_*`` settings. Returns rows affected.

        ::

            app.prune(older_than_days=30, traces_only=True)   # keep summaries, drop old traces
        """
        days = older_than_days if older_than_days is not None else self.settings.retention_days
        keep = keep_per_program if keep_per_program is not None else self.settings.retention_per_program
        only_traces = traces_only if traces_only is not None else self.settings.retention_traces_only
        self.flush()
        cutoff = utcnow() - datetime.timedelta(days=days) if days is not None else None
        return self.executions.prune(older_than=cutoff, keep_per_program=keep, traces_only=only_traces)

    def default_lm(self, program: Any, *, wrap: bool = True) -> Any:
        """The LM a run uses when none is passed: the App's, or None when no predictor would use it.

        A program version saved with an LM per predictor runs on those LMs without any LM configured;
        otherwise a missing LM is the ConfigurationError of :meth:`lm`, saying what to set. With ``wrap``
        (the default) it comes with the App's resilience; a run wraps it itself, for its program.
        """
        lm = self._lm
        if lm is None:
            if not self.settings.lm:
                predictors = program.named_predictors() if hasattr(program, "named_predictors") else []
                # No predictor (a pipeline of functions), or one LM each: nothing would use a default LM.
                if all(predictor.lm is not None for _, predictor in predictors):
                    return None
            lm = self.lm()
        return self.resilience.wrap(lm) if wrap else lm

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record of runs that ended so far is written (and exported, telemetry on)."""
        written = self._stores.writer.flush(timeout) if self._stores is not None else True
        if self._telemetry is not None:
            written = self._telemetry.flush(timeout) and written
        return written

    @property
    def sessions(self) -> Sessions:
        """Sessions: state (history, variables, metrics) carried across runs (:mod:`dspex.runtime.sessions`)."""
        return self._open().sessions

    def pooled(self, name: str, *, pool: str, version_id: str | None = None) -> PooledProgram:
        """Registered program ``name`` (``version_id``, else production) on ``pool``, for the evaluation
        engine: ``Evaluator(metric, concurrency=128).run(app.pooled("qa", pool="general"), devset)``."""
        from dspex.pools.remote import PooledProgram

        return PooledProgram(self.pools.get(pool), name, self._cache.version(name, version_id).id)

    @property
    def router(self) -> Router:
        """Where runs of registered programs execute when no pool is named (:mod:`dspex.runtime.router`)."""
        if self._router is None:
            from dspex.runtime.router import Router

            router = Router(self)  # outside self._lock: it reads self.pools, which takes it
            with self._lock:
                if self._router is None:
                    self._router = router
        return self._router

    @property
    def pools(self) -> Pools:
        """The worker pools of the settings (``[pools.NAME]``, and ``general``), started on first use."""
        with self._lock:
            if self._pools is None:
                from dspex.pools import Pools

                self._pools = Pools(self.settings)
            return self._pools

    def close(self) -> None:
        """Stop the pools, flush and stop the writer, then close database connections."""
        if self._pools is not None:
            self._pools.close()
        if self._resilience is not None:
            self._resilience.close()
        if self._telemetry is not None:
            self._telemetry.close()
        with self._lock:
            if self._stores is not None:
                self._stores.writer.close()
                self._stores.db.dispose()
            self._stores = None
            self._signals = None  # it read the closed database; a reopened App starts a new one
            self._adaptations = None  # their states read the closed database too

    def __enter__(self) -> App:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- optimization --------------------------------------------------------------------------------
    def optimize(
        self,
        program_name: str,
        *,
        dataset: str,
        space: VariableSpace,
        bindings: Bindings | Sequence[Any],
        n_trials: int,
        split: str | None = None,
        metric: Any = "exact_match",
        objectives: Sequence[str] = ("quality",),
        seed: int = 0,
        version_id: str | None = None,
        lms: Mapping[str, Any] | None = None,
        lm: Any = None,
        pruning: Pruning | Literal[False] | None = None,
        max_lm_calls: int | None = None,
        concurrency: int = 8,
        optimization_id: str | None = None,
        on_trial: Callable[[TrialProgress], None] | None = None,
        should_stop: Callable[[], None] | None = None,
        pool: str | None = None,
        parallel: int = 1,
        join: bool = False,
        shared: bool = False,
    ) -> OptimizationResult:
        """Search ``space`` for the registered program ``program_name`` on dataset ``dataset``; the best
        configured program becomes a new version in ``optimizing`` (``result.version_id``), which
        ``app.programs.promote(program_name, result.version_id)`` puts in production. ::

            result = app.optimize("qa", dataset="qa-set", space=space, bindings=[bind.temperature("t")],
                                  n_trials=30)

        - the program: ``version_id``, else production, else the newest draft (as :meth:`run`).
        - the examples: ``split`` when given; else the ``dev`` (or ``val``/``validation``) split when the
          dataset version has one, else every example. A ``train`` split is the trainset.
        - ``metric``: ``"exact_match"``, ``"f1"`` or anything :class:`~dspex.optimize.Evaluator` takes.
        - ``lms``: model name -> LM for ``model`` variables; by default each choice of the space's model
          variables is built from the settings (same endpoint and key), ``dspex.lm.build_lm(model=...)``.
        - ``pruning``: a :class:`~dspex.optimize.search.Pruning`, ``None`` (default: on for one objective,
          shrunk to fit a small devset) or ``False``.
        - ``pool``: evaluate the trials' examples on that worker pool; each worker applies a trial's
          configuration (sent with the space as a document) to its own copy of the version. Without
          it, the ``[routing]`` rules place them as they place runs (:meth:`Router.decide`; logged).
        - ``parallel``: trials evaluated at once (:class:`~dspex.distributed.optimize.ParallelOptimizer`),
          e.g. across a Ray pool's actors.
        - ``join``: add this process's trials to the run ``optimization_id`` that another process owns
          (started with the same inputs, shared); the owner saves the version, so ``result.version_id``
          is None unless the owner had already ended the run. Any number of processes may join one run.
        - ``shared``: let other processes join this run. A run started with ``parallel`` > 1 is shared
          too. A run that is neither is driven by this process alone, with the serial optimizer's
          start-up bracket (:class:`~dspex.optimize.search.HolisticOptimizer`), which trials in flight
          across drivers cannot use; resume a shared run shared (or with ``parallel`` > 1).
        The run, its trials and the result are recorded (:attr:`optimizations`), and a rerun with the
        same inputs resumes it.
        """
        from dspex.distributed.optimize import ParallelOptimizer
        from dspex.optimize.search import HolisticOptimizer, Pruning

        resolved = self.programs.resolve(program_name, version_id)
        program = self.programs.build(resolved)
        trainset, devset = self.examples(dataset, split)
        if lms is None:
            lms = self.space_lms(space)
        if lm is None and (self._lm is not None or self.settings.lm):
            lm = self.lm()
        lm = self.resilience.wrap(lm, program=program_name)
        remote = None
        if pool is None and self.router.active:
            route = self.router.decide(program_name, resolved.id)
            logger.info("optimization of %r: trials %s", program_name, route.placement())
            pool = route.pool
        if pool is not None:
            remote = self._remote_trials(program_name, resolved.id, pool, space, bindings)
        if pruning is None:
            # One objective: Pruning's default starts at 10 examples; a small devset starts lower so that
            # it still prunes. Several objectives: Optuna's pruners do not support them.
            single = len(tuple(objectives)) == 1
            pruning = Pruning(min_examples=max(1, min(10, len(devset) // 4))) if single else False
        common: dict[str, Any] = {
            "objectives": objectives,
            "n_trials": n_trials,
            "max_lm_calls": max_lm_calls,
            "seed": seed,
            "pruning": pruning,
            "lms": lms,
            "lm": lm,
            "prices": self.prices,
            "concurrency": concurrency,
            "remote": remote,
        }
        optimizer: HolisticOptimizer
        if parallel > 1 or join or shared:  # a run other drivers may share (or this one joins)
            optimizer = ParallelOptimizer(
                space, bindings, _metric(metric), parallel=parallel, join=join, **common
            )
        else:  # one driver: the serial optimizer and its start-up bracket
            optimizer = HolisticOptimizer(space, bindings, _metric(metric), **common)
        return optimizer.optimize(
            program,
            devset,
            trainset=trainset,
            db=self._open().db,
            optimization_id=optimization_id,
            registry=self.programs,
            program_name=program_name,
            on_trial=on_trial,
            should_stop=should_stop,
        )

    def optimize_with(
        self,
        program_name: str,
        optimizer: str,
        *,
        dataset: str,
        options: Mapping[str, Any] | None = None,
        split: str | None = None,
        metric: Any = "exact_match",
        seed: int = 0,
        version_id: str | None = None,
        prompt_model: str | None = None,
        num_threads: int = 4,
        max_lm_calls: int | None = None,
        optimization_id: str | None = None,
        on_progress: Callable[[DSPyProgress], None] | None = None,
        should_stop: Callable[[], None] | None = None,
        pool: str | None = None,
    ) -> DSPyOptimizationResult:
        """Optimize the registered program ``program_name`` with one of DSPy's optimizers (``miprov2``,
        ``gepa``, ``simba``, ``copro``, ``bootstrap``, ``bootstrap_rs``, ``ensemble``; see
        :mod:`dspex.optimize.dspy_run`); the result becomes a version in ``optimizing``. ::

            result = app.optimize_with("qa", "miprov2", dataset="qa-set", options={"auto": "light"})

        - ``options``: the optimizer's own (:data:`dspex.optimize.dspy_optimizers.OPTIMIZERS`), checked.
        - the examples: the dataset's ``train`` split is the trainset (else the devset); the devset
          (``split``, else dev/val/validation, else all) is the valset and scores the result.
        - ``prompt_model``: a configured model (``[models]``) proposing instructions / reflecting; default
          the App's LM.
        - ``max_lm_calls``: a hard cap on the run's LM calls (every attempt of it, the optimizer's own
          proposals included); the optimizer is stopped there and the best candidate so far is the result
          (``result.stopped`` says so).
        - ``pool``: a configured pool (``[pools.NAME]``) on whose workers the optimizer's program calls
          run: candidate evaluations, and the calls whose DSPy traces it reads (bootstrapping, ``gepa``'s
          reflective minibatches, ``simba``'s trajectories), their traces sent back and replayed here;
          proposals and reflections stay here. Each worker loads a candidate's instructions and
          demos (``dump_state()`` JSON without LMs) into its own copy of the version and calls its own
          LM, which should be the task model; a candidate's sampling settings (SIMBA's temperature and
          rollout id per predictor) cross as numbers, and a call on another model runs here. The trials,
          scores and chosen program are those of the run in process; ``max_lm_calls`` holds
          (:func:`~dspex.optimize.dspy_run.optimize_with_dspy` says where it may not). The routing rules
          are not consulted here: a job's worker passes its own pool or the routed one.
        Evaluations are kept in :attr:`evaluation_cache`, and the run in :attr:`optimizations` under
        ``optimization_id`` (default derived from the inputs): a rerun, or the job's next worker after a
        crash, resumes it without paying again for the evaluations already made.
        """
        from dspex.optimize.cache import StoredCache
        from dspex.optimize.dspy_optimizers import check_pooled
        from dspex.optimize.dspy_run import optimize_with_dspy

        if pool is not None:  # before anything starts: a pool this optimizer cannot use, or no such pool
            check_pooled(optimizer)
            self.pools.setting(pool)
        resolved = self.programs.resolve(program_name, version_id)
        program = self.programs.build(resolved)
        trainset, devset = self.examples(dataset, split)
        lm = self.default_lm(program)
        prompt_lm = self.models.build(prompt_model) if prompt_model is not None else None
        remote = None
        if pool is not None:
            from dspex.distributed.prompts import candidate_on

            remote = candidate_on(self.pools.get(pool), program_name, resolved.id, program)
        return optimize_with_dspy(
            optimizer,
            program,
            trainset or devset,
            devset,
            metric=_metric(metric),
            lm=lm,
            prompt_lm=prompt_lm,
            options=options,
            seed=seed,
            num_threads=num_threads,
            cache=StoredCache(self.evaluation_cache),
            db=self._open().db,
            optimization_id=optimization_id,
            registry=self.programs,
            program_name=program_name,
            parent_id=resolved.id,
            identity={"program": program_name, "version": resolved.id, "prompt_model": prompt_model},
            on_progress=on_progress,
            should_stop=should_stop,
            prices=self.prices,
            max_lm_calls=max_lm_calls,
            remote=remote,
        )

    def _remote_trials(
        self, name: str, version_id: str, pool: str, space: VariableSpace, bindings: Bindings | Sequence[Any]
    ) -> Callable[[Any], PooledProgram]:
        """Configuration -> the program version on ``pool`` with it applied there (see :meth:`optimize`)."""
        from dspex.pools.remote import PooledProgram
        from dspex.variables import Bindings
        from dspex.variables.spacefile import space_document

        document = space_document(space, bindings if isinstance(bindings, Bindings) else Bindings(bindings))
        started = self.pools.get(pool)

        def remote(configuration: Any) -> PooledProgram:
            values = {"space": document, "values": configuration.to_json()}
            return PooledProgram(started, name, version_id, values)

        return remote

    def examples(self, dataset: str, split: str | None = None) -> tuple[list[Any], list[Any]]:
        """``(trainset, devset)`` of ``dataset`` (a name, or ``name@version``), by the rule
        :meth:`optimize` documents: ``split``, else dev/val/validation, else every example; ``train``
        is the trainset unless it is the devset."""
        version = self.datasets.resolve(dataset)
        splits = version.splits
        train = self.datasets.examples(version, split="train") if "train" in splits else []
        if split is None:
            split = next((s for s in ("dev", "val", "validation") if s in splits), None)
        devset = self.datasets.examples(version, split=split)
        if split is None or split == "train":
            train = []
        if not devset:
            raise ConfigurationError(
                f"dataset {dataset!r} has no examples{f' in split {split!r}' if split else ''}"
            )
        return train, devset

    def space_lms(self, space: VariableSpace) -> dict[str, Any] | None:
        """An LM per choice of the space's model variables, built from the settings (or None)."""
        from dspex.lm import build_lm
        from dspex.variables import ModelVariable

        models = {
            str(choice)
            for leaf in space.leaves()
            if isinstance(leaf.variable, ModelVariable)
            for choice in leaf.variable.choices
        }
        lms = {}
        for model in sorted(models):
            # A configured model brings its own endpoint and key; any other goes to the settings' endpoint.
            entry = self.models.by_provider_model(model)
            lms[model] = (
                self.models.build(entry.name)
                if entry
                else self.resilience.wrap(build_lm(self.settings, model=model))
            )
        return lms or None

    # -- runs ----------------------------------------------------------------------------------------
    def run(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        program_name: str | None = None,
        version_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        pool: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``program`` on ``inputs`` and record it; raises on failure after recording it.

        ``program`` is a DSPy module, or the name of a registered program: then ``version_id`` picks
        the version (default: production, else the newest draft) and both are recorded.
        ``durability`` ('sync' or 'async') overrides the program's and the settings' (module docstring).
        ``pool`` runs a registered program on that worker pool (:mod:`dspex.pools`); ``idempotent``
        lets a run whose worker died be tried once more (:mod:`dspex.runtime.pooled`); without ``pool``, a
        registered program goes where ``[routing]`` puts it (:mod:`dspex.runtime.router`), except with
        ``lm=``: an LM object cannot cross, so it runs inline and its placement says so. ``timeout`` is the
        run's deadline in seconds: every LM call, retry, limiter wait and pipeline step respects it, and a
        run past it fails with :class:`~dspex.errors.DeadlineExceeded` (code ``deadline_exceeded``).
        """
        try:
            durability = check_durability(durability)
            reason = None
            if pool is None and isinstance(program, str) and self.router.active:
                if lm is not None:
                    reason = LM_GIVEN_REASON
                else:
                    route = self.router.decide(program, version_id)
                    pool, reason = route.pool, route.reason
            if pool is not None:
                cached, pooled = self._prepare_pooled(
                    program,
                    inputs,
                    lm,
                    program_name,
                    version_id,
                    variables,
                    durability,
                    pool,
                    idempotent,
                    reason,
                )
                if pooled is None:
                    assert isinstance(cached, RunResult)
                    return cached
                pooled.set_timeout(timeout)
                result = pooled.execute()
                if isinstance(cached, CacheSlot):
                    self._cache.store(cached, pooled.name, pooled.version_id, result)
                return result
            if isinstance(program, str):
                name = program
                cached = self._cache.lookup(name, version_id, program_name, inputs, variables)
                mode = durability or self._cache.policy(name).durability or self.settings.durability
                if isinstance(cached, RunResult):
                    self._settle(mode)
                    return cached
                program, version_id = self._registered(name, version_id, program_name)
                program_name = name
                placement = {"target": "inline", "reason": reason} if reason else None
                run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode, placement)
                run.set_timeout(timeout)
                result = run.finish(run.execute_sync)
                if isinstance(cached, CacheSlot):
                    self._cache.store(cached, name, version_id, result)
                return result
            mode = durability or self.settings.durability
            run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode)
            run.set_timeout(timeout)
            return run.finish(run.execute_sync)
        except DatabaseUnavailable as exc:
            # Resolving a program by name needed the database (nothing was recorded yet): record it now.
            if isinstance(program, str):
                self._cache.record_unresolved(exc, program, version_id, inputs, variables)
            raise

    async def arun(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        program_name: str | None = None,
        version_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        pool: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Async :meth:`run`: native ``acall`` when the program has one, else DSPy's ``asyncify``; on a
        ``pool``, the worker is awaited without blocking the event loop."""
        try:
            cached: CacheSlot | RunResult | None = None
            mode = check_durability(durability) or self.settings.durability
            reason = None
            if pool is None and isinstance(program, str) and self.router.active:
                if lm is not None:
                    reason = LM_GIVEN_REASON
                else:
                    route = await asyncio.to_thread(self.router.decide, program, version_id)
                    pool, reason = route.pool, route.reason
            if pool is not None:
                return await self._arun_pooled(
                    program, inputs, lm, program_name, version_id, variables, durability, pool, idempotent, reason,
                    timeout,
                )  # fmt: skip
            if isinstance(program, str):
                name = program
                # A hit is answered from the in-process memo without touching the event loop's thread
                # pool; anything that reads the database or builds the program runs off the loop.
                cached = self._cache.memo_hit(name, version_id, inputs, variables)
                loaded = self._loaded(name, version_id, program_name) if cached is None else None
                if cached is None and loaded is None:
                    cached = await asyncio.to_thread(
                        self._cache.lookup, name, version_id, program_name, inputs, variables
                    )
                if durability is None:
                    policy = self._cache.policies.get(name)
                    if policy is None or time.monotonic() > policy.fresh_until:
                        policy = await asyncio.to_thread(self._cache.policy, name)
                    mode = policy.durability or self.settings.durability
                if isinstance(cached, RunResult):
                    if mode == "sync":
                        await asyncio.to_thread(self._settle, mode)
                    return cached
                if loaded is None:
                    loaded = await asyncio.to_thread(self._registered, name, version_id, program_name)
                program, version_id = loaded
                program_name = name
            placement = {"target": "inline", "reason": reason} if reason else None
            run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode, placement)
            run.set_timeout(timeout)
            result = await run.afinish()
            if isinstance(cached, CacheSlot) and program_name is not None and version_id is not None:
                await asyncio.to_thread(self._cache.store, cached, program_name, version_id, result)
            return result
        except DatabaseUnavailable as exc:
            # Resolving a program by name needed the database (nothing was recorded yet): record it now.
            if isinstance(program, str):
                self._cache.record_unresolved(exc, program, version_id, inputs, variables)
            raise

    def _prepare_pooled(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        lm: Any,
        program_name: str | None,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability | None,
        pool: str,
        idempotent: bool,
        reason: str | None,
    ) -> tuple[CacheSlot | RunResult | None, PooledRun | None]:
        """A run on ``pool``: the cache hit that answers it, or the cache slot (if any) and the PooledRun.
        Reads the database and may start the pool: off the event loop for async callers."""
        check_crossing(pool, program, lm)
        self._check_program_name(program, program_name)
        cached = self._cache.lookup(program, version_id, None, inputs, variables)
        mode = durability or self._cache.policy(program).durability or self.settings.durability
        if isinstance(cached, RunResult):
            self._settle(mode)
            return cached, None
        pooled = PooledRun(
            self,
            pool,
            program,
            inputs,
            lm=lm,
            version_id=version_id,
            variables=variables,
            durability=mode,
            idempotent=idempotent,
            reason=reason,
        )
        return cached, pooled

    async def _arun_pooled(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        lm: Any,
        program_name: str | None,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability | None,
        pool: str,
        idempotent: bool,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        prepare = functools.partial(
            self._prepare_pooled,
            program, inputs, lm, program_name, version_id, variables, durability, pool, idempotent, reason,
        )  # fmt: skip
        if isinstance(program, str) and self._in_memory(program, version_id) and self.pools.running(pool):
            cached, pooled = prepare()  # reads no row, starts no pool: no thread hop
        else:
            cached, pooled = await asyncio.to_thread(prepare)
        if pooled is None:
            assert isinstance(cached, RunResult)
            return cached
        pooled.set_timeout(timeout)
        result = await pooled.aexecute()
        if isinstance(cached, CacheSlot):
            await asyncio.to_thread(self._cache.store, cached, pooled.name, pooled.version_id, result)
        return result

    def run_many(
        self,
        program: str,
        inputs: Sequence[Mapping[str, Any] | None],
        /,
        *,
        pool: str,
        version_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> list[RunResult | BaseException]:
        """Run registered ``program`` on each of ``inputs`` on pool ``pool`` (processes or Ray actors),
        sent to one worker as one shard (:class:`~dspex.runtime.pooled.PooledShard`): one message each
        way instead of one per run. Each run is recorded as :meth:`run` records it (its duration is the worker's). Results
        come in the inputs' order: a :class:`RunResult`, or the exception the run would have raised
        (already recorded); misuse (an unknown program or pool) raises. Batch runs on a pool use
        it (:func:`dspex.distributed.batch.arun_batch`)."""
        entries, shard = self._prepare_shard(
            program, inputs, pool, version_id, variables, durability, idempotent, timeout
        )
        return self._shard_results(entries, shard.execute() if shard is not None else [])

    async def arun_many(
        self,
        program: str,
        inputs: Sequence[Mapping[str, Any] | None],
        /,
        *,
        pool: str,
        version_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> list[RunResult | BaseException]:
        """Async :meth:`run_many`: the worker is awaited without blocking the event loop."""
        prepare = functools.partial(
            self._prepare_shard, program, inputs, pool, version_id, variables, durability, idempotent, timeout
        )
        if self._in_memory(program, version_id) and self.pools.running(pool):
            entries, shard = prepare()  # reads no row, starts no pool: no thread hop (as _arun_pooled)
        else:
            entries, shard = await asyncio.to_thread(prepare)
        results = await shard.aexecute() if shard is not None else []
        if any(isinstance(entry, tuple) and entry[0] is not None for entry in entries):
            return await asyncio.to_thread(self._shard_results, entries, results)  # stores cache rows
        return self._shard_results(entries, results)

    def _prepare_shard(
        self,
        program: str,
        inputs: Sequence[Mapping[str, Any] | None],
        pool: str,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability | None,
        idempotent: bool,
        timeout: float | None,
    ) -> tuple[list[RunResult | tuple[CacheSlot | None, PooledRun]], PooledShard | None]:
        """Each input's cache hit, or its cache slot and PooledRun; the shard of the runs to make."""
        self.pools.setting(pool)  # an unknown pool: ConfigurationError listing them
        mode = check_durability(durability)
        entries: list[RunResult | tuple[CacheSlot | None, PooledRun]] = []
        for values in inputs:
            cached, pooled = self._prepare_pooled(
                program, values, None, None, version_id, variables, mode, pool, idempotent, None
            )
            if pooled is None:
                assert isinstance(cached, RunResult)
                entries.append(cached)
                continue
            pooled.set_timeout(timeout)
            entries.append((cached if isinstance(cached, CacheSlot) else None, pooled))
        runs = [entry[1] for entry in entries if isinstance(entry, tuple)]
        return entries, PooledShard(runs) if runs else None

    def _shard_results(
        self,
        entries: list[RunResult | tuple[CacheSlot | None, PooledRun]],
        results: list[RunResult | BaseException],
    ) -> list[RunResult | BaseException]:
        """The shard's results in the inputs' order, cache hits in their places; results stored in the
        program cache where a slot waits for them."""
        made = iter(results)
        merged: list[RunResult | BaseException] = []
        for entry in entries:
            if isinstance(entry, RunResult):
                merged.append(entry)
                continue
            slot, pooled = entry
            result = next(made)
            if slot is not None and isinstance(result, RunResult):
                self._cache.store(slot, pooled.name, pooled.version_id, result)
            merged.append(result)
        return merged

    def set_cache(self, name: str, ttl_s: int | None) -> None:
        """Serve ``name``'s results from the program-level cache for ``ttl_s`` seconds (None: off).

        With a TTL, a run of ``name`` whose version, variables and inputs equal an earlier successful
        run's returns that run's outputs without running DSPy, and is recorded as a cache hit. The
        cache lives in the database (every process shares it); each process also memoises what it
        read for up to ``MEMO_FRESH_S`` seconds, and re-reads a program's TTL and production version at
        most every ``POLICY_REFRESH_S`` seconds, so a change made elsewhere applies within that time.
        """
        if ttl_s is not None and (not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s < 1):
            raise ConfigurationError(
                f"a cache TTL is a whole number of seconds >= 1 (or None), got {ttl_s!r}"
            )
        self.programs.get(name)
        self.programs.repository.set_cache_ttl(name, ttl_s)
        self._cache.policies.pop(name, None)

    def set_durability(self, name: str, durability: Durability | None) -> None:
        """Record program ``name``'s runs with ``durability`` ('sync', 'async'; None: the default).

        A run's own ``durability=`` still wins. Other processes see the change within
        ``POLICY_REFRESH_S`` seconds (the same per-process refresh as the cache TTL).
        """
        check_durability(durability)
        self.programs.get(name)
        self.programs.repository.set_durability(name, durability)
        self._cache.policies.pop(name, None)

    def _settle(self, durability: Durability) -> None:
        """With ``sync`` durability: wait until every record submitted so far is committed."""
        stores = self._stores
        if durability == "sync" and stores is not None and not stores.writer.flush(SYNC_TIMEOUT_S):
            logger.error(
                "a sync-durability record was not confirmed written within %.0f s; "
                "the writer may be stuck on the database",
                SYNC_TIMEOUT_S,
            )


def _metric(metric: Any) -> Any:
    """A metric by name (``exact_match``, ``f1``) or as given."""
    if not isinstance(metric, str):
        return metric
    from dspex.errors import did_you_mean
    from dspex.optimize.metrics import exact_match, f1

    named: dict[str, Any] = {"exact_match": exact_match, "f1": f1}
    if metric not in named:
        raise ConfigurationError(did_you_mean(metric, named, what="metric"))
    return named[metric]
