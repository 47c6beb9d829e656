from __future__ import annotations

import json
import pickle
import random
from typing import Any

import pytest

from dspex import ConfigurationError
from dspex.variables.configuration import Configuration
from dspex.variables.core import Variable
from dspex.variables.space import Constraint, Derived, VariableSpace


def short_chains(config: Configuration) -> bool:
    """Importable, so it survives a JSON round trip."""
    return config.get("max_tokens", 0) <= 512 or config["temperature"] < 1.0


def budget(config: Configuration) -> int:
    return 2 * int(config.get("max_tokens", 128))


def _space(**overrides: Any) -> VariableSpace:
    args: dict[str, Any] = {
        "variables": [
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.float("temperature", 0.0, 1.5, step=0.5, default=0.5),
            Variable.int("max_tokens", 256, 1024, step=256, active_when={"module": ["chain_of_thought"]}),
            Variable.choice("hint", ["brief", "detailed"], active_when={"max_tokens": [1024]}),
        ],
        "constraints": [Constraint("short_chains", short_chains, "long chains need temperature < 1")],
        "derived": [Derived("budget", budget, depends_on=["max_tokens"])],
    }
    args.update(overrides)
    return VariableSpace(**args)


def test_validate_fills_defaults_drops_inactive_and_computes_derived() -> None:
    space = _space()
    assert space.defaults() == {"module": "predict", "temperature": 0.5, "budget": 256}
    config = space.validate({"module": "chain_of_thought", "max_tokens": "1024", "hint": "detailed"})
    assert config == {
        "module": "chain_of_thought",
        "temperature": 0.5,
        "max_tokens": 1024,
        "hint": "detailed",
        "budget": 2048,
    }
    # A sampler gives every value; the inactive ones are dropped, and the chain follows.
    assert space.validate({"module": "predict", "max_tokens": 1024, "hint": "brief"}) == space.defaults()
    # A stored configuration (with its derived value) validates to itself.
    assert space.validate(config) == config


def test_validate_names_the_problem() -> None:
    space = _space()
    with pytest.raises(ConfigurationError, match="unknown variable 'temperatur'; did you mean 'temperature'"):
        space.validate({"temperatur": 0.5})
    with pytest.raises(ConfigurationError, match=r"variable 'temperature': 2 is not a float in \[0.0, 1.5\]"):
        space.validate({"temperature": 2})
    with pytest.raises(
        ConfigurationError, match="violates constraint 'short_chains': long chains need temperature < 1"
    ):
        space.validate({"module": "chain_of_thought", "max_tokens": 768, "temperature": 1.5})
    with pytest.raises(
        ConfigurationError, match="derived variable 'budget' is computed as 256, but 3 was given"
    ):
        space.validate({"budget": 3})
    assert not space.is_valid({"module": "chain_of_thought", "max_tokens": 768, "temperature": 1.5})
    assert space.is_valid({"module": "chain_of_thought", "max_tokens": 768, "temperature": 0.5})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: VariableSpace([Variable.int("a", 1, 2), Variable.int("a", 1, 3)]),
            "two variables are called 'a'",
        ),
        (
            lambda: VariableSpace([Variable.int("a", 1, 2, active_when={"mode": ["x"]})]),
            "active_when of 'a': unknown variable 'mode'",
        ),
        (
            lambda: VariableSpace(
                [Variable.choice("mode", ["x", "y"]), Variable.int("a", 1, 2, active_when={"mode": ["z"]})]
            ),
            "'z' is not a value of 'mode', which is one of",
        ),
        (
            lambda: VariableSpace(
                [
                    Variable.choice("a", [1, 2], active_when={"b": [1]}),
                    Variable.choice("b", [1, 2], active_when={"a": [1]}),
                ]
            ),
            "active_when conditions form a cycle: a -> b -> a",
        ),
        (
            lambda: VariableSpace(
                [Variable.int("a", 1, 2)],
                derived=[Derived("x", len, depends_on=["y"]), Derived("y", len, depends_on=["x"])],
            ),
            "derived variables form a cycle: x -> y -> x",
        ),
        (
            lambda: VariableSpace([Variable.int("a", 1, 2)], derived=[Derived("x", len, depends_on=["b"])]),
            "derived variable 'x' depends on unknown variable 'b'",
        ),
        (
            lambda: VariableSpace([Variable.int("a", 1, 2)], derived=[Derived("a", len)]),
            "'a' is both a variable and a derived variable",
        ),
        (
            lambda: VariableSpace(
                [Variable.int("a", 1, 2, active_when={"x": [1]})], derived=[Derived("x", lambda c: 1)]
            ),
            "names derived variable 'x'",
        ),
        (
            lambda: VariableSpace(
                [
                    Variable.composite("g", [Variable.int("k", 1, 2)]),
                    Variable.int("a", 1, 2, active_when={"g": [1]}),
                ]
            ),
            "names composite 'g'",
        ),
        (lambda: Constraint("c", 3), "predicate 3 is not callable"),  # type: ignore[arg-type]  # misuse under test
        (lambda: Derived("d", len, depends_on="a"), "depends_on is a list of names"),
    ],
)
def test_bad_spaces_say_what_to_change(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_unsatisfiable_constraints_are_detected_up_front() -> None:
    never = Constraint("sum_over_10", lambda c: c["a"] + c["b"] > 10, "a + b must exceed 10")
    finite = [Variable.int("a", 1, 3), Variable.int("b", 1, 3)]
    with pytest.raises(
        ConfigurationError, match="constraints are unsatisfiable: none of the 9 configurations"
    ):
        VariableSpace(finite, [never])
    # A continuous space cannot be enumerated; sampling says it found nothing either.
    continuous = [Variable.float("a", 0.0, 1.0), Variable.float("b", 0.0, 1.0)]
    with pytest.raises(
        ConfigurationError, match="constraints look unsatisfiable: no valid configuration in 1000 tries"
    ):
        VariableSpace(continuous, [never])
    # Defaults that fail a satisfiable constraint: the error shows a valid configuration to start from.
    with pytest.raises(ConfigurationError, match=r"violate constraint 'big'.*for example to \{'a': 3\}"):
        VariableSpace([Variable.int("a", 1, 3)], [Constraint("big", lambda c: c["a"] == 3)])


def test_sampling_a_tiny_valid_region_fails_with_counts() -> None:
    space = VariableSpace(
        [Variable.float("a", 0.0, 1.0, default=0.5)], [Constraint("exactly_half", lambda c: c["a"] == 0.5)]
    )
    with pytest.raises(
        ConfigurationError, match="no valid configuration in 50 tries \\(rejected by 'exactly_half' 50"
    ):
        space.sample(1, tries=50)


def test_a_raising_predicate_is_a_definition_error() -> None:
    with pytest.raises(ConfigurationError, match=r"constraint 'uses_k' raised KeyError.*use config.get"):
        VariableSpace(
            [Variable.choice("m", ["a", "b"]), Variable.int("k", 1, 2, active_when={"m": ["b"]})],
            [Constraint("uses_k", lambda c: c["k"] > 0)],
        )


def test_grid_enumerates_every_valid_combination_once() -> None:
    space = _space()
    grid = space.grid()
    # predict: 4 temperatures; chain_of_thought: 4 temps x (256, 512, 768) + 4 temps x 1024 x 2 hints,
    # minus the ones short_chains rejects (max_tokens > 512 with temperature >= 1: 2 temps x (1 + 2)).
    assert len(grid) == 4 + 4 * 3 + 4 * 2 - 2 * 3
    assert len({c.id for c in grid}) == len(grid)
    assert all(space.is_valid(c) for c in grid)
    assert all("hint" not in c or c["max_tokens"] == 1024 for c in grid)


def test_grid_spreads_floats_and_ints_and_respects_the_limit() -> None:
    space = VariableSpace(
        [
            Variable.float("lr", 1e-4, 1e-2, log=True),
            Variable.int("n", 1, 100),
            Variable.composite("g", [Variable.choice("s", ["a", "b"])]),
        ]
    )
    grid = space.grid(points_per_float=3, points_per_int=4)
    assert len(grid) == 3 * 4 * 2
    assert sorted({c["lr"] for c in grid}) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert sorted({c["n"] for c in grid}) == [1, 34, 67, 100]
    with pytest.raises(ConfigurationError, match="the grid has up to 24 points, more than limit=10"):
        space.grid(points_per_float=3, points_per_int=4, limit=10)


def test_sampling_is_deterministic_for_a_seed_and_always_valid() -> None:
    space = _space()
    first = [space.sample(random.Random(42)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(7)
    samples = [space.sample(rng) for _ in range(300)]
    assert all(space.is_valid(c) for c in samples)
    assert {c["module"] for c in samples} == {"predict", "chain_of_thought"}
    assert any("hint" in c for c in samples)
    assert [space.sample(s) for s in range(5)] == [space.sample(s) for s in range(5)]
    log = VariableSpace([Variable.float("lr", 1e-5, 1e-1, log=True), Variable.int("k", 1, 1000, log=True)])
    draws = [log.sample(s) for s in range(400)]
    # On a log scale, a quarter of the decades holds about a quarter of the draws.
    assert 60 < sum(c["lr"] < 1e-4 for c in draws) < 140
    assert all(1 <= c["k"] <= 1000 for c in draws)


def test_leaves_and_from_flat_are_what_a_search_library_needs() -> None:
    space = VariableSpace(
        [
            Variable.choice("mode", ["plain", "tuned"]),
            Variable.composite(
                "lm",
                [Variable.float("temperature", 0.0, 1.0), Variable.int("n", 1, 3)],
                active_when={"mode": "tuned"},
            ),
        ]
    )
    leaves = space.leaves()
    assert [leaf.path for leaf in leaves] == ["mode", "lm.temperature", "lm.n"]
    assert not leaves[1].is_active({"mode": "plain"})
    assert space.from_flat({"mode": "tuned", "lm.temperature": 0.2, "lm.n": 2}) == {
        "mode": "tuned",
        "lm": {"temperature": 0.2, "n": 2},
    }
    assert space.from_flat({"mode": "plain", "lm.temperature": 0.2}) == {"mode": "plain"}


def test_configuration_is_immutable_hashable_and_order_independent() -> None:
    a = Configuration({"t": 0.5, "m": "predict", "g": {"k": [1, 2]}})
    b = Configuration({"g": {"k": (1, 2)}, "m": "predict", "t": 0.5})
    assert a == b
    assert a.id == b.id
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.id != Configuration({"t": 0.6, "m": "predict", "g": {"k": [1, 2]}}).id
    assert len(a.id) == 64
    assert a.to_json() == {"t": 0.5, "m": "predict", "g": {"k": [1, 2]}}
    with pytest.raises(TypeError):
        a["g"]["k"] = 3  # type: ignore[index]  # mutation under test
    assert pickle.loads(pickle.dumps(a)) == a
    assert json.loads(json.dumps(a.to_json())) == a
    with pytest.raises(ConfigurationError, match=r"at configuration\.x is a object, not JSON"):
        Configuration({"x": object()})
    # JSON semantics: True is not 1.
    assert Configuration({"x": True}).id != Configuration({"x": 1}).id


def test_describe_round_trips_importable_code_and_drops_lambdas_on_request() -> None:
    space = _space()
    description = json.loads(json.dumps(space.describe()))
    assert description["constraints"] == [
        {
            "name": "short_chains",
            "message": "long chains need temperature < 1",
            "predicate": "test_space:short_chains",
        }
    ]
    again = VariableSpace.from_json(description)
    assert again.describe() == space.describe()
    assert again.id == space.id
    assert again.grid() == space.grid()

    with_lambda = _space(derived=[Derived("budget", lambda c: 1)])
    data = with_lambda.describe()
    assert data["derived"][0]["fn"] is None
    with pytest.raises(
        ConfigurationError, match="derived variable 'budget' was dropped: its code has no import"
    ):
        VariableSpace.from_json(data)
    lenient = VariableSpace.from_json(data, strict=False)
    assert lenient.notes == (
        "derived variable 'budget' was dropped: its code has no import path (a lambda or closure)",
    )
    assert "budget" not in lenient.defaults()
    with pytest.raises(ConfigurationError, match="cannot import the constraint 'nowhere:fn'"):
        VariableSpace.from_json(
            {"v": 1, "variables": [], "constraints": [{"name": "c", "predicate": "nowhere:fn"}]}
        )


def test_lookup_by_name() -> None:
    space = _space()
    assert space["hint"].name == "hint"
    assert "hint" in space
    assert space.names == ("module", "temperature", "max_tokens", "hint")
    with pytest.raises(ConfigurationError, match="unknown variable 'hnt'; did you mean 'hint'"):
        space["hnt"]


def test_variables_are_ordered_parents_first_whatever_the_listing_order() -> None:
    space = VariableSpace(
        [
            Variable.int("depth", 1, 3, active_when={"mode": ["deep"]}),
            Variable.choice("mode", ["flat", "deep"]),
        ]
    )
    assert space.names == ("mode", "depth")
    assert [leaf.path for leaf in space.leaves()] == ["mode", "depth"]
    assert space.validate({"mode": "deep"}) == {"mode": "deep", "depth": 2}
