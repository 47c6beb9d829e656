"""BootstrapFewShot compiles a pipeline offline, and the compiled pipeline scores higher on the simulated task.

The simulated server answers a task question right with a probability that grows with the number of demos
in the prompt (``expected_accuracy``), and whether one answer is right is a deterministic hash of the
question and the settings. So the test can predict both scores exactly, and the gain it asserts is many
standard deviations wide for a devset of this size (the realised draws on these 400 questions give
0.670 -> 0.735, checked against the simulator's own prediction), not luck.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspex.pipeline import Pipeline, step
from dspex.testing.server import SimServer
from dspex.testing.simtask import answer_question, expected_accuracy, get_profile, load_task

MODEL, TEMPERATURE = "sim-medium", 0.5  # the model's best temperature; 6 demos add 0.15 accuracy
TASK_SIZE, TRAIN, DEV = 500, slice(0, 16), slice(100, 500)
MAX_BOOTSTRAPPED, MAX_LABELED = 4, 6  # 4 bootstrapped traces + 2 labeled examples = 6 demos


def _normalise(raw_answer: str) -> str:
    return raw_answer.strip().rstrip(".").lower()


def _build() -> Pipeline:
    return Pipeline(
        [
            step(dspy.Predict("question -> answer"), name="qa", outputs={"answer": "raw_answer"}),
            step(_normalise, name="normalise", outputs="answer"),
        ],
        name="qa_pipeline",
    )


def _exact_match(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    return bool(_normalise(example.answer) == prediction.answer)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(latency_scale=0, task_size=TASK_SIZE) as server:
        yield server


def _score(program: Pipeline, devset: list[dspy.Example]) -> float:
    evaluate = dspy.Evaluate(devset=devset, metric=_exact_match, num_threads=8, display_progress=False)
    return float(evaluate(program).score) / 100


def _predicted(devset: list[dspy.Example], demos: int) -> float:
    """The score the simulator's formula gives these exact questions with ``demos`` demos in the prompt."""
    task, profile = load_task(TASK_SIZE), get_profile(MODEL)
    right = 0
    for example in devset:
        hit = answer_question(
            task, example.question, profile, temperature=TEMPERATURE, reasoning=False, demos=demos
        )
        assert hit is not None
        right += hit[2]
    return right / len(devset)


def test_bootstrap_few_shot_compiles_a_pipeline_that_scores_higher(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    examples = load_task(TASK_SIZE).examples()
    trainset, devset = examples[TRAIN], examples[DEV]
    demos = min(MAX_LABELED, get_profile(MODEL).max_demos)
    gain = expected_accuracy(MODEL, TEMPERATURE, demos=demos) - expected_accuracy(MODEL, TEMPERATURE)
    assert gain == pytest.approx(0.15)
    noise = math.sqrt(2 * 0.25 / len(devset))  # a generous bound on the sd of the difference of two scores
    assert gain > 4 * noise

    uncompiled = _build()
    with dspy.context(lm=sim.lm(MODEL, temperature=TEMPERATURE)):
        before = _score(uncompiled, devset)
        optimizer = dspy.BootstrapFewShot(
            metric=_exact_match, max_bootstrapped_demos=MAX_BOOTSTRAPPED, max_labeled_demos=MAX_LABELED
        )
        compiled = optimizer.compile(_build(), trainset=trainset)
        after = _score(compiled, devset)

    # The optimizer tuned the predictor inside the pipeline: bootstrapped traces plus labeled examples.
    [(name, predictor)] = compiled.named_predictors()
    assert name == "steps[0].module"
    assert len(predictor.demos) == demos
    assert sum(bool(d.get("augmented")) for d in predictor.demos) == MAX_BOOTSTRAPPED
    assert all(not p.demos for _, p in uncompiled.named_predictors())
    assert isinstance(compiled, Pipeline)
    assert compiled is not uncompiled

    # The scores are exactly what the simulator predicts for these questions, and the gain is real.
    assert before == pytest.approx(_predicted(devset, demos=0))
    assert after == pytest.approx(_predicted(devset, demos=demos))
    print(f"exact match on {len(devset)} held-out questions: uncompiled {before:.3f}, compiled {after:.3f}")
    assert after > before  # 0.670 -> 0.735 on these 400 questions (formula: 0.60 -> 0.75)
