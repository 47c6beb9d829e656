"""A DSPy optimizer as a resumable, observable run: candidate cache, progress, record and saved version.

::

    result = optimize_with_dspy("miprov2", program, trainset, valset, metric=exact_match, lm=lm,
                                options={"auto": "light"}, db=app.db, registry=app.programs,
                                program_name="qa", on_progress=print)
    result.score, result.lm_calls, result.version_id

DSPy's optimizers are used as they are (``dspy.MIPROv2(...).compile(...)``...); DSPex wraps what they
are given, never their internals:

- **The program** goes in behind :class:`CandidateCache`, a ``dspy.Module`` whose ``forward`` looks up
  (candidate fingerprint, inputs) in the evaluation cache before calling the real program. The
  fingerprint is :func:`~dspex.optimize.configuration_fingerprint` of the candidate the optimizer made
  (its class and saved state: instructions and demos of every predictor, and the per-predictor LMs)
  and the LM in context with its settings (model, temperature, rollout id). A hit returns the stored
  prediction and replays the stored trace of predictor calls into ``dspy.settings.trace`` when a trace
  is being collected, so bootstrapping (which builds demos from traces), GEPA's reflective datasets and
  SIMBA's trajectories see exactly what a real call would have produced. Rows are written as each
  call finishes (:class:`~dspex.optimize.cache.StoredCache` over the ``evaluation_cache`` table), so a
  worker killed mid-run loses only the calls in flight.
- **The metric** is a registered one (``exact_match``, ``f1``), wrapped to count which candidate scored
  what (the progress: candidates evaluated, best score so far) and, for GEPA, to return textual
  feedback (``dspy.Prediction(score=..., feedback=...)``).
- **The LMs** are the App's; every LM call the run makes, the optimizer's own (instruction proposals,
  reflection) included, is counted per model with tokens and cost, through DSPy's usage tracker.

What a resumed run repeats: DSPy optimizers keep no checkpoint, so a resumed run replays the optimizer
from the start with the same seed. Every call of the *program* the first run finished (bootstrapping
traces, minibatch and full evaluations of candidates) is served from the store at no LM cost. So are
the optimizer's own calls, made through the prompt LM it is given (a
:class:`~dspex.optimize._dspy_lm.StoredLM` over the same store): for MIPROv2, the proposer's (the
dataset summary, the program description and one instruction proposal per candidate and predictor,
each with a rollout id drawn from the seed), for COPRO its instruction proposals, for GEPA its
reflection calls, for SIMBA its rule proposals. Replayed with the same seed, they ask the same
requests, get the same answers and so walk the same candidates, whatever the LM would sample now.
What is repeated: the calls in flight when the worker died, and calls whose answer is not plain JSON.
The Optuna study inside MIPROv2 is replayed too (same seed, same scores, same suggestions), in
milliseconds.

**On a pool** (``remote=``, ``App.optimize_with(..., pool=...)``): every optimizer's program calls run on
the pool's workers, each worker loading the candidate's ``dump_state()`` JSON (no LMs) into its own copy
of the registered version; the optimizers' own LM calls (proposals, reflections) stay in this process.

- Calls whose traces nobody reads: MIPROv2's trial evaluations
  (:class:`~dspex.optimize._remote_dspy.RemoteMIPROv2`), GEPA's valset evaluations, COPRO's and
  BootstrapFewShotWithRandomSearch's (``bootstrap_rs``, ``ensemble``) candidate scoring, the final
  evaluation. Cached under keys of their own (they have no trace to replay).
- Calls whose traces may be read (bootstrapping, GEPA's reflective minibatches, every SIMBA call): the
  worker runs the example under ``dspy.context(trace=[])`` and sends the trace back as JSON steps by
  predictor name; :class:`CandidateCache` replays it against this process's predictors into the trace in
  context, and caches it under the key of a call made here, so local and remote calls serve each other
  and a resumed run replays them. A parse failure comes back as DSPy's ``AdapterParseError`` with this
  process's predictor's signature (GEPA's ``bootstrap_trace_data`` makes it the same
  ``FailedPrediction``). The LMs of such a call cross as sampling settings only: where the context LM or
  a predictor's LM is a copy of the run's task LM (``lm.copy(temperature=1.0, rollout_id=r)``: SIMBA's
  trajectories, BootstrapFewShot's later rounds), the worker calls ``its_own_lm.copy(...)`` with the
  numbers of :data:`~dspex.pools.remote.SAMPLING_KWARGS`; a call with another model, or any other
  setting that differs, runs here. These settings come from DSPy's objects in this process, never from
  a request.

The run is recorded in ``optimizations`` (``space``: ``{"optimizer", "options"}``; no trials), and the
optimized program is saved as a version in ``optimizing`` (for ``ensemble``, each member; the run's
version is the best member and the job result names all of them). An optimizer that keeps the program
as it was (GEPA finding no better instruction) gives back the version it started from
(``unchanged``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspex.errors import ConfigurationError
from dspex.jsonable import canonical_hash, to_jsonable
from dspex.optimize._dspy_candidates import (
    TRACE_FREE,
    CandidateCache,
    DSPyProgress,
    TrackedEvaluate,
    Tracker,
    unwrap,
)
from dspex.optimize._dspy_lm import CallCap, CapReached, Stop, StoredLM
from dspex.optimize._dspy_pool import admit
from dspex.optimize._remote_dspy import RemoteMIPROv2, TraceFreeEvaluations
from dspex.optimize._run import configuration_fingerprint
from dspex.optimize.cache import EvalCache, MemoryCache, example_hash
from dspex.optimize.dspy_optimizers import OPTIMIZERS, check_options, check_pooled
from dspex.optimize.evaluate import Evaluator
from dspex.optimize.metrics import Metric, MetricLike, as_metric
from dspex.telemetry.usage import UsageTotals

__all__ = ["CandidateCache", "DSPyOptimizationResult", "DSPyProgress", "optimize_with_dspy"]


@dataclass(frozen=True, slots=True)
class DSPyOptimizationResult:
    """What a run produced: the optimized program (unwrapped), its score on the valset, the counts and
    usage of the whole run (compile and final evaluation), and the saved version(s)."""

    id: str
    optimizer: str
    options: dict[str, Any]
    program: Any = field(repr=False)
    score: float
    candidates: int
    evaluations: int
    cached: int
    lm_calls: int
    usage: dict[str, dict[str, Any]]
    cost_usd: float | None
    duration_s: float
    version_id: str | None = None
    members: tuple[str, ...] = ()
    unchanged: bool = False  # the optimizer kept the program as it was: version_id is the one it started from
    # Why the run ended before its optimizer did (max_lm_calls reached): then ``program`` is the best
    # candidate so far and ``score`` its mean over ``scored_on`` examples, not a full valset evaluation.
    stopped: str | None = None
    scored_on: int | None = None
    lm_cached: int = 0  # the optimizer's own LM calls (proposals, reflections) answered from the store

    def to_json(self) -> dict[str, Any]:
        return {
            "optimization_id": self.id,
            "optimizer": self.optimizer,
            "options": self.options,
            "score": self.score,
            "candidates": self.candidates,
            "evaluations": self.evaluations,
            "cached": self.cached,
            "lm_calls": self.lm_calls,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "duration_s": self.duration_s,
            "version_id": self.version_id,
            "members": list(self.members),
            "unchanged": self.unchanged,
            "stopped": self.stopped,
            "scored_on": self.scored_on,
            "lm_cached": self.lm_cached,
        }


def _feedback(example: Any, prediction: Any, value: float) -> str:
    """GEPA's textual feedback from a plain metric: what was expected where the prediction differs."""
    inputs = set(example.inputs().keys())
    labels = {k: v for k, v in example.items() if k not in inputs}
    wrong = [
        f"{name}: expected {expected!r}, got {prediction.get(name)!r}"
        for name, expected in labels.items()
        if str(prediction.get(name, "")).strip() != str(expected).strip()
    ]
    if not wrong:
        return f"correct (score {value:.2f})"
    return f"score {value:.2f}; " + "; ".join(wrong)


class _Metric:
    """A DSPy metric from a DSPex one: ``(example, prediction, trace=None, pred_name=None,
    pred_trace=None)``, the five arguments GEPA asks for; scores of candidates go to the tracker."""

    def __init__(self, metric: Metric, tracker: Tracker, *, feedback: bool) -> None:
        self.metric = metric
        self.tracker = tracker
        self.feedback = feedback

    def __call__(
        self, example: Any, prediction: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> Any:
        score = self.metric.score_sync(example, prediction)
        candidate = getattr(prediction, "_dspex_candidate", None)
        if candidate is not None and trace is None and pred_name is None:
            self.tracker.scored(candidate, example_hash(example), score.value)
        if self.feedback:
            text = score.feedback or _feedback(example, prediction, score.value)
            return dspy.Prediction(score=score.value, feedback=text)
        return score.value


def _dataset_hash(examples: Sequence[Any]) -> str:
    return canonical_hash([example_hash(e) for e in examples])


def _build(
    optimizer: str,
    options: Mapping[str, Any],
    metric: _Metric,
    *,
    trainset: Sequence[Any],
    prompt_lm: Any,
    lm: Any,
    seed: int,
    num_threads: int,
    evaluate_with: Callable[[Any], Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The DSPy optimizer object and the keyword arguments of its ``compile``; ``evaluate_with`` (for
    an optimizer whose spec is ``pooled``) swaps its trial evaluations for remote ones."""
    spec = OPTIMIZERS[optimizer]
    init = spec.init_options(options)
    compile_kwargs = spec.compile_options(options)
    accepts_threads = "num_threads" in spec.options and spec.options["num_threads"].where == "init"
    if accepts_threads and init.get("num_threads") is None:
        init["num_threads"] = num_threads
    if optimizer == "bootstrap":
        return dspy.BootstrapFewShot(metric=metric, **init), compile_kwargs
    if optimizer in ("bootstrap_rs", "ensemble"):
        return dspy.BootstrapFewShotWithRandomSearch(metric=metric, **init), compile_kwargs
    if optimizer == "copro":
        threads = spec.dspex_options(options).get("num_threads", num_threads)
        compile_kwargs["eval_kwargs"] = {"num_threads": threads, "display_progress": False}
        return dspy.COPRO(metric=metric, prompt_model=prompt_lm, **init), compile_kwargs
    if optimizer == "miprov2":
        init.setdefault("seed", seed)
        if evaluate_with is not None:
            remote = RemoteMIPROv2(
                metric, evaluate_with=evaluate_with, prompt_model=prompt_lm, task_model=lm, **init
            )
            return remote, compile_kwargs
        return dspy.MIPROv2(metric=metric, prompt_model=prompt_lm, task_model=lm, **init), compile_kwargs
    if optimizer == "simba":
        init.setdefault("bsize", min(32, len(trainset)))
        if init["bsize"] > len(trainset):
            raise ConfigurationError(
                f"simba's bsize {init['bsize']} is larger than the trainset ({len(trainset)} examples); "
                "lower bsize or add examples"
            )
        init.setdefault("num_candidates", 6)
        compile_kwargs.setdefault("seed", seed)
        return dspy.SIMBA(metric=metric, prompt_model=prompt_lm, **init), compile_kwargs
    if optimizer == "gepa":
        if all(init.get(k) is None for k in ("auto", "max_full_evals", "max_metric_calls")):
            init["auto"] = "light"
        init.setdefault("seed", seed)
        return dspy.GEPA(metric=metric, reflection_lm=prompt_lm, **init), compile_kwargs
    raise ConfigurationError(f"optimizer {optimizer!r} has no builder")  # OPTIMIZERS and this agree


def optimize_with_dspy(
    optimizer: str,
    program: Any,
    trainset: Sequence[Any],
    valset: Sequence[Any],
    *,
    metric: MetricLike,
    lm: Any = None,
    prompt_lm: Any = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    num_threads: int = 4,
    cache: EvalCache | None = None,
    db: Any = None,
    optimization_id: str | None = None,
    registry: Any = None,
    program_name: str | None = None,
    parent_id: str | None = None,
    identity: Mapping[str, Any] | None = None,
    on_progress: Callable[[DSPyProgress], None] | None = None,
    should_stop: Callable[[], None] | None = None,
    prices: Any = None,
    max_lm_calls: int | None = None,
    remote: Callable[[Any], Any] | None = None,
) -> DSPyOptimizationResult:
    """Run DSPy's ``optimizer`` (a name of :data:`~dspex.optimize.dspy_optimizers.OPTIMIZERS`) on
    ``program`` (see the module docstring).

    - ``trainset`` / ``valset``: ``dspy.Example`` lists (the valset scores the result, and is the
      optimizers' valset where they take one).
    - ``metric``: a DSPex metric (``exact_match``, ``f1``...); ``lm``: the task LM; ``prompt_lm``: the
      LM proposing instructions / reflecting (default ``lm``).
    - ``cache``: where evaluations are kept (a :class:`~dspex.optimize.cache.StoredCache` to survive a
      restart; default in memory).
    - ``db``: a :class:`~dspex.store.Database` keeping the run in ``optimizations`` under
      ``optimization_id`` (default derived from the inputs, so the same call resumes it).
    - ``registry`` + ``program_name``: save the result as a version in ``optimizing``.
    - ``should_stop``: called before each program call; raises ``OptimizationStopped`` to stop there.
    - ``max_lm_calls``: a hard cap on the LM calls of the run (every process that runs it, the
      optimizer's own proposals and reflections and the final evaluation included). No call starts once
      it would exceed the cap; the optimizer is stopped there and the best candidate scored so far is
      the result (``result.stopped`` says so; ``score`` is its mean over ``scored_on`` examples). A
      run stopped before any candidate was scored is an error saying to raise the cap.
    - ``remote``: candidate -> a :class:`~dspex.optimize.evaluate.RemoteProgram` (``App.optimize_with``
      gives the registered version on a pool with the candidate's state): the program calls run there,
      the metric and the optimizer here (see the module docstring). ``miprov2``: every trial evaluation
      (minibatches, full valset) and the final one, in shards; its bootstrapping call by call. The
      others: the examples of each ``dspy.Evaluate`` (GEPA's valset evaluations and minibatches,
      COPRO's and ``bootstrap_rs``'s scoring) in shards sent when the evaluation starts
      (:class:`~dspex.optimize._remote_dspy.TraceFreeEvaluations`), other calls (SIMBA's
      ``dspy.Parallel``, bootstrapping) one by one. Progress, the evaluation cache and ``max_lm_calls``
      still hold: each example sent reserves one LM call of the cap until its result is counted, so the
      cap holds for a program making one LM call per example (one making more, such as a parse failure's
      retry, may pass it by its extra calls in flight); an evaluation with fewer calls left than
      examples not cached sends that many and then stops the run. A stop request: at
      MIPROv2's next evaluation, or the next program call.
    """
    from dspex.optimize.search import OptimizationStopped

    started = time.perf_counter()
    checked = check_options(optimizer, options)
    if max_lm_calls is not None and (
        not isinstance(max_lm_calls, int) or isinstance(max_lm_calls, bool) or max_lm_calls < 1
    ):
        raise ConfigurationError(f"max_lm_calls must be an integer >= 1 or null, got {max_lm_calls!r}")
    if remote is not None:
        check_pooled(optimizer)
    trainset, valset = list(trainset), list(valset)
    if not trainset or not valset:
        raise ConfigurationError(f"{optimizer} needs a trainset and a valset with at least one example each")
    scorer = as_metric(metric)
    settings = {
        "v": 1,
        "optimizer": optimizer,
        "options": checked,
        "seed": seed,
        "trainset": _dataset_hash(trainset),
        "valset": _dataset_hash(valset),
        **({"identity": dict(identity)} if identity is not None else {}),
    }
    run_id = optimization_id or f"dspy-{optimizer}-{canonical_hash(to_jsonable(settings))[:16]}"
    repo, spent = _start(db, run_id, program_name, optimizer, checked, settings, max_lm_calls)
    usage = UsageTotals(prices=prices)
    cap = None
    if max_lm_calls is not None:
        budget = {"optimizer": optimizer, "options": checked, "max_lm_calls": max_lm_calls}

        def save(total: int) -> None:
            if repo is not None:
                repo.update(run_id, budget={**budget, "lm_calls": total})

        cap = CallCap(max_lm_calls, usage, spent, save if repo is not None else None)
    tracker = Tracker(
        optimizer, cache if cache is not None else MemoryCache(), usage, on_progress, should_stop
    )
    wrapped_metric = _Metric(scorer, tracker, feedback=optimizer == "gepa")
    student = CandidateCache(program.deepcopy(), tracker)
    # The optimizer's own LM (proposals, reflections) behind the same store as the program's calls.
    proposer = None
    if prompt_lm is not None or lm is not None:
        proposer = StoredLM(prompt_lm if prompt_lm is not None else lm, tracker.cache)
    context: dict[str, Any] = {"usage_tracker": usage}
    if lm is not None:
        context["lm"] = lm
    callbacks: list[Any] = []
    if cap is not None:
        callbacks.append(cap)
    if remote is not None:  # program calls go to the pool (MIPROv2's trials: through TrackedEvaluate)
        tracker.remote, tracker.cap, tracker.task_lm = remote, cap, lm
        tracker.concurrency = int(checked.get("num_threads") or num_threads)
    if remote is not None and optimizer != "miprov2":  # the evaluations' examples are sent ahead
        # GEPA reads no trace of its valset evaluations (only of trainset minibatches): those go too.
        trace_free: frozenset[str] = frozenset()
        if optimizer == "gepa":
            trace_free = frozenset(example_hash(e) for e in valset) - {example_hash(e) for e in trainset}
        callbacks.append(
            TraceFreeEvaluations(
                wrapped_metric,
                CandidateCache,
                TRACE_FREE,
                trace_free,
                on_mark=lambda program, devset: program.prefetch(devset),
                on_unmark=lambda program: program.settle(),
                on_traced=lambda program, devset: program.prefetch(devset, traced=True),
            )
        )
    if callbacks:
        context["callbacks"] = [*dspy.settings.get("callbacks", []), *callbacks]
    capped: CapReached | None = None
    stopped_score, scored_on = 0.0, 0
    compiled: Any = None
    members: list[Any] = []
    evaluation = None
    try:
        with dspy.context(**context):
            teleprompter, compile_kwargs = _build(
                optimizer,
                checked,
                wrapped_metric,
                trainset=trainset,
                prompt_lm=proposer,
                lm=lm,
                seed=seed,
                num_threads=num_threads,
                evaluate_with=None
                if remote is None
                else lambda local: TrackedEvaluate(
                    local, remote=remote, tracker=tracker, scorer=scorer, cap=cap
                ),
            )
            if OPTIMIZERS[optimizer].uses_valset:
                compile_kwargs["valset"] = valset
            try:
                compiled = teleprompter.compile(student, trainset=trainset, **compile_kwargs)
            except Stop as stop:
                if not isinstance(stop.stopped, CapReached):
                    raise stop.stopped from None
                capped = stop.stopped
            if capped is None:
                tracker.phase = "evaluate"
                tracker.report(force=True)
                if optimizer == "ensemble":
                    ranked = getattr(compiled, "candidate_programs", None) or [{"program": compiled}]
                    size = int(OPTIMIZERS["ensemble"].dspex_options(checked)["size"])
                    members = [entry["program"] for entry in ranked[:size]]
                    final: Any = dspy.Ensemble(reduce_fn=dspy.majority).compile(members)
                else:
                    final = compiled
                try:
                    scored = final
                    if remote is not None:  # on the pool too: the best candidate's full evaluation is cached
                        if optimizer != "miprov2":  # call by call (the cap reserved per call), cached
                            for program in members or [final]:
                                setattr(program, TRACE_FREE, True)
                        else:
                            scored = remote(unwrap(final))
                    admitted, done = valset, None
                    if remote is not None and optimizer == "miprov2":
                        admitted, done = admit(cap, tracker.cache, scored, valset)
                    finished = False
                    try:
                        evaluation = Evaluator(scorer, concurrency=num_threads, cache=tracker.cache).run(
                            scored, admitted
                        )
                        finished = True
                    finally:
                        if done is not None:
                            done(finished)
                except Stop as stop:
                    if not isinstance(stop.stopped, CapReached):
                        raise stop.stopped from None
                    capped = stop.stopped
            if capped is not None:  # inside the context: a candidate's fingerprint covers its LM
                assert cap is not None
                cap.drain()
                compiled, members, stopped_score, scored_on = _best_so_far(
                    optimizer, program, tracker, capped, compiled
                )
    except OptimizationStopped as exc:
        if repo is not None and exc.cancelled:
            repo.update(run_id, status="cancelled", error=f"cancelled: {exc}")
        raise
    except Exception as exc:
        if repo is not None:
            repo.update(run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if cap is not None:  # however the run ended, what its calls in flight cost is counted
            cap.close()  # and a thread DSPy's executors left running starts no call this attempt won't count
            cap.drain()
            cap.save()
    tracker.phase = "save"
    tracker.report(force=True)
    result_program = unwrap(compiled) if not members else unwrap(members[0])
    member_versions: list[str] = []
    version_id = None
    if registry is not None and program_name is not None:
        note = f"{OPTIMIZERS[optimizer].dspy_class} ({run_id})"
        if capped is not None:
            note += f", stopped at max_lm_calls={max_lm_calls}: the best candidate so far"
        for rank, member in enumerate(members):
            saved = registry.save_version(
                program_name,
                unwrap(member),
                status="optimizing",
                note=f"{note}, ensemble member {rank}",
                parent_id=parent_id,
            )
            member_versions.append(saved.id)
        if member_versions:
            version_id = member_versions[0]
        else:
            version_id = registry.save_version(
                program_name, result_program, status="optimizing", note=note, parent_id=parent_id
            ).id
    progress = tracker.progress()
    result = DSPyOptimizationResult(
        id=run_id,
        optimizer=optimizer,
        options=checked,
        program=result_program if not members else final,
        score=evaluation.score if evaluation is not None else stopped_score,
        candidates=progress.candidates,
        evaluations=progress.evaluations,
        cached=progress.cached,
        lm_calls=usage.calls,
        usage=usage.snapshot(),
        cost_usd=usage.cost_usd,
        duration_s=time.perf_counter() - started,
        version_id=version_id,
        members=tuple(member_versions),
        unchanged=version_id is not None and version_id == parent_id,
        stopped=None
        if capped is None
        else f"{capped} ({usage.calls + spent} LM calls made): {OPTIMIZERS[optimizer].dspy_class} was "
        f"stopped and the best candidate so far (mean {stopped_score:.3f} on {scored_on} examples) kept",
        scored_on=len(valset) if capped is None else scored_on,
        lm_cached=proposer.served if proposer is not None else 0,
    )
    if repo is not None:
        best = {
            "scores": {"quality": result.score},
            **{k: v for k, v in result.to_json().items() if k != "usage"},
        }
        repo.update(
            run_id,
            status="succeeded",
            best=json.loads(json.dumps(to_jsonable(best))),
            result_version_id=version_id,
            error=None,
        )
    return result


def _best_so_far(
    optimizer: str, program: Any, tracker: Tracker, capped: CapReached, compiled: Any
) -> tuple[Any, list[Any], float, int]:
    """After the cap stopped the run: the program to keep (wrapped as the optimizer's results are),
    no ensemble members, and its score over how many examples. The optimizer's own result when it had
    finished (the cap hit its final evaluation), else the best candidate the metric scored."""
    if isinstance(compiled, CandidateCache):
        mean, examples = tracker.score_of(configuration_fingerprint(compiled.inner, dspy.settings.lm))
        if examples:
            return compiled, [], mean, examples
    best = tracker.best()
    if best is None:
        raise ConfigurationError(
            f"{capped} before {OPTIMIZERS[optimizer].dspy_class} scored any candidate (bootstrapping and "
            "proposing come first); raise max_lm_calls"
        )
    state, score, examples = best
    kept = program.deepcopy()
    kept.load_state(state)
    return CandidateCache(kept, tracker), [], score, examples


def _start(
    db: Any,
    run_id: str,
    program_name: str | None,
    optimizer: str,
    options: dict[str, Any],
    settings: dict[str, Any],
    max_lm_calls: int | None = None,
) -> tuple[Any, int]:
    """Create the run's record, or take up the one a previous process left (same inputs required).
    Returns the repository (None without ``db``) and the LM calls earlier processes of the run spent
    (0 for a new run, or a rerun of one that succeeded: a new request)."""
    if db is None:
        return None, 0
    from dspex.store.optimizations import OptimizationRecord, OptimizationRepository

    repo = OptimizationRepository(db)
    described = {"optimizer": optimizer, "options": options}
    budget = (
        {**described, "max_lm_calls": max_lm_calls, "lm_calls": 0} if max_lm_calls is not None else described
    )
    record = OptimizationRecord(
        id=run_id,
        program=program_name,
        space=described,
        objectives=["quality"],
        budget=budget,
        settings=json.loads(json.dumps(to_jsonable(settings))),
    )
    stored, created = repo.create(record)
    if created:
        return repo, 0
    if stored.settings != record.settings:
        raise ConfigurationError(
            f"optimization {run_id!r} exists with another optimizer, options, seed, program or dataset; "
            "resume it with the same ones or pick another optimization_id"
        )
    if max_lm_calls is None:
        repo.update(run_id, status="running", error=None)
        return repo, 0
    spent = 0
    if stored.status != "succeeded":
        spent = int((stored.budget or {}).get("lm_calls") or 0)
    repo.update(run_id, status="running", error=None, budget={**budget, "lm_calls": spent})
    return repo, spent
