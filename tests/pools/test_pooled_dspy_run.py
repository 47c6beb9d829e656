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


def _app(path: Path, engine: Any, routing: dict[str, Any] | None = None) -> App:
    settings = Settings(
        database_url=f"sqlite:///{path}/m.db",
        home=path / "home",
        pools={"general": {"size": 2, "initializer": "pool_programs:prompt_aware"}},
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


def test_gepa_on_a_pool_matches_the_run_in_process_with_its_valset_calls_on_the_workers(
    apps: tuple[App, App, Any],
) -> None:
    local, pooled, engine = apps
    in_process = local.optimize_with("qa", "gepa", dataset="qa-set", options=GEPA, seed=3)
    on_pool, on_workers = _on_pool(pooled, "gepa", options=GEPA)
    expected, got = _summary(local, in_process), _summary(pooled, on_pool)
    assert (
        expected["state"]["predict"]["signature"]["instructions"] == "Answer carefully."
    )  # GEPA improved it
    assert in_process.candidates > 1
    # Not lm_calls: in process too, GEPA's runs differ by a call now and then (two threads calling the
    # same candidate on the same example, both before either is in the evaluation cache).
    expected.pop("lm_calls")
    got.pop("lm_calls")
    assert got == expected
    # The valset evaluations (the seed's and each new candidate's, 10 examples each) ran on the workers,
    # in shards sent when each evaluation started; the trainset minibatches whose traces GEPA reads, and
    # its reflections, here.
    assert on_workers == 20
    assert 0 < pooled.pools.get("general").status().completed < 20
    assert engine.calls == on_pool.lm_calls - 20


OTHERS: dict[str, dict[str, Any]] = {
    "copro": {"breadth": 3, "depth": 2, "num_threads": 4},
    "bootstrap_rs": {"num_candidate_programs": 4, "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "ensemble": {"num_candidate_programs": 4, "max_bootstrapped_demos": 1, "max_labeled_demos": 1, "size": 2},
}


@pytest.mark.parametrize("optimizer", sorted(OTHERS))
def test_copro_and_random_search_score_their_candidates_on_a_pool_as_in_process(
    apps: tuple[App, App, Any], optimizer: str
) -> None:
    local, pooled, _ = apps
    in_process = local.optimize_with("qa", optimizer, dataset="qa-set", options=OTHERS[optimizer], seed=3)
    on_pool, on_workers = _on_pool(pooled, optimizer, options=OTHERS[optimizer])
    expected, got = _summary(local, in_process), _summary(pooled, on_pool)
    assert in_process.candidates > 1
    assert got == expected  # LM calls included
    # Every (candidate, example) scored came from a worker (one LM call each; COPRO's final evaluation on
    # the valset adds its own), in shards; bootstrapping demos (traces) and proposing ran here.
    assert on_workers >= on_pool.evaluations > 0
    assert 0 < on_pool.lm_calls - on_workers < on_workers
    assert 0 < pooled.pools.get("general").status().completed < on_workers


def test_a_pool_the_optimizer_cannot_use_or_that_does_not_exist_is_refused(
    apps: tuple[App, App, Any],
) -> None:
    _, pooled, _ = apps
    with pytest.raises(
        ConfigurationError, match=r"unknown pool 'genral'; did you mean 'general'\? valid: general"
    ):
        pooled.optimize_with("qa", "miprov2", dataset="qa-set", options=OPTIONS, pool="genral")
    with pytest.raises(
        ConfigurationError,
        match=r"simba cannot evaluate its candidates on a pool.*serve bootstrap_rs, ensemble, copro, miprov2, gepa",
    ):
        pooled.optimize_with("qa", "simba", dataset="qa-set", pool="general")
    assert pooled._pools is None or not pooled._pools._pools  # nothing was started for a refused run


def test_max_lm_calls_stops_a_pooled_run_with_the_best_candidate_so_far(apps: tuple[App, App, Any]) -> None:
    _, pooled, _ = apps
    cap = 30
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
    # Checked before each evaluation: past the cap by at most the evaluation in flight (10 examples, one
    # LM call each), and the run's record counts the workers' calls.
    assert cap <= capped.lm_calls <= cap + 10
    record = pooled.optimizations.get(capped.id)
    assert record is not None
    assert record.budget is not None
    assert record.budget["lm_calls"] == capped.lm_calls
    assert capped.scored_on is not None
    assert capped.scored_on > 0
    assert capped.version_id is not None


def test_max_lm_calls_stops_a_pooled_gepa_run_counting_the_workers_calls(apps: tuple[App, App, Any]) -> None:
    _, pooled, engine = apps
    cap = 25  # past the seed's valset evaluation on the workers (10 calls), within the minibatches
    capped, on_workers = _on_pool(pooled, "gepa", options=GEPA, max_lm_calls=cap)
    assert capped.stopped is not None
    assert capped.stopped.startswith("max_lm_calls=25 reached")
    # Checked before each call here and each evaluation sent to the pool: past the cap by at most one
    # evaluation (the valset: 10 examples, one LM call each) or the calls in flight on 4 threads.
    assert cap <= capped.lm_calls <= cap + 10
    assert on_workers >= 10  # the seed's valset evaluation at least
    assert engine.calls == capped.lm_calls - on_workers


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


def test_optimizer_jobs_follow_the_routing_rules_when_they_can(tmp_path: Path) -> None:
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
        gepa_result, simba_result = results
        assert gepa_result["placement"] == {
            "target": "pool",
            "pool": "general",
            "reason": "[routing] programs.qa",
        }
        assert simba_result["placement"]["target"] == "inline"
        assert "simba evaluates its candidates in process" in simba_result["placement"]["reason"]
        # GEPA's valset evaluations ran there (the seed's at least).
        assert app.pools.get("general").status().completed > 0
