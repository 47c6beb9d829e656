"""The holistic optimizer on the simulated LM server, whose answer quality is a known formula."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import dspy
import optuna
import pytest

from dspex import ConfigurationError
from dspex.lm.pricing import Price, Prices
from dspex.optimize import exact_match
from dspex.optimize.search import HolisticOptimizer, OptimizationStopped, Pruning, TrialProgress
from dspex.programs.registry import ProgramRegistry
from dspex.store import open_database
from dspex.store.optimizations import OptimizationRepository
from dspex.testing.server import SimServer
from dspex.testing.simtask import DEFAULT_PROFILES
from dspex.variables import Constraint, Variable, VariableSpace, bind

MODELS = ("openai/sim-small", "openai/sim-large")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(latency_scale=0.0, task_size=120) as server:
        yield server


@pytest.fixture(scope="module")
def lms(sim: SimServer) -> dict[str, Any]:
    return {m: sim.lm(m.split("/")[1]) for m in MODELS}


def _program(sim: SimServer) -> dspy.Predict:
    program = dspy.Predict("question -> answer")
    program.demos = sim.task.examples()[:4]
    return program


def _devset(sim: SimServer, n: int = 30) -> list[dspy.Example]:
    return sim.task.examples()[40 : 40 + n]


def _space(**extra: Any) -> VariableSpace:
    return VariableSpace(
        [Variable.model("model", MODELS), Variable.module_type("module", ["predict", "chain_of_thought"])],
        **extra,
    )


BINDINGS = [bind.model("model"), bind.module_type("module", at="")]


def test_finds_the_best_configuration_and_reuses_evaluations(sim: SimServer, lms: dict[str, Any]) -> None:
    devset = _devset(sim)
    optimizer = HolisticOptimizer(_space(), BINDINGS, exact_match, n_trials=10, pruning=False, lms=lms)
    result = optimizer.optimize(_program(sim), devset)
    assert result.best_configuration == {"model": "openai/sim-large", "module": "chain_of_thought"}
    assert result.finished == 10
    assert len(result.trials) == 10
    # Four configurations exist; repeats are served by the evaluation cache.
    assert result.lm_calls <= 4 * len(devset)
    assert sum(t.lm_calls == 0 for t in result.trials) >= 6
    assert result.pareto == (result.best,)
    assert {t.number for t in result.trials} == set(range(10))


def test_conditional_leaves_are_suggested_only_when_active(sim: SimServer, lms: dict[str, Any]) -> None:
    space = VariableSpace(
        [
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.int("demos", 0, 4, active_when={"module": ["chain_of_thought"]}),
        ]
    )
    optimizer = HolisticOptimizer(
        space,
        [bind.module_type("module", at=""), bind.demos("demos")],
        exact_match,
        n_trials=12,
        pruning=False,
    )
    result = HolisticOptimizer(
        space, optimizer.bindings, exact_match, n_trials=12, pruning=False, lm=lms[MODELS[1]]
    ).optimize(_program(sim), _devset(sim, 10))
    modules = set()
    for trial in result.trials:
        values = trial.params["values"]
        modules.add(values["module"])
        assert ("demos" in values) == (values["module"] == "chain_of_thought")
        assert trial.configuration == values
    assert modules == {"predict", "chain_of_thought"}


def test_constraint_violations_fail_and_do_not_count(sim: SimServer, lms: dict[str, Any]) -> None:
    space = _space(
        constraints=[
            Constraint(
                "no_small_cot",
                lambda c: not (c["model"] == "openai/sim-small" and c["module"] == "chain_of_thought"),
                "the small model cannot reason",
            )
        ]
    )
    # Seeded random sampling over the 4 points draws the forbidden one among the first trials.
    sampler = optuna.samplers.RandomSampler(seed=0)
    optimizer = HolisticOptimizer(
        space, BINDINGS, exact_match, n_trials=8, pruning=False, lms=lms, sampler=sampler
    )
    result = optimizer.optimize(_program(sim), _devset(sim, 10))
    failed = [t for t in result.trials if t.state == "failed"]
    assert result.finished == 8
    assert failed
    assert len(result.trials) == 8 + len(failed)
    assert all("no_small_cot" in (t.error or "") and t.configuration is None for t in failed)
    assert all(
        t.configuration != {"model": "openai/sim-small", "module": "chain_of_thought"}
        for t in result.trials
        if t.state == "complete"
    )


def test_multi_objective_gives_a_pareto_front(sim: SimServer, lms: dict[str, Any]) -> None:
    prices = Prices({p.name: Price(p.input_price, p.output_price) for p in DEFAULT_PROFILES.values()})
    optimizer = HolisticOptimizer(
        _space(), BINDINGS, exact_match, objectives=["cost", "quality"], n_trials=10, lms=lms, prices=prices
    )
    result = optimizer.optimize(_program(sim), _devset(sim, 12))
    assert result.objectives == ("quality", "cost")
    complete = [t for t in result.trials if t.state == "complete"]
    assert all(t.scores is not None and t.scores["cost"] > 0 for t in complete)
    front = {t.configuration_id for t in result.pareto}

    def dominates(a: Any, b: Any) -> bool:
        qa, ca, qb, cb = a.scores["quality"], a.scores["cost"], b.scores["quality"], b.scores["cost"]
        return qa >= qb and ca <= cb and (qa > qb or ca < cb)

    for t in complete:
        dominated = any(dominates(o, t) for o in complete)
        assert (t.configuration_id in front) == (not dominated)
    models = {t.configuration["model"] for t in result.pareto if t.configuration}
    assert models == {"openai/sim-small", "openai/sim-large"}  # cheap-and-weak and dear-and-strong
    assert result.best.scores == max(
        (t.scores for t in result.pareto if t.scores), key=lambda s: s["quality"]
    )


def test_pruning_stops_weak_trials_on_growing_minibatches(sim: SimServer, lms: dict[str, Any]) -> None:
    space = VariableSpace(
        [
            Variable.model("model", MODELS),
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.float("temperature", 0.0, 1.5, step=0.1),
        ]
    )
    devset = _devset(sim, 40)
    optimizer = HolisticOptimizer(
        space,
        [*BINDINGS, bind.temperature("temperature")],
        exact_match,
        n_trials=20,
        lms=lms,
        pruning=Pruning(min_examples=5, growth=2),
    )
    result = optimizer.optimize(_program(sim), devset)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned
    for t in pruned:
        assert set(t.intermediate) <= {5, 10, 20}
        assert t.scores is None
    for t in result.trials:
        if t.state == "complete":
            assert set(t.intermediate) == {5, 10, 20, 40}
    assert result.lm_calls < result.finished * len(devset)
    assert Pruning(min_examples=5, growth=2).steps(40) == [5, 10, 20, 40]


def test_start_up_trials_are_scored_side_by_side_before_any_is_judged(
    sim: SimServer, lms: dict[str, Any]
) -> None:
    space = VariableSpace(
        [
            Variable.model("model", MODELS),
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.float("temperature", 0.0, 1.5, step=0.1),
        ]
    )
    devset = _devset(sim, 40)

    def run() -> Any:
        optimizer = HolisticOptimizer(
            space,
            [*BINDINGS, bind.temperature("temperature")],
            exact_match,
            n_trials=8,
            lms=lms,
            pruning=Pruning(min_examples=5, growth=2),
        )
        return optimizer.optimize(_program(sim), devset)

    result = run()
    assert result.finished == 8
    # Nothing had completed, so the first growth ** 2 trials form one bracket: all four were open
    # together, and none was judged before every one of them had its first-minibatch score.
    bracket = result.trials[:4]
    assert max(t.started_at for t in bracket) < min(t.finished_at for t in bracket if t.finished_at)
    assert all(5 in t.intermediate for t in bracket)
    # Rung by rung (5, 10, 20 examples), the top half of the scores go on (ties included, at least the
    # best one: Optuna's rule); what passes the last rung is evaluated on all 40.
    alive = list(bracket)
    for size, following in ((5, 10), (10, 20), (20, 40)):
        scores = sorted((t.intermediate[size] for t in alive), reverse=True)
        cut = scores[max(0, len(scores) // 2 - 1)]
        passed = [t for t in alive if t.intermediate[size] >= cut]
        assert {t.number for t in bracket if following in t.intermediate} == {t.number for t in passed}
        alive = passed
    complete = [t for t in bracket if t.state == "complete"]
    assert complete
    assert complete == alive
    assert all(t.state == "pruned" for t in bracket if t not in complete)
    # After the first complete trial, trials run one at a time again.
    later = result.trials[4:]
    for a, b in itertools.pairwise(later):
        assert a.finished_at is not None
        assert a.finished_at <= b.started_at
    # Same seed, same run.
    again = run()
    assert [(t.params["values"], t.state, t.intermediate, t.lm_calls) for t in again.trials] == [
        (t.params["values"], t.state, t.intermediate, t.lm_calls) for t in result.trials
    ]


def test_a_stop_inside_the_start_up_bracket_leaves_no_trial_running_and_resumes_exactly(
    sim: SimServer, lms: dict[str, Any], tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'dspex.db'}"
    space = VariableSpace(
        [Variable.model("model", MODELS), Variable.float("temperature", 0.0, 1.5, step=0.1)]
    )
    bindings = [bind.model("model"), bind.temperature("temperature")]

    def optimizer() -> HolisticOptimizer:
        return HolisticOptimizer(
            space, bindings, exact_match, n_trials=6, lms=lms, pruning=Pruning(min_examples=5, growth=2)
        )

    def stop_after_the_first(progress: TrialProgress) -> None:
        raise OptimizationStopped("worker released", cancelled=False)

    with pytest.raises(OptimizationStopped):
        optimizer().optimize(
            _program(sim), _devset(sim, 20), db=url, optimization_id="bracket", on_trial=stop_after_the_first
        )
    db = open_database(url)
    repo = OptimizationRepository(db)
    trials = repo.trials("bracket")
    assert len(trials) == 4  # the bracket was open: one ended and stopped the run, three were cut off
    assert not [t for t in trials if t.state == "running"]
    cut = [t for t in trials if t.state == "failed"]
    assert len(cut) == 3
    assert all("stopped while this trial was open" in (t.error or "") for t in cut)
    assert all(t.lm_calls > 0 and 5 in t.intermediate for t in cut)  # scored on the first minibatch
    assert repo.get("bracket").status == "running"
    resumed = optimizer().optimize(_program(sim), _devset(sim, 20), db=url, optimization_id="bracket")
    assert resumed.finished == 6
    assert [t.number for t in resumed.trials] == list(range(len(resumed.trials)))
    db.dispose()


def test_final_stage_and_new_version_in_optimizing(sim: SimServer, tmp_path: Any) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'dspex.db'}")
    registry = ProgramRegistry(db)
    registry.register("qa", {"module": "predict", "signature": "question -> answer"})
    space = VariableSpace([Variable.float("temperature", 0.0, 1.5, step=0.5)])
    train = sim.task.examples()[:6]
    optimizer = HolisticOptimizer(
        space,
        [bind.temperature("temperature")],
        exact_match,
        n_trials=4,
        pruning=False,
        lm=sim.lm("sim-large"),
        final_stage=dspy.BootstrapFewShot(metric=exact_match, max_bootstrapped_demos=2, max_labeled_demos=0),
    )
    result = optimizer.optimize(
        registry.load("qa"), _devset(sim, 10), trainset=train, db=db, registry=registry, program_name="qa"
    )
    assert result.version_id is not None
    assert result.final_score is not None
    assert result.final_lm_calls > 0
    version = registry.version(result.version_id)
    assert version.status == "optimizing"
    assert version.variables == result.best.configuration
    demos = result.program.demos
    assert 1 <= len(demos) <= 2
    stored = OptimizationRepository(db).get(result.id)
    assert stored.status == "succeeded"
    assert stored.result_version_id == version.id
    assert stored.best is not None
    assert stored.best["configuration"] == result.best.configuration
    db.dispose()


def test_resume_in_process_continues_to_the_requested_count(
    sim: SimServer, lms: dict[str, Any], tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'dspex.db'}"
    devset = _devset(sim, 10)
    first = HolisticOptimizer(_space(), BINDINGS, exact_match, n_trials=3, pruning=False, lms=lms)
    result = first.optimize(_program(sim), devset, db=url, optimization_id="study")
    assert result.finished == 3
    second = HolisticOptimizer(_space(), BINDINGS, exact_match, n_trials=7, pruning=False, lms=lms)
    resumed = second.optimize(_program(sim), devset, db=url, optimization_id="study")
    assert resumed.finished == 7
    assert [t.number for t in resumed.trials] == list(range(7))
    assert [t.params for t in resumed.trials[:3]] == [t.params for t in result.trials]
    other = HolisticOptimizer(_space(), BINDINGS, exact_match, objectives=["quality", "latency"], lms=lms)
    with pytest.raises(ConfigurationError, match="exists with another space or objectives"):
        other.optimize(_program(sim), devset, db=url, optimization_id="study")


def test_bad_inputs_are_clear_errors(sim: SimServer) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'quality'"):
        HolisticOptimizer(_space(), BINDINGS, exact_match, objectives=["qualty"])
    with pytest.raises(ConfigurationError, match="must include 'quality'"):
        HolisticOptimizer(_space(), BINDINGS, exact_match, objectives=["cost"])
    with pytest.raises(ConfigurationError, match="pruning needs a single objective"):
        HolisticOptimizer(_space(), BINDINGS, exact_match, objectives=["quality", "cost"], pruning=Pruning())
    with pytest.raises(ConfigurationError, match="a binding names"):
        HolisticOptimizer(_space(), [bind.temperature("temp")], exact_match)
    with pytest.raises(ConfigurationError, match="n_trials must be >= 1"):
        HolisticOptimizer(_space(), BINDINGS, exact_match, n_trials=0)
    optimizer = HolisticOptimizer(_space(), BINDINGS, exact_match)
    with pytest.raises(ConfigurationError, match="the devset is empty"):
        optimizer.optimize(_program(sim), [])
    with pytest.raises(ConfigurationError, match="pass both registry= and program_name="):
        optimizer.optimize(_program(sim), _devset(sim, 2), program_name="qa")
    with pytest.raises(ConfigurationError, match=r"Pruning\.growth"):
        Pruning(growth=1)
