from __future__ import annotations

import pickle
from typing import Any

import pytest

from dspex import ConfigurationError
from dspex.variables.core import Condition, Variable
from dspex.variables.kinds import (
    ChoiceVariable,
    CompositeVariable,
    FloatVariable,
    IntVariable,
    ModelVariable,
    ModuleTypeVariable,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Variable.float("t", 1.0, 1.0), r"low \(1.0\) must be less than high \(1.0\)"),
        (lambda: Variable.float("t", 0.0, float("inf")), "high must be a finite number"),
        (lambda: Variable.float("t", 0.0, 1.0, log=True), "a log scale needs low > 0"),
        (lambda: Variable.float("t", 0.1, 1.0, log=True, step=0.1), "either log=True or a step"),
        (lambda: Variable.float("t", 0.0, 1.0, step=0.3), "step 0.3 does not divide the range"),
        (lambda: Variable.float("t", 0.0, 1.0, step=-0.1), "step must be a positive number"),
        (lambda: Variable.float("t", 0.0, 1.0, default=2), "default 2 of variable 't' is not a float in"),
        (lambda: Variable.float("2t", 0.0, 1.0), "variable name '2t' is not an identifier"),
        (lambda: Variable.int("n", 5, 1), r"low \(5\) must be less than high \(1\)"),
        (lambda: Variable.int("n", 0, 1.5), "high must be an integer"),  # type: ignore[arg-type]  # misuse under test
        (lambda: Variable.int("n", 0, 9, step=2), "use high=8 or another step"),
        (lambda: Variable.int("n", 0, 8, log=True), "a log scale needs low >= 1"),
        (lambda: Variable.int("n", 1, 9, log=True, step=2), "either log=True or a step"),
        (lambda: Variable.int("n", 0, 8, step=0), "step must be at least 1"),
        (lambda: Variable.int("n", 0, 8, step=2, default=3), "off the step grid 0 \\+ k \\* 2"),
        (lambda: Variable.choice("c", []), "choices is empty"),
        (lambda: Variable.choice("c", "ab"), "choices must be a list"),
        (lambda: Variable.choice("c", ["a", "a"]), "choice 'a' is listed twice"),
        (lambda: Variable.choice("c", [{"x": 1}]), "is not a JSON scalar"),  # type: ignore[list-item]  # misuse under test
        (lambda: Variable.choice("c", ["a"], default="b"), "default 'b' of variable 'c' is not one of"),
        (lambda: Variable.module_type("m", ["chain_of_thougt"]), "did you mean 'chain_of_thought'"),
        (lambda: Variable.module_type("m", ["refine"]), "'refine' does not take a signature"),
        (lambda: Variable.model("lm", ["gpt-4o"]), "'gpt-4o' needs a provider prefix, like 'openai/gpt-4o'"),
        (lambda: Variable.composite("g", []), "has no members"),
        (lambda: Variable.composite("g", [Variable.int("k", 1, 2), Variable.int("k", 1, 3)]), "two members"),
        (
            lambda: Variable.composite("g", [Variable.int("k", 1, 2, active_when={"m": ["x"]})]),
            "put the condition on the composite",
        ),
        (lambda: Variable.int("k", 1, 2, active_when={"k": [1]}), "cannot be active_when itself"),
        (lambda: Variable.int("k", 1, 2, active_when={"m": []}), "lists no values"),
        (lambda: Variable.int("k", 1, 2, active_when=["m"]), "active_when takes a mapping"),  # type: ignore[list-item]  # misuse under test
    ],
)
def test_bad_definitions_say_what_to_change(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_defaults_are_the_middle_of_numeric_ranges_and_the_first_choice() -> None:
    assert Variable.float("t", 0.0, 1.0).default == 0.5
    assert Variable.float("t", 1.0, 100.0, log=True).default == pytest.approx(10.0)
    assert Variable.float("t", 0.0, 1.0, step=0.4 / 2).default == 0.4  # snapped to the 0.2 grid
    assert Variable.int("n", 0, 8, step=2).default == 4
    assert Variable.int("n", 1, 100, log=True).default == 10
    assert Variable.choice("c", [None, 3]).default is None
    assert Variable.module_type("m").default == "predict"
    assert Variable.model("lm", ["openai/gpt-4o-mini", "anthropic/claude-3"]).default == "openai/gpt-4o-mini"
    group = Variable.composite("g", [Variable.int("k", 1, 3), Variable.choice("s", ["a", "b"], default="b")])
    assert group.default == {"k": 2, "s": "b"}


def test_float_values_are_checked_and_coerced() -> None:
    t = Variable.float("temperature", 0.0, 1.0, step=0.1)
    assert t.validate("0.3") == 0.3
    assert t.validate(0.1 + 0.2) == 0.3  # snapped, so the stored value (and the configuration id) is stable
    assert t.validate(1) == 1.0
    assert isinstance(t.validate(1), float)
    with pytest.raises(
        ConfigurationError, match=r"variable 'temperature': 0.35 is not .* \(off the step grid"
    ):
        t.validate(0.35)
    with pytest.raises(ConfigurationError, match=r"1.5 is not a float in \[0.0, 1.0\] in steps of 0.1"):
        t.validate(1.5)
    with pytest.raises(ConfigurationError, match=r"'warm' is not .* \(not a number\)"):
        t.validate("warm")
    for bad in (True, None, float("nan"), [0.5]):
        with pytest.raises(ConfigurationError, match="variable 'temperature'"):
            t.validate(bad)
    assert Variable.float("lr", 1e-4, 1e-1, log=True).validate(1e-3) == 1e-3


def test_int_values_are_checked_and_coerced() -> None:
    n = Variable.int("demos", 0, 8, step=2)
    assert n.validate(4) == 4
    assert n.validate(4.0) == 4
    assert n.validate("6") == 6
    with pytest.raises(
        ConfigurationError, match=r"3 is not an integer in \[0, 8\] in steps of 2 \(off the step"
    ):
        n.validate(3)
    with pytest.raises(ConfigurationError, match="not a whole number"):
        n.validate(2.5)
    with pytest.raises(ConfigurationError, match=r"10 is not an integer in \[0, 8\]"):
        n.validate(10)
    with pytest.raises(ConfigurationError, match="variable 'demos'"):
        n.validate(False)


def test_choice_values_match_exactly_and_accept_their_json_text() -> None:
    c = Variable.choice("c", [1, 2.5, True, None, "short", "long"])
    assert c.validate(1) == 1
    assert c.validate(1.0) == 1
    assert c.validate(True) is True
    assert c.validate("2.5") == 2.5
    assert c.validate("true") is True
    assert c.validate("null") is None
    with pytest.raises(ConfigurationError, match="did you mean 'short'"):
        c.validate("shrot")
    # True is not 1, even though Python says True == 1.
    with pytest.raises(ConfigurationError, match="is not one of"):
        Variable.choice("c", [1, 2]).validate(True)
    assert [type(v) for v in Variable.choice("c", [1, True]).choices] == [int, bool]


def test_module_type_and_model_variables_are_choices_with_checked_names() -> None:
    m = Variable.module_type("module", ["predict", "chain_of_thought", "react"])
    assert isinstance(m, ModuleTypeVariable)
    assert isinstance(m, ChoiceVariable)
    assert m.validate("chain_of_thought") == "chain_of_thought"
    with pytest.raises(ConfigurationError, match="is not one of"):
        m.validate("program_of_thought")
    lm = Variable.model("lm", ["openai/gpt-4o-mini", "ollama_chat/llama3.1:8b"])
    assert isinstance(lm, ModelVariable)
    assert lm.validate("ollama_chat/llama3.1:8b") == "ollama_chat/llama3.1:8b"


def test_composite_values_are_mappings_completed_with_member_defaults() -> None:
    group = Variable.composite("sampling", [Variable.float("top_p", 0.5, 1.0), Variable.int("n", 1, 4)])
    assert isinstance(group, CompositeVariable)
    assert group.validate({"n": "3"}) == {"top_p": 0.75, "n": 3}
    assert group.member("n").name == "n"
    with pytest.raises(ConfigurationError, match="unknown member 'top_q'; did you mean 'top_p'"):
        group.validate({"top_q": 0.9})
    with pytest.raises(ConfigurationError, match=r"variable 'n': 9 is not an integer in \[1, 4\]"):
        group.validate({"n": 9})
    with pytest.raises(ConfigurationError, match="is not a mapping of top_p, n"):
        group.validate(0.5)
    assert not group.is_finite()
    assert Variable.composite("g", [Variable.int("k", 1, 2)]).is_finite()


def test_conditions_normalise_and_hold_only_for_listed_values() -> None:
    v = Variable.int("k", 1, 4, active_when={"module": "chain_of_thought", "lm": ["a/x", "a/y"]})
    assert v.conditions == (Condition("lm", ("a/x", "a/y")), Condition("module", ("chain_of_thought",)))
    assert v.is_active({"module": "chain_of_thought", "lm": "a/y"})
    assert not v.is_active({"module": "chain_of_thought", "lm": "a/z"})
    assert not v.is_active({"lm": "a/x"})  # an absent (inactive) parent deactivates the child
    assert Variable.int("k", 1, 4, active_when=Condition("flag", (True,))).is_active({"flag": True})
    assert not Condition("flag", (True,)).holds({"flag": 1})
    assert str(Condition("m", ("a", "b"))) == "m in ['a', 'b']"


@pytest.mark.parametrize(
    "variable",
    [
        Variable.float("t", 0.1, 2.0, log=True, default=0.5, description="sampling temperature"),
        Variable.float("t", 0.0, 1.0, step=0.25, active_when={"m": ["x"]}),
        Variable.int("n", 1, 64, log=True),
        Variable.choice("c", ["a", 1, None, False]),
        Variable.module_type("m", ["chain_of_thought", "predict"]),
        Variable.model("lm", ["openai/gpt-4o-mini"]),
        Variable.composite(
            "g", [Variable.int("k", 1, 3), Variable.composite("h", [Variable.choice("s", ["a"])])]
        ),
    ],
)
def test_definitions_round_trip_through_json_and_pickle(variable: Variable) -> None:
    import json

    assert Variable.from_json(json.loads(json.dumps(variable.describe()))) == variable
    assert pickle.loads(pickle.dumps(variable)) == variable


def test_from_json_rejects_unknown_kinds_and_fields() -> None:
    with pytest.raises(ConfigurationError, match="unknown variable kind 'flot'; did you mean 'float'"):
        Variable.from_json({"kind": "flot", "name": "t"})
    with pytest.raises(ConfigurationError, match="bad int variable definition"):
        Variable.from_json({"kind": "int", "name": "n", "low": 1, "high": 2, "lo": 3})
    with pytest.raises(ConfigurationError, match="Variable is abstract"):
        Variable("x")


def test_kind_classes_can_be_used_directly() -> None:
    assert FloatVariable("t", 0, 1, default=0.25).validate(0.5) == 0.5
    assert IntVariable("n", 1, 3).kind == "int"
    assert ChoiceVariable("c", ("a", "b")).describe()["choices"] == ["a", "b"]
    assert hash(FloatVariable("t", 0, 1)) == hash(Variable.float("t", 0.0, 1.0))
