"""``App.optimize_with("qa", "miprov2", pool=...)``: MIPROv2's candidate evaluations on a process pool,
through the normal DSPex run (evaluation cache, progress, record, saved version): the same score, chosen
program, candidates and LM calls as the run in process, on an LM whose answers depend on the
instructions and demos; most of the LM calls run on the workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback
from dspy.utils.callback_context import ACTIVE_CALL_ID
from pool_programs import PromptAware

from dspex.errors import ConfigurationError
from dspex.optimize.dspy_run import DSPyOptimizationResult, DSPyProgress
from dspex.runtime.app import App
from dspex.settings import Settings

OPTIONS: dict[str, Any] = {
    "num_candidates": 3,
    "num_trials": 6,
    "minibatch_size": 4,
    "minibatch_full_eval_steps": 2,
    "max_bootstrapped_demos": 1,
    "max_labeled_demos": 1,
    "num_threads": 4,
}


class _LocalCalls(BaseCallback):  # type: ignore[misc]
    """Counts the LM calls this process makes (an LM call inside a counted one is not counted again):
    a pooled run's other LM calls (``result.lm_calls`` counts them all) were made on the workers."""

    def __init__(self) -> None:
        self.calls = 0
        self._open: set[str] = set()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if ACTIVE_CALL_ID.get() not in self._open:
            self._open.add(call_id)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        # Counted when it ends: a call the run's cap refused (a later callback raised) never started.
        if call_id in self._open:
            self._open.discard(call_id)
            self.calls += 1


def _on_pool(app: App, optimizer: str, **arguments: Any) -> tuple[DSPyOptimizationResult, int]:
    """``app.optimize_with`` on pool ``general``, and the LM calls the workers made."""
    here = _LocalCalls()
    with dspy.context(callbacks=[here]):
        result = app.optimize_with("qa", optimizer, dataset="qa-set", seed=3, pool="general", **arguments)
    return result, result.lm_calls - here.calls


def _app(
    path: Path, engine: Any, routing: dict[str, Any] | None = None, initializer: str = "prompt_aware"
) -> App:
    settings = Settings(
        database_url=f"sqlite:///{path}/m.db",
        home=path / "home",
        pools={"general": {"size": 2, "initializer": f"pool_programs:{initializer}"}},
        **({"routing": routing} if routing is not None else {}),
    )
    app = App(settings, lm=engine.lm(cache=False))
    app.programs.register("qa", "pool_programs:build_qa")
    rows = [
        {"question": f"q{i}", "answer": f"answer to q{i}", "part": "train" if i < 8 else "dev"}
        for i in range(18)
    ]
    app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
    return app


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[App, App, Any]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engine = PromptAware.engine()
    with _app(tmp_path / "a", PromptAware.engine()) as local, _app(tmp_path / "b", engine) as pooled:
        yield local, pooled, engine


def _summary(app: App, result: DSPyOptimizationResult) -> dict[str, Any]:
    assert result.version_id is not None
    state = app.programs.build(app.programs.resolve("qa", result.version_id)).dump_state()
    return {
        "score": result.score,
        "candidates": result.candidates,
        "evaluations": result.evaluations,
        "lm_calls": result.lm_calls,
        "state": {name: {k: v for k, v in part.items() if k != "lm"} for name, part in state.items()},
    }


def test_miprov2_on_a_pool_through_optimize_with_matches_the_run_in_process(
    apps: tuple[App, App, Any],
) -> None:
    local, pooled, engine = apps
    in_process = local.optimize_with("qa", "miprov2", dataset="qa-set", options=OPTIONS, seed=3)
    seen: list[DSPyProgress] = []
    on_pool = pooled.optimize_with(
        "qa", "miprov2", dataset="qa-set", options=OPTIONS, seed=3, pool="general", on_progress=seen.append
    )
    expected, got = _summary(local, in_process), _summary(pooled, on_pool)
    assert 0 < expected["score"] < 1  # candidates really score apart on this LM
    assert got == expected
    status = pooled.pools.get("general").status()
    assert status.completed > 0  # shards ran on the workers
    # The calls this process made itself (bootstrapping, proposals); the rest ran on the workers.
    assert 0 < engine.calls < on_pool.lm_calls
    assert seen[-1].phase == "save"
    assert seen[-1].candidates == on_pool.candidates > 1
    record = pooled.optimizations.get(on_pool.id)
    assert record is not None
    assert record.status == "succeeded"

    # Again: the same run, every evaluation from the evaluation cache, no LM call anywhere.
    before = engine.calls
    again = pooled.optimize_with("qa", "miprov2", dataset="qa-set", options=OPTIONS, seed=3, pool="general")
    assert again.lm_calls == 0
    assert engine.calls == before
    assert again.score == on_pool.score
    assert again.cached > 0


GEPA: dict[str, Any] = {"max_metric_calls": 60, "reflection_minibatch_size": 3, "num_threads": 4}
# One thread: in process, two threads may call the same candidate on the same example before either is
# in the evaluation cache (a call more now and then); so the LM calls compare exactly.
GEPA_1: dict[str, Any] = {**GEPA, "num_threads": 1}


def _reflections(engine: Any) -> list[dict[str, Any]]:
    """What GEPA's reflection calls read (its reflective dataset), from an engine's history."""
    return [dict(c.prompt.inputs) for c in engine.history if "new_instruction" in c.outputs]


def test_gepa_on_a_pool_matches_the_run_in_process_with_every_program_call_on_the_workers(
    tmp_path: Path,
) -> None:
    local_engine, engine = PromptAware.engine(), PromptAware.engine()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _app(tmp_path / "a", local_engine) as local, _app(tmp_path / "b", engine) as pooled:
        in_process = local.optimize_with("qa", "gepa", dataset="qa-set", options=GEPA_1, seed=3)
        on_pool, on_workers = _on_pool(pooled, "gepa", options=GEPA_1)
        expected, got = _summary(local, in_process), _summary(pooled, on_pool)
        assert expected["state"]["predict"]["signature"]["instructions"] == "Answer carefully."  # improved
        assert in_process.candidates > 1
        assert got == expected  # LM calls included
        # Every program call ran on the workers: the valset evaluations (20 calls) and the trainset
        # minibatches whose traces make the reflective dataset, which came back and were replayed here.
        # Only the reflections were made here, and they read the same reflective dataset.
        assert on_workers > 20
        reflections = _reflections(engine)
        assert engine.calls == len(reflections) == on_pool.lm_calls - on_workers > 0
        assert reflections == _reflections(local_engine)


def test_a_parse_failure_on_a_worker_reaches_gepa_s_reflective_dataset_as_in_process(tmp_path: Path) -> None:
    options = {**GEPA_1, "add_format_failure_as_feedback": True}
    local_engine, engine = PromptAware.engine(garbled=True), PromptAware.engine(garbled=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        _app(tmp_path / "a", local_engine, initializer="prompt_aware_garbled") as local,
        _app(tmp_path / "b", engine, initializer="prompt_aware_garbled") as pooled,
    ):
        in_process = local.optimize_with("qa", "gepa", dataset="qa-set", options=options, seed=3)
        on_pool, on_workers = _on_pool(pooled, "gepa", options=options)
        assert _summary(pooled, on_pool) == _summary(local, in_process)
        assert engine.calls == on_pool.lm_calls - on_workers  # every program call on the workers
        reflections = _reflections(engine)
        assert reflections == _reflections(local_engine)
        # The worker's AdapterParseError came back as one, with this process's predictor's signature:
        # DSPy's bootstrap_trace_data made it a FailedPrediction, which GEPA shows the reflection LM.
        failed = [r for r in reflections if "no fields here, garbled" in str(r)]
        assert failed
        assert "Your output failed to parse" in str(failed[0])


SIMBA: dict[str, Any] = {"bsize": 4, "max_steps": 2, "num_candidates": 3, "num_threads": 1}


def test_simba_on_a_pool_matches_the_run_in_process_sampling_with_the_workers_lms(tmp_path: Path) -> None:
    """SIMBA's trajectories sample with per-predictor copies of the task LM (temperature 1.0, a rollout
    id); on this engine a hot sample answers odd questions right, which gives SIMBA the good trajectory
    its demo comes from. The workers apply those settings to their own LM, or the run would differ."""
    engine = PromptAware.engine(sampling=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        _app(tmp_path / "a", PromptAware.engine(sampling=True), initializer="prompt_aware_sampling") as local,
        _app(tmp_path / "b", engine, initializer="prompt_aware_sampling") as pooled,
    ):
        in_process = local.optimize_with("qa", "simba", dataset="qa-set", options=SIMBA, seed=3)
        on_pool, on_workers = _on_pool(pooled, "simba", options=SIMBA)
        expected, got = _summary(local, in_process), _summary(pooled, on_pool)
        assert expected["state"]["predict"]["demos"]  # SIMBA found a demo in a hot trajectory
        assert expected["score"] > 0
        assert got == expected  # LM calls included
        # Trajectories, candidate evaluations and the final evaluation: all on the workers.
        assert on_workers >= on_pool.evaluations > 0
        assert engine.calls == on_pool.lm_calls - on_workers

        # The traced calls were cached as calls in process are (and the final evaluation by the
        # evaluator, whose key does not depend on where it ran): the same run in process, without the
        # pool, replays them all and makes no LM call.
        again = pooled.optimize_with("qa", "simba", dataset="qa-set", options=SIMBA, seed=3)
        assert _summary(pooled, again) | {"lm_calls": 0} == expected | {"lm_calls": 0}
        assert (again.lm_calls, engine.calls) == (0, 0)
        assert again.cached > 0


def test_bootstrap_on_a_pool_matches_the_run_in_process(apps: tuple[App, App, Any]) -> None:
    local, pooled, engine = apps
    options = {"max_bootstrapped_demos": 2, "max_labeled_demos": 1, "max_rounds": 2}
    in_process = local.optimize_with("qa", "bootstrap", dataset="qa-set", options=options, seed=3)
    on_pool, on_workers = _on_pool(pooled, "bootstrap", options=options)
    expected, got = _summary(local, in_process), _summary(pooled, on_pool)
    assert expected["state"]["predict"]["demos"]
    assert got == expected
    assert on_workers == on_pool.lm_calls > 0  # the teacher's traced calls and the final evaluation
    assert engine.calls == 0


OTHERS: dict[str, dict[str, Any]] = {
    "copro": {"breadth": 3, "depth": 2, "num_threads": 4},
    "bootstrap_rs": {"num_candidate_programs": 4, "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "ensemble": {"num_candidate_programs": 4, "max_bootstrapped_demos": 1, "max_labeled_demos": 1, "size": 2},
}


@pytest.mark.parametrize("optimizer", sorted(OTHERS))
def test_copro_and_random_search_score_their_candidates_on_a_pool_as_in_process(
    apps: tuple[App, App, Any], optimizer: str
) -> None:
    local, pooled, engine = apps
    in_process = local.optimize_with("qa", optimizer, dataset="qa-set", options=OTHERS[optimizer], seed=3)
    on_pool, on_workers = _on_pool(pooled, optimizer, options=OTHERS[optimizer])
    expected, got = _summary(local, in_process), _summary(pooled, on_pool)
    assert in_process.candidates > 1
    assert got == expected  # LM calls included
    # Every (candidate, example) scored came from a worker (one LM call each; COPRO's final evaluation on
    # the valset adds its own), in shards, and the bootstrapped demos' traced calls too; only COPRO's
    # proposals ran here.
    assert on_workers >= on_pool.evaluations > 0
    here = on_pool.lm_calls - on_workers
    assert (here > 0) == (engine.calls > 0) == (optimizer == "copro")
    assert 0 < pooled.pools.get("general").status().completed <= on_workers


def test_a_pool_the_optimizer_cannot_use_or_that_does_not_exist_is_refused(
    apps: tuple[App, App, Any],
) -> None:
    _, pooled, _ = apps
    with pytest.raises(
        ConfigurationError, match=r"unknown pool 'genral'; did you mean 'general'\? valid: general"
    ):
        pooled.optimize_with("qa", "miprov2", dataset="qa-set", options=OPTIONS, pool="genral")
    with pytest.raises(ConfigurationError, match=r"unknown optimizer 'simbaa'; did you mean 'simba'\?"):
        pooled.optimize_with("qa", "simbaa", dataset="qa-set", pool="general")
    assert pooled._pools is None or not pooled._pools._pools  # nothing was started for a refused run


@pytest.mark.parametrize("cap", [30, 41, 55])
def test_max_lm_calls_stops_a_pooled_run_with_the_best_candidate_so_far(
    apps: tuple[App, App, Any], cap: int
) -> None:
    _, pooled, _ = apps
    capped = pooled.optimize_with(
        "qa",
        "miprov2",
        dataset="qa-set",
        options=OPTIONS,
        seed=5,
        pool="general",
        max_lm_calls=cap,
    )
    assert capped.stopped is not None
    assert "max_lm_calls" in capped.stopped
    # Each evaluation sends only as many examples not cached as calls are left (one LM call each), then
    # stops the run: exactly at the cap, and the run's record counts the workers' calls.
    assert capped.lm_calls == cap
    record = pooled.optimizations.get(capped.id)
    assert record is not None
    assert record.budget is not None
    assert record.budget["lm_calls"] == capped.lm_calls
    assert capped.scored_on is not None
    assert capped.scored_on > 0
    assert capped.version_id is not None


@pytest.mark.parametrize(
    ("optimizer", "options", "cap"),
    [("gepa", GEPA, 25), ("gepa", GEPA, 7), ("simba", {**SIMBA, "num_threads": 4}, 17)],
)
def test_max_lm_calls_holds_on_a_pool(
    apps: tuple[App, App, Any], optimizer: str, options: dict[str, Any], cap: int
) -> None:
    """Each example sent to the workers reserves its LM call until its result is counted, so the run
    stops at the cap exactly: 7 is inside GEPA's seed valset evaluation (10 examples sent ahead, only 7
    of them go), 25 inside its minibatches, 17 inside SIMBA's trajectories (4 threads at once)."""
    _, pooled, engine = apps
    capped, on_workers = _on_pool(pooled, optimizer, options=options, max_lm_calls=cap)
    assert capped.stopped is not None
    assert capped.stopped.startswith(f"max_lm_calls={cap} reached")
    assert capped.lm_calls == cap
    assert on_workers >= min(cap, 10)
    assert engine.calls == capped.lm_calls - on_workers
    record = pooled.optimizations.get(capped.id)
    assert record is not None
    assert record.budget is not None
    assert record.budget["lm_calls"] == cap


@pytest.mark.parametrize("optimizer", ["miprov2", "copro"])
def test_a_candidate_that_cannot_cross_to_the_pool_ends_the_run_with_that_error(
    apps: tuple[App, App, Any], optimizer: str
) -> None:
    """Not a failed example, nor a candidate scoring 0: DSPy would swallow the error in either."""
    import dspy

    from dspex.optimize import exact_match
    from dspex.optimize.dspy_run import optimize_with_dspy

    def refuse(candidate: Any) -> Any:
        raise ConfigurationError("the candidate's state is not JSON (a test's refusal)")

    examples = [
        dspy.Example(question=f"q{i}", answer=f"answer to q{i}").with_inputs("question") for i in range(12)
    ]
    options = {**OPTIONS, "num_threads": 2} if optimizer == "miprov2" else {"breadth": 2, "depth": 1}
    program = dspy.ChainOfThought("question -> answer")
    with pytest.raises(ConfigurationError, match="a test's refusal"):
        optimize_with_dspy(
            optimizer,
            program,
            examples[:6],
            examples[6:],
            metric=exact_match,
            lm=apps[1].default_lm(program),  # the App's LM, as App.optimize_with passes it
            options=options,
            remote=refuse,
        )


@pytest.mark.parametrize("optimizer", ["miprov2", "gepa"])
def test_a_stop_request_ends_a_pooled_run_at_the_next_evaluation(
    apps: tuple[App, App, Any], optimizer: str
) -> None:
    from dspex.optimize.search import OptimizationStopped

    _, pooled, _ = apps
    pool = pooled.pools.get("general")

    def should_stop() -> None:
        if pool.status().completed > 0:  # once the first evaluation ran on the workers
            raise OptimizationStopped("cancelled by the test", cancelled=True)

    options = OPTIONS if optimizer == "miprov2" else GEPA
    with pytest.raises(OptimizationStopped, match="cancelled by the test"):
        pooled.optimize_with(
            "qa",
            optimizer,
            dataset="qa-set",
            options=options,
            seed=3,
            pool="general",
            should_stop=should_stop,
        )
    # Its first evaluation (the program as given, the seed candidate: 10 examples in 4 or 5 shards sent at
    # once), and nothing after it. A full run sends 16 (MIPROv2) or 8 tasks (GEPA).
    assert 0 < pool.status().completed <= 5
    assert [r.status for r in pooled.optimizations.runs("qa")] == ["cancelled"]


def test_optimizer_jobs_follow_the_routing_rules(tmp_path: Path) -> None:
    from dspex.jobs import Worker, submit_dspy_optimization

    with _app(tmp_path, PromptAware.engine(), routing={"programs": {"qa": "general"}}) as app:
        gepa = submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="gepa", options=GEPA)
        simba = submit_dspy_optimization(
            app, program="qa", dataset="qa-set", optimizer="simba", options={"bsize": 4, "max_steps": 1}
        )
        assert Worker(app, lease_s=5.0, poll_s=0.05).run(stop_when_idle=True) == 2
        results = []
        for job in (gepa, simba):
            done = app.jobs.get(job.id)
            assert done is not None
            assert done.status == "succeeded", done.error
            assert done.result is not None
            results.append(done.result)
        placement = {"target": "pool", "pool": "general", "reason": "[routing] programs.qa"}
        assert [result["placement"] for result in results] == [placement, placement]
        # Their program calls ran there (GEPA's and SIMBA's traced calls included).
        assert app.pools.get("general").status().completed > 0


def test_only_sampling_settings_of_the_task_lm_cross_to_the_workers(apps: tuple[App, App, Any]) -> None:
    """A candidate whose predictor samples with a copy of the task LM differing in allowed numbers has its
    calls on the workers; a copy differing in another setting, or another model, keeps them here."""
    from dspex.distributed.prompts import candidate_on
    from dspex.optimize import exact_match
    from dspex.optimize.dspy_run import optimize_with_dspy

    _, pooled, _ = apps
    version = pooled.programs.resolve("qa", None)
    base = pooled.programs.build(version)
    lm = pooled.default_lm(base)
    remote = candidate_on(pooled.pools.get("general"), "qa", version.id, base)
    trainset, devset = pooled.examples("qa-set")

    def run(predictor_lm: Any) -> tuple[int, int]:
        program = pooled.programs.build(version)
        program.predict.lm = predictor_lm
        here = _LocalCalls()
        with dspy.context(callbacks=[here]):
            result = optimize_with_dspy(
                "bootstrap",
                program,
                trainset,
                devset,
                metric=exact_match,
                lm=lm,
                options={"max_bootstrapped_demos": 1, "max_labeled_demos": 0},
                remote=remote,
            )
        return result.lm_calls, here.calls

    calls, here = run(lm.copy(temperature=0.5, rollout_id=7))
    assert calls > len(devset)
    assert here == 0  # the teacher's calls too, on the workers' own LM copied with those numbers
    for other in (lm.copy(stop=["\n\n"]), PromptAware.engine().lm(name="other", cache=False)):
        calls, here = run(other)
        # The teacher's calls (its predictor keeps that LM) ran here; the final evaluation, of the
        # compiled program (BootstrapFewShot resets its predictors' LMs), on the workers.
        assert here > 0
        assert calls - here == len(devset)


def test_a_worker_refuses_lm_settings_outside_the_allowlist(apps: tuple[App, App, Any]) -> None:
    """Defence in depth: the driver never sends them, and a worker would not apply them if it did."""
    from dspex.pools.remote import PooledProgram, check_sampling

    _, pooled, _ = apps
    version = pooled.programs.resolve("qa", None)
    pool = pooled.pools.get("general")
    for lms, error in [
        ({"context": {"api_base": "http://attacker.example"}}, "'api_base' of the context LM cannot cross"),
        ({"predictors": {"predict": {"model": "openai/gpt-4o"}}}, "'model' of predictor 'predict' cannot"),
        ({"context": {"temperature": "hot"}}, "'temperature' of the context LM must be a finite number"),
        ({"context": {"temperature": float("nan")}}, "must be a finite number"),
        ({"callbacks": {}}, "'context' and 'predictors' only"),
    ]:
        with pytest.raises(ConfigurationError, match=error):
            check_sampling(lms)
        forged = PooledProgram(pool, "qa", version.id, traced=True, lms=lms)  # past with_trace's check
        results = forged.predict_batch([{"question": "q1"}], 1).result()["outcome"]["results"]
        assert results[0]["error"]["type"] == "ConfigurationError"
        assert "prediction" not in results[0]
