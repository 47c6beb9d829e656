"""MIPROv2 with its candidate evaluations on a process pool: the same trials, scores and chosen program as
``dspy.MIPROv2`` in process, on an LM whose answers depend on the instructions and demos."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from pool_programs import PromptAware

from dspex.distributed.prompts import PooledEvaluate, PooledMIPROv2, candidate_state
from dspex.errors import ConfigurationError
from dspex.runtime.app import App
from dspex.settings import Settings


@pytest.fixture
def app(tmp_path: object) -> Iterator[App]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/m.db",
        pools={"general": {"size": 2, "initializer": "pool_programs:prompt_aware"}},
    )
    with App(settings) as app:
        app.programs.register("qa", "pool_programs:build_qa")
        yield app


def _examples(start: int, n: int) -> list[dspy.Example]:
    return [
        dspy.Example(question=f"q{i}", answer=f"answer to q{i}").with_inputs("question")
        for i in range(start, start + n)
    ]


def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


OPTIONS: dict[str, Any] = {
    "auto": None,
    "num_candidates": 3,
    "num_threads": 4,
    "max_bootstrapped_demos": 1,
    "max_labeled_demos": 1,
    "verbose": False,
}
COMPILE: dict[str, Any] = {"num_trials": 6, "minibatch_size": 4, "minibatch_full_eval_steps": 2, "seed": 7}


def _summary(program: Any) -> dict[str, Any]:
    return {
        "score": program.score,
        "candidates": [(c["score"], c["full_eval"]) for c in program.candidate_programs],
        # Each trial's minibatch or full-evaluation score and what it chose (plain values only).
        "trials": {
            k: {name: value for name, value in v.items() if isinstance(value, int | float | str | bool)}
            for k, v in program.trial_logs.items()
        },
        "state": candidate_state(program, program),
    }


def test_mipro_on_a_pool_matches_mipro_in_process(app: App) -> None:
    trainset, valset = _examples(0, 8), _examples(100, 10)
    lm = PromptAware.engine().lm(cache=False)

    with dspy.context(lm=lm):
        in_process = dspy.MIPROv2(_metric, prompt_model=lm, task_model=lm, **OPTIONS).compile(
            app.programs.load("qa"), trainset=trainset, valset=valset, **COMPILE
        )
        pooled = PooledMIPROv2.from_app(
            app, "qa", pool="general", metric=_metric, prompt_model=lm, task_model=lm, **OPTIONS
        ).compile(app.programs.load("qa"), trainset=trainset, valset=valset, **COMPILE)

    expected, got = _summary(in_process), _summary(pooled)
    assert len({score for score, _ in expected["candidates"]}) > 1  # candidates really scored apart
    assert any("mb_score" in t or "full_eval_score" in t for t in expected["trials"].values())
    assert got == expected
    assert app.pools.get("general").status().completed > 0  # the evaluations ran on the workers


def test_a_pooled_evaluation_returns_what_dspy_evaluate_returns(app: App) -> None:
    devset = _examples(0, 12)
    program = app.programs.load("qa")
    program.predict.signature = program.predict.signature.with_instructions("Answer carefully.")
    program.predict.demos = [dspy.Example(question="q1", reasoning="r", answer="answer to q1")]
    lm = PromptAware.engine().lm(cache=False)
    with dspy.context(lm=lm):
        local = dspy.Evaluate(devset=devset, metric=_metric, num_threads=4)(program)
    base = app.programs.load("qa")
    version = app.programs.resolve("qa").id
    remote = PooledEvaluate(
        pool=app.pools.get("general"), name="qa", version_id=version, base=base, devset=devset, metric=_metric
    )(program)
    assert 0 < remote.score == local.score < 100
    assert [(e.question, p.answer, s) for e, p, s in remote.results] == [
        (e.question, p.answer, s) for e, p, s in local.results
    ]
    # The candidate's state went into a copy: the workers' own instance of the version is unchanged.
    with dspy.context(lm=lm):
        plain = dspy.Evaluate(devset=devset, metric=_metric, num_threads=4)(app.programs.load("qa"))
    again = PooledEvaluate(
        pool=app.pools.get("general"), name="qa", version_id=version, base=base, devset=devset, metric=_metric
    )(app.programs.load("qa"))
    assert plain.score != local.score
    assert [p.answer for _, p, _ in again.results] == [p.answer for _, p, _ in plain.results]


def test_what_cannot_cross_is_refused(app: App) -> None:
    base = app.programs.load("qa")
    other = dspy.Predict("question -> answer")
    with pytest.raises(ConfigurationError, match="only instructions and demos may differ"):
        candidate_state(other, base)
    state = candidate_state(base, base)
    assert all(part["lm"] is None for part in state.values())  # no LM settings cross
    lm = PromptAware.engine().lm(cache=False)
    optimizer = PooledMIPROv2.from_app(
        app, "qa", pool="general", metric=_metric, prompt_model=lm, task_model=lm, **OPTIONS
    )
    with pytest.raises(ConfigurationError, match="the student is not program 'qa' version"):
        optimizer.compile(other, trainset=_examples(0, 4), **COMPILE)
