"""The simulated task and model profiles: deterministic, with a known optimum (no HTTP here)."""

from __future__ import annotations

import re

import pytest

from dspex.errors import ConfigurationError
from dspex.testing._prompt import read_prompt
from dspex.testing.simtask import (
    DEFAULT_PROFILES,
    ModelProfile,
    answer_prompt,
    answer_question,
    cost_usd,
    expected_accuracy,
    get_profile,
    load_task,
    optimum,
    wrong_answer,
)


def test_task_is_deterministic_distinct_and_mixed() -> None:
    task = load_task(300, seed=3)
    assert task == load_task(300, seed=3)
    assert task != load_task(300, seed=4)
    assert len(task) == 300
    assert len({ex.question for ex in task.items}) == 300
    kinds = {ex.kind for ex in task.items}
    assert kinds == {"arithmetic", "capital"}
    assert task.lookup("  " + task.items[5].question + "\n") == task.items[5]
    assert task.lookup("What is the meaning of life?") is None


def test_gold_answers_are_right() -> None:
    for ex in load_task(200).items:
        if ex.kind == "arithmetic":
            numbers = [int(n) for n in re.findall(r"\d+", ex.question)]
            a = numbers[0]
            expected = {"gets": a + numbers[-1], "gives": a - numbers[-1], "doubles": 2 * a}
            verb = next(v for v in expected if v in ex.question)
            assert ex.answer == str(expected[verb])
        else:
            assert ex.answer in ex.rationale


def test_examples_and_dicts() -> None:
    task = load_task(10)
    examples = task.examples()
    assert [e.answer for e in examples] == [d["answer"] for d in task.dicts()]
    assert set(examples[0].inputs().keys()) == {"question"}
    assert set(examples[0].labels().keys()) == {"answer"}


def test_task_size_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="task size"):
        load_task(0)


def test_wrong_answers_are_plausible_and_wrong() -> None:
    for ex in load_task(100).items:
        wrong = wrong_answer(ex, "salt")
        assert wrong != ex.answer
        if ex.kind == "arithmetic":
            assert 0 < abs(int(wrong) - int(ex.answer)) <= 9
            assert int(wrong) >= 0


def test_expected_accuracy_follows_the_profile() -> None:
    small = get_profile("sim-small")
    assert expected_accuracy("sim-small", temperature=small.best_temperature) == small.base_accuracy
    # reasoning and demos help, demos up to the cap only; distance from the best temperature hurts
    base = expected_accuracy("sim-medium", 0.5)
    assert expected_accuracy("sim-medium", 0.5, reasoning=True) > base
    assert expected_accuracy("sim-medium", 0.5, demos=2) > base
    assert expected_accuracy("sim-medium", 0.5, demos=6) == expected_accuracy("sim-medium", 0.5, demos=50)
    assert expected_accuracy("sim-medium", 1.5) < expected_accuracy("sim-medium", 1.0) < base
    # no temperature means the OpenAI default, 1.0; temperatures count to one decimal
    assert expected_accuracy("sim-large") == expected_accuracy("sim-large", 1.0)
    assert expected_accuracy("sim-large", 0.71) == expected_accuracy("sim-large", 0.7)
    for t in (0.0, 0.5, 1.0):
        ordered = [expected_accuracy(m, t) for m in ("sim-small", "sim-medium", "sim-large")]
        assert ordered == sorted(ordered)
    assert ModelProfile("x", 0.99, reasoning_bonus=0.5).accuracy(1.0, True, 0) == 0.98  # clipped


def test_optimum_is_the_grid_maximum_with_unique_tie_breaks() -> None:
    best = optimum()
    assert (best.model, best.temperature, best.reasoning) == ("sim-large", 0.7, True)
    assert best.accuracy == 0.98
    assert best.demos == 8  # 0.78 + 0.08 + 8 * 0.015 reaches the 0.98 ceiling exactly at 8
    small = optimum(models=["sim-small"])
    assert small == optimum(models=["sim-small"], demos=range(0, 20))  # capped: fewer demos win the tie
    assert (small.temperature, small.reasoning, small.demos) == (0.3, True, 4)
    assert small.accuracy == pytest.approx(0.40 + 0.10 + 4 * 0.03)
    # a cost-aware objective moves the optimum to a cheaper model: 0.87 - 0.10 beats 0.98 - 0.60
    cheap = optimum(key=lambda s: s.accuracy - 0.05 * get_profile(s.model).output_price)
    assert (cheap.model, cheap.temperature, cheap.reasoning, cheap.demos) == ("sim-medium", 0.5, True, 6)
    with pytest.raises(ConfigurationError, match="at least one"):
        optimum(models=[])


def test_cost_and_unknown_models() -> None:
    assert cost_usd("sim-large", 1_000_000, 1_000_000) == pytest.approx(15.0)
    assert cost_usd("openai/sim-small", 2_000, 500) == pytest.approx((2_000 * 0.10 + 500 * 0.40) / 1e6)
    with pytest.raises(ConfigurationError, match=r"did you mean 'sim-medium'\?") as info:
        get_profile("sim-medum")
    assert "sim-large, sim-medium, sim-small" in str(info.value)
    with pytest.raises(ConfigurationError, match="base_accuracy"):
        ModelProfile("bad", 1.5)


@pytest.mark.parametrize("model", list(DEFAULT_PROFILES))
@pytest.mark.parametrize(("temperature", "reasoning", "demos"), [(None, False, 0), (0.3, True, 3)])
def test_draws_match_expected_accuracy(
    model: str, temperature: float | None, reasoning: bool, demos: int
) -> None:
    task = load_task(1000)
    profile = get_profile(model)
    results = [
        answer_question(task, ex.question, profile, temperature=temperature, reasoning=reasoning, demos=demos)
        for ex in task.items
    ]
    assert all(r is not None for r in results)
    rate = sum(r[2] for r in results if r is not None) / len(results)
    # 1000 Bernoulli draws: 4 standard deviations is at most 0.064
    assert rate == pytest.approx(expected_accuracy(model, temperature, reasoning, demos), abs=0.064)
    again = answer_question(task, task.items[0].question, profile, temperature=temperature, reasoning=reasoning,
                            demos=demos)  # fmt: skip
    assert again == results[0]


SYSTEM = """Your input fields are:
1. `question` (str):
Your output fields are:
1. `reasoning` (str):
2. `answer` (int):
3. `confidence` (float):
All interactions will be structured in the following way, with the appropriate values filled in.

[[ ## question ## ]]
{question}

[[ ## reasoning ## ]]
{reasoning}

[[ ## answer ## ]]
{answer}        # note: the value you produce must be a single int value

[[ ## confidence ## ]]
{confidence}

[[ ## completed ## ]]
In adhering to this structure, your objective is:
        Given the fields `question`, produce the fields `reasoning`, `answer`, `confidence`."""


def test_answer_prompt_fills_every_field_in_the_adapter_format() -> None:
    task = load_task(300)
    ex = next(e for e in task.items if e.kind == "arithmetic")
    turns = [
        ("user", f"[[ ## question ## ]]\n{ex.question}\n\nRespond with the corresponding output fields.")
    ]
    prompt = read_prompt(SYSTEM, turns)
    large = get_profile("sim-large")
    answers = [answer_prompt(task, prompt, turns, large, temperature=0.7, seed=s) for s in range(20)]
    assert {a.question for a in answers} == {ex.question}
    right = next(a for a in answers if a.correct)
    assert f"[[ ## answer ## ]]\n{ex.answer}\n" in right.text
    assert f"[[ ## reasoning ## ]]\n{ex.rationale}\n" in right.text
    assert "[[ ## confidence ## ]]\n0.0\n" in right.text
    assert right.text.endswith("[[ ## completed ## ]]")

    other = [
        (
            "user",
            "[[ ## question ## ]]\nWhy is the sky blue?\n\nRespond with the corresponding output fields.",
        )
    ]
    generic = answer_prompt(task, read_prompt(SYSTEM, other), other, large, temperature=None)
    assert (generic.question, generic.correct) == (None, None)
    assert "[[ ## answer ## ]]\n0\n" in generic.text  # an int field outside the task gets a typed default

    plain = answer_prompt(task, read_prompt("", [("user", ex.question)]), [("user", ex.question)], large,
                          temperature=0.7)  # fmt: skip
    assert plain.question == ex.question
    assert plain.text in {ex.answer, wrong_answer(ex, 0, "sim-large", 0.7, False, 0, 0)}
