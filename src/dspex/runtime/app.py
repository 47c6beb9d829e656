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
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dspex.errors import ConfigurationError, ExecutionError, LMError, UserError, ValidationError
from dspex.jsonable import dumps, to_jsonable
from dspex.lm.pricing import Prices
from dspex.modules._interface import check_inputs, input_interface
from dspex.modules._introspect import acall_module
from dspex.settings import Settings
from dspex.store import Database, open_database
from dspex.store.executions import ExecutionRepository, ExecutionStatus, current_runner, utcnow
from dspex.store.writer import ExecutionWriter
from dspex.telemetry.recorder import RunRecorder, error_info

if TYPE_CHECKING:
    from dspex.lm.models import ModelRegistry
    from dspex.modules import ToolRegistry
    from dspex.modules.policy import SpecPolicy, Trust
    from dspex.optimize.search import OptimizationResult, Pruning, TrialProgress
    from dspex.programs import ProgramRegistry
    from dspex.programs.datasets import Datasets
    from dspex.store.cache import ProgramCacheRepository
    from dspex.store.jobs import JobRepository
    from dspex.store.keys import ApiKeyRepository
    from dspex.store.optimizations import OptimizationRepository
    from dspex.variables import Bindings, VariableSpace

__all__ = ["App", "Durability", "RunResult"]

Durability = Literal["async", "sync"]
DURABILITIES: tuple[Durability, ...] = ("async", "sync")
logger = logging.getLogger("dspex.runtime")


def check_durability(durability: str | None) -> Durability | None:
    """``durability`` as a :data:`Durability` (None stays None); ``ConfigurationError`` otherwise."""
    if durability is None:
        return None
    if durability == "sync":
        return "sync"
    if durability == "async":
        return "async"
    raise ConfigurationError(f"durability is 'sync' or 'async', got {durability!r}")


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a successful run."""

    execution_id: str
    outputs: dict[str, Any]
    prediction: Any
    duration_ms: float
    usage: dict[str, dict[str, Any]]
    cost_usd: float | None
    cache_hit: bool = False


def _input_interface(program: Any) -> Any:
    """What a run checks ``program``'s inputs against (see :mod:`dspex.modules._interface`)."""
    from dspex.pipeline.steps import Step

    if isinstance(program, Step):  # a pipeline checks its own inputs, which need not be any predictor's
        return None
    return input_interface(program)


POLICY_REFRESH_S = 1.0  # how stale a process's view of a program's cache TTL and production version may be
MEMO_FRESH_S = 5.0  # how long a process serves a shared cache entry it read without re-reading it


@dataclass(frozen=True, slots=True)
class _Policy:
    ttl_s: int | None
    durability: Durability | None
    version_id: str
    fresh_until: float


@dataclass(frozen=True, slots=True)
class _CacheSlot:
    """A cache miss: where the run's outputs go when it succeeds."""

    key: str
    ttl_s: int
    version_id: str


@dataclass(frozen=True, slots=True)
class _MemoEntry:
    outputs: dict[str, Any]
    expires_at: datetime.datetime
    fresh_until: float


class _Memo:
    """A bounded, thread-safe memo of shared cache entries this process read or wrote."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: dict[str, _MemoEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> _MemoEntry | None:
        """The entry for ``key`` while it is live and fresh, else None."""
        entry = self._items.get(key)
        if entry is None or time.monotonic() > entry.fresh_until or entry.expires_at <= utcnow():
            return None
        return entry

    def put(self, key: str, outputs: dict[str, Any], expires_at: datetime.datetime) -> _MemoEntry:
        entry = _MemoEntry(outputs, expires_at, time.monotonic() + MEMO_FRESH_S)
        with self._lock:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))  # the oldest insertion
            self._items[key] = entry
        return entry


def _cache_key(
    name: str, version_id: str, inputs: Mapping[str, Any] | None, variables: Mapping[str, Any] | None
) -> str | None:
    from dspex.store.cache import cache_key

    try:
        return cache_key(name, version_id, variables, inputs or {})
    except (TypeError, ValueError):  # not JSON (or NaN): such inputs run without the cache
        return None


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
    ) -> None:
        self.settings = settings or Settings.load()
        self.prices = prices or Prices()
        self.record = record
        self._lm = lm
        self._tools = tools
        self._tools_loaded = False
        self._tools_lock = threading.Lock()  # not _lock: _open() reads the tools while holding that
        self._models: ModelRegistry | None = None
        self._lock = threading.Lock()
        self._stores: _Stores | None = None
        self._policies: dict[str, _Policy] = {}
        self._memo = _Memo()
        self.abandoned: list[str] = []
        self.replayed: tuple[int, int] = (0, 0)  # (spilled records written, still failing) at open

    # -- resources -----------------------------------------------------------------------------------
    def _open(self) -> _Stores:
        """The database and everything on it, opened (and migrated) on first use."""
        with self._lock:
            if self._stores is None:
                from dspex.programs import ProgramRegistry
                from dspex.programs.datasets import Datasets
                from dspex.store._engine import private_dir
                from dspex.store.cache import ProgramCacheRepository
                from dspex.store.jobs import JobRepository
                from dspex.store.keys import ApiKeyRepository
                from dspex.store.optimizations import OptimizationRepository
                from dspex.store.recorders import RecorderRepository
                from dspex.store.writer import replay_spill

                home = self.settings.home
                # It holds the database and the spill file: owner-only. An existing directory is
                # tightened only under dspex's own name (home = "." must not chmod a project).
                if home.name == ".dspex" and home.is_dir():
                    private_dir(home)
                db = open_database(self.settings.resolved_database_url)
                executions = ExecutionRepository(db)
                spill_path = home / "unwritten-executions.jsonl"
                # Before the sweep: a spilled terminal record settles its run instead of "abandoned".
                self.replayed = replay_spill(executions, spill_path)
                self.abandoned = executions.mark_abandoned()
                self._stores = _Stores(
                    db=db,
                    executions=executions,
                    writer=ExecutionWriter(
                        executions,
                        spill_path=spill_path,
                        recorders=RecorderRepository(db),
                        lease_s=self.settings.recorder_lease_s,
                    ),
                    programs=ProgramRegistry(db, tools=self.tools, models=self.models),
                    datasets=Datasets(db),
                    optimizations=OptimizationRepository(db),
                    jobs=JobRepository(db),
                    keys=ApiKeyRepository(db),
                    cache=ProgramCacheRepository(db),
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
        if self._models is None:
            from dspex.lm.models import ModelRegistry

            self._models = ModelRegistry.from_settings(self.settings)
        return self._models

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

    def _registered(self, name: str, version_id: str | None, program_name: str | None) -> tuple[Any, str]:
        """The module and version id to run for a registered program name."""
        if program_name is not None and program_name != name:
            raise ConfigurationError(
                f"program_name={program_name!r} names another program than {name!r}; leave it out"
            )
        version = self.programs.resolve(name, version_id)
        return self.programs.build(version), version.id

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

    def default_lm(self, program: Any) -> Any:
        """The LM a run uses when none is passed: the App's, or None when no predictor would use it.

        A program version saved with an LM per predictor runs on those LMs without any LM configured;
        otherwise a missing LM is the ConfigurationError of :meth:`lm`, saying what to set.
        """
        if self._lm is None and not self.settings.lm:
            predictors = program.named_predictors() if hasattr(program, "named_predictors") else []
            # No predictor (a pipeline of functions), or one LM each: nothing would use a default LM.
            if all(predictor.lm is not None for _, predictor in predictors):
                return None
        return self.lm()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record of runs that ended so far is written."""
        return self._stores.writer.flush(timeout) if self._stores is not None else True

    def close(self) -> None:
        """Flush and stop the writer, then close database connections."""
        with self._lock:
            if self._stores is not None:
                self._stores.writer.close()
                self._stores.db.dispose()
            self._stores = None

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
        The run, its trials and the result are recorded (:attr:`optimizations`), and a rerun with the
        same inputs resumes it.
        """
        from dspex.optimize.search import HolisticOptimizer, Pruning

        resolved = self.programs.resolve(program_name, version_id)
        program = self.programs.build(resolved)
        trainset, devset = self.examples(dataset, split)
        if lms is None:
            lms = self.space_lms(space)
        if lm is None and (self._lm is not None or self.settings.lm):
            lm = self.lm()
        if pruning is None:
            # One objective: Pruning's default starts at 10 examples; a small devset starts lower so that
            # it still prunes. Several objectives: Optuna's pruners do not support them.
            single = len(tuple(objectives)) == 1
            pruning = Pruning(min_examples=max(1, min(10, len(devset) // 4))) if single else False
        optimizer = HolisticOptimizer(
            space,
            bindings,
            _metric(metric),
            objectives=objectives,
            n_trials=n_trials,
            max_lm_calls=max_lm_calls,
            seed=seed,
            pruning=pruning,
            lms=lms,
            lm=lm,
            prices=self.prices,
            concurrency=concurrency,
        )
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
            lms[model] = self.models.build(entry.name) if entry else build_lm(self.settings, model=model)
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
    ) -> RunResult:
        """Run ``program`` on ``inputs`` and record it; raises on failure after recording it.

        ``program`` is a DSPy module, or the name of a registered program: then ``version_id`` picks
        the version (default: production, else the newest draft) and both are recorded.
        ``durability`` ('sync' or 'async') overrides the program's and the settings' (module docstring).
        """
        durability = check_durability(durability)
        if isinstance(program, str):
            name = program
            cached = self._cache_lookup(name, version_id, program_name, inputs, variables)
            mode = durability or self._policy(name).durability or self.settings.durability
            if isinstance(cached, RunResult):
                self._settle(mode)
                return cached
            program, version_id = self._registered(name, version_id, program_name)
            program_name = name
            run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode)
            result = run.finish(run.execute_sync)
            if isinstance(cached, _CacheSlot):
                self._cache_store(cached, name, version_id, result)
            return result
        mode = durability or self.settings.durability
        run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode)
        return run.finish(run.execute_sync)

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
    ) -> RunResult:
        """Async :meth:`run`: native ``acall`` when the program has one, else DSPy's ``asyncify``."""
        cached: _CacheSlot | RunResult | None = None
        mode = check_durability(durability) or self.settings.durability
        if isinstance(program, str):
            name = program
            # A hit is answered from the in-process memo without touching the event loop's thread
            # pool; anything that reads the database or builds the program runs off the loop.
            cached = self._cache_memo_hit(name, version_id, inputs, variables)
            if cached is None:
                cached = await asyncio.to_thread(
                    self._cache_lookup, name, version_id, program_name, inputs, variables
                )
            if durability is None:
                policy = self._policies.get(name)
                if policy is None or time.monotonic() > policy.fresh_until:
                    policy = await asyncio.to_thread(self._policy, name)
                mode = policy.durability or self.settings.durability
            if isinstance(cached, RunResult):
                if mode == "sync":
                    await asyncio.to_thread(self._settle, mode)
                return cached
            program, version_id = await asyncio.to_thread(self._registered, name, version_id, program_name)
            program_name = name
        run = _Run(self, program, inputs, lm, program_name, version_id, variables, mode)
        try:
            prediction = await run.execute_async()
        except BaseException as exc:
            shown = run.failed(exc)
            if mode == "sync":
                await asyncio.to_thread(run.settle)
            raise shown from exc
        result = run.succeeded(prediction)
        if mode == "sync":
            await asyncio.to_thread(run.settle)
        if isinstance(cached, _CacheSlot) and program_name is not None and version_id is not None:
            await asyncio.to_thread(self._cache_store, cached, program_name, version_id, result)
        return result

    # -- the program-level cache ----------------------------------------------------------------------
    def _cache_memo_hit(
        self,
        name: str,
        version_id: str | None,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
    ) -> RunResult | None:
        """A hit from this process's memo of the shared cache, if the program's policy is memoised too."""
        policy = self._policies.get(name)
        if policy is None or policy.ttl_s is None or time.monotonic() > policy.fresh_until:
            return None
        resolved = version_id or policy.version_id
        key = _cache_key(name, resolved, inputs, variables)
        if key is None:
            return None
        entry = self._memo.get(key)
        if entry is None:
            return None
        return self._record_hit(name, resolved, inputs, variables, entry.outputs)

    def _cache_lookup(
        self,
        name: str,
        version_id: str | None,
        program_name: str | None,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
    ) -> _CacheSlot | RunResult | None:
        """For a program with a cache TTL: the recorded hit, or the slot a miss fills. None: no cache."""
        if program_name is not None and program_name != name:
            return None  # _registered reports the mismatch
        policy = self._policy(name)
        if policy.ttl_s is None:
            return None
        resolved = self.programs.resolve(name, version_id).id if version_id is not None else policy.version_id
        key = _cache_key(name, resolved, inputs, variables)
        if key is None:
            return None  # inputs that are not JSON cannot be a cache key; run without the cache
        entry = self._memo.get(key)
        if entry is None:
            found = self.cache.get(key)
            if found is None:
                return _CacheSlot(key, policy.ttl_s, resolved)
            entry = self._memo.put(key, found.outputs, found.expires_at)
        return self._record_hit(name, resolved, inputs, variables, entry.outputs)

    def _record_hit(
        self,
        name: str,
        version_id: str,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
        outputs: dict[str, Any],
    ) -> RunResult:
        import dspy

        started = utcnow()
        t0 = time.perf_counter()
        execution_id = str(uuid.uuid4())
        prediction = dspy.Prediction(**outputs)
        duration_ms = (time.perf_counter() - t0) * 1000
        if self.record:
            self._open().writer.submit(
                {
                    "id": execution_id,
                    "program": name,
                    "version_id": version_id,
                    "inputs": dict(inputs or {}),
                    "variables": to_jsonable(dict(variables)) if variables else None,
                    "started_at": started,
                    "runner": current_runner(),
                    "cache_hit": True,
                    "status": "succeeded",
                    "outputs": outputs,
                    "error": None,
                    "ended_at": started,
                    "duration_ms": duration_ms,
                    "usage": None,
                    "total_tokens": 0,
                    "cost_usd": 0.0,
                    "trace": None,
                }
            )
        return RunResult(
            execution_id=execution_id,
            outputs=outputs,
            prediction=prediction,
            duration_ms=duration_ms,
            usage={},
            cost_usd=0.0,
            cache_hit=True,
        )

    def _cache_store(self, slot: _CacheSlot, name: str, version_id: str, result: RunResult) -> None:
        if version_id != slot.version_id:
            return  # production moved between the lookup and the run: this result is another version's
        self.cache.put(
            slot.key,
            program=name,
            version_id=version_id,
            outputs=result.outputs,
            ttl_s=slot.ttl_s,
            execution_id=result.execution_id,
        )
        self._memo.put(slot.key, result.outputs, utcnow() + datetime.timedelta(seconds=slot.ttl_s))

    def _policy(self, name: str) -> _Policy:
        """Program ``name``'s cache TTL and default version, re-read at most every POLICY_REFRESH_S."""
        policy = self._policies.get(name)
        if policy is not None and time.monotonic() <= policy.fresh_until:
            return policy
        record = self.programs.get(name)
        version = self.programs.resolve(name).id if record.cache_ttl_s is not None else ""
        durability = record.durability if record.durability in DURABILITIES else None
        policy = _Policy(
            record.cache_ttl_s,
            check_durability(durability),
            version,
            time.monotonic() + POLICY_REFRESH_S,
        )
        self._policies[name] = policy
        return policy

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
        self._policies.pop(name, None)

    def set_durability(self, name: str, durability: Durability | None) -> None:
        """Record program ``name``'s runs with ``durability`` ('sync', 'async'; None: the default).

        A run's own ``durability=`` still wins. Other processes see the change within
        ``POLICY_REFRESH_S`` seconds (the same per-process refresh as the cache TTL).
        """
        check_durability(durability)
        self.programs.get(name)
        self.programs.repository.set_durability(name, durability)
        self._policies.pop(name, None)

    def _settle(self, durability: Durability) -> None:
        """With ``sync`` durability: wait until every record submitted so far is committed."""
        stores = self._stores
        if durability == "sync" and stores is not None and not stores.writer.flush(SYNC_TIMEOUT_S):
            logger.error(
                "a sync-durability record was not confirmed written within %.0f s; "
                "the writer may be stuck on the database",
                SYNC_TIMEOUT_S,
            )


SYNC_TIMEOUT_S = 30.0  # how long a sync-durability run waits for its record before giving up (logged)


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


class _Run:
    """One run's bookkeeping: the record's fields, the recorder, and how it ends."""

    def __init__(
        self,
        app: App,
        program: Any,
        inputs: Mapping[str, Any] | None,
        lm: Any,
        program_name: str | None,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability = "async",
    ) -> None:
        import dspy

        self.app = app
        self.durability = durability
        self.program = program
        self.inputs = dict(inputs or {})
        # DSPy's own order: an LM passed to the call, else the one the caller set the DSPy way
        # (dspy.context / dspy.configure), else the App's; predictors carrying their own LM use it anyway.
        if lm is None:
            lm = dspy.settings.lm if dspy.settings.lm is not None else app.default_lm(program)
        self.lm = lm
        self.id = str(uuid.uuid4())
        self.recorder = RunRecorder(prices=app.prices, parent_tracker=dspy.settings.usage_tracker)
        self.started_at = utcnow()
        self.t0 = time.perf_counter()
        self.base: dict[str, Any] = {
            "id": self.id,
            "program": program_name or type(program).__name__,
            "version_id": version_id,
            "inputs": self.inputs,
            "variables": to_jsonable(dict(variables)) if variables else None,
            "started_at": self.started_at,
            "runner": current_runner(),
            "cache_hit": False,
        }
        self.too_large: ValidationError | None = None
        size = len(dumps(self.inputs).encode("utf-8"))
        if size > app.settings.max_input_bytes:
            limit = app.settings.max_input_bytes
            self.too_large = ValidationError(
                f"the run's inputs are {size} bytes of JSON, over the limit of {limit} "
                "(setting max_input_bytes / DSPEX_MAX_INPUT_BYTES); send smaller inputs or raise the limit"
            )
            self.base["inputs"] = {"__omitted__": {"reason": "too_large", "bytes": size, "limit": limit}}
        self.writer = app._open().writer if app.record else None
        if self.writer is not None:
            self.writer.submit({**self.base, "status": "running"})

    def _context(self) -> Any:
        import dspy

        callbacks = [*dspy.settings.callbacks, self.recorder]
        # DSPy's per-module and per-LM history grows without bound in a long-lived process; the
        # execution record keeps what it held, so runs leave it off.
        return dspy.context(
            lm=self.lm, callbacks=callbacks, usage_tracker=self.recorder, disable_history=True
        )

    def _validated(self) -> dict[str, Any]:
        return check_inputs(_input_interface(self.program), self.inputs)

    def _check_size(self) -> None:
        if self.too_large is not None:
            raise self.too_large

    def execute_sync(self) -> Any:
        self._check_size()
        inputs = self._validated()
        with self._context():
            return self.program(**inputs)

    async def execute_async(self) -> Any:
        self._check_size()
        inputs = self._validated()
        with self._context():
            return await acall_module(self.program, **inputs)

    def finish(self, execute: Any) -> RunResult:
        try:
            prediction = execute()
        except BaseException as exc:
            shown = self.failed(exc)
            self.settle()
            raise shown from exc
        result = self.succeeded(prediction)
        self.settle()
        return result

    def settle(self) -> None:
        """With ``sync`` durability, wait until the terminal record is committed (or spilled)."""
        if self.durability == "sync" and self.writer is not None:
            self.app._settle("sync")

    def _end(
        self, status: ExecutionStatus, outputs: Any = None, error: dict[str, Any] | None = None
    ) -> float:
        duration_ms = (time.perf_counter() - self.t0) * 1000
        if self.writer is not None:
            recorder, base, ended_at = self.recorder, self.base, utcnow()

            def row() -> dict[str, Any]:  # built on the writer thread, off the caller's path
                return {
                    **base,
                    "status": status,
                    "outputs": outputs,
                    "error": error,
                    "ended_at": ended_at,
                    "duration_ms": duration_ms,
                    "usage": recorder.usage or None,
                    "total_tokens": recorder.total_tokens,
                    "cost_usd": recorder.cost_usd,
                    "trace": recorder.trace(),
                }

            self.writer.submit(row)
        return duration_ms

    def succeeded(self, prediction: Any) -> RunResult:
        outputs = to_jsonable(prediction)
        duration_ms = self._end("succeeded", outputs)
        return RunResult(
            execution_id=self.id,
            outputs=outputs if isinstance(outputs, dict) else {"output": outputs},
            prediction=prediction,
            duration_ms=duration_ms,
            usage=self.recorder.usage,
            cost_usd=self.recorder.cost_usd,
        )

    def failed(self, exc: BaseException) -> BaseException:
        """Record the failure and return the exception the caller should see.

        The record keeps the original error's type and message, with dspex's classification: its
        ``code`` and whether retrying may help.
        """
        import dspy

        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            self._end("cancelled", error={**error_info(exc), "code": "cancelled"})
            return exc
        shown: BaseException
        if isinstance(exc, UserError):
            if isinstance(exc, ValidationError):
                exc.execution_id = self.id  # type: ignore[attr-defined]  # lets callers find the record
            shown = exc
        elif isinstance(exc, dspy.LMError):
            shown = LMError(
                f"the language model failed: {exc}",
                retryable=dspy.is_retryable_lm_error(exc),
                retry_after=getattr(exc, "retry_after", None),
                execution_id=self.id,
            )
        else:
            shown = ExecutionError(f"program raised {type(exc).__name__}: {exc}", execution_id=self.id)
        error = error_info(exc)
        error["code"] = getattr(shown, "code", "execution_error")
        if isinstance(shown, LMError):
            error["retryable"] = shown.retryable
        self._end("failed", error=error)
        return shown
