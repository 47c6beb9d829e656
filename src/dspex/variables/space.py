"""A variable space: variables, the constraints between them and the values derived from them.

::

    space = VariableSpace(
        [
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.float("temperature", 0.0, 1.5, default=0.7),
            Variable.int("max_tokens", 64, 1024, step=64, active_when={"module": ["chain_of_thought"]}),
        ],
        constraints=[Constraint("cool_cot", lambda c: c.get("max_tokens", 0) < 512 or c["temperature"] < 1,
                                "long chains of thought need temperature < 1")],
        derived=[Derived("budget", lambda c: c.get("max_tokens", 256) * 2, depends_on=["max_tokens"])],
    )
    config = space.validate({"module": "chain_of_thought"})   # defaults filled, budget computed
    config.id                                                  # sha256 of the canonical JSON

Resolving a configuration: sampled or given values are checked per variable in dependency order
(a variable whose ``active_when`` does not hold is dropped), then derived values are computed in
dependency order, then every constraint must accept the result. A :class:`Configuration` is the
immutable, hashable outcome; it is what program versions and executions store.

For a search library: :meth:`VariableSpace.leaves` lists every leaf (composite members as
``"group.member"``) in an order where a leaf's conditions only involve earlier leaves, and
:meth:`VariableSpace.from_flat` turns the sampled leaf values into a configuration. :meth:`sample` is
built exactly that way, so an Optuna sampler is the same loop with ``trial.suggest_*``.
"""

from __future__ import annotations

import importlib
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, did_you_mean
from dspex.jsonable import canonical_hash
from dspex.variables.configuration import Configuration
from dspex.variables.core import Condition, Variable
from dspex.variables.kinds import ChoiceVariable, CompositeVariable, FloatVariable, IntVariable

if TYPE_CHECKING:
    from dspex.modules.tools import ToolRegistry

__all__ = ["Constraint", "Derived", "Leaf", "VariableSpace"]

# When the defaults fail the constraints, finite spaces up to this size are searched exhaustively to tell
# "change the defaults (to this valid one)" from "nothing is valid".
_STATIC_CHECK_LIMIT = 2048


def _code_path(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` when importing that gives back ``fn`` itself (not a lambda or closure)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is fn else None


def _load_code(path: str, what: str) -> Callable[..., Any]:
    module, _, qualname = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import the {what} {path!r}: {exc}") from None
    if not callable(found):
        raise ConfigurationError(f"the {what} {path!r} is not callable")
    result: Callable[..., Any] = found
    return result


@dataclass(frozen=True, slots=True)
class Constraint:
    """A rule over a whole configuration: ``predicate(config)`` returns False to reject it.

    >>> Constraint("small_cot", lambda c: c["max_tokens"] <= 512, "keep chains of thought short").name
    'small_cot'

    Predicates see only active variables: use ``config.get(name)`` for conditional ones.
    """

    name: str
    predicate: Callable[[Configuration], bool]
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigurationError(f"constraint name {self.name!r} is not an identifier")
        if not callable(self.predicate):
            raise ConfigurationError(
                f"constraint {self.name!r}: predicate {self.predicate!r} is not callable"
            )

    def accepts(self, config: Configuration) -> bool:
        """Whether ``config`` satisfies the constraint; a predicate that raises is a definition error."""
        try:
            return bool(self.predicate(config))
        except Exception as exc:
            raise ConfigurationError(
                f"constraint {self.name!r} raised {type(exc).__name__}: {exc} on {config.to_json()}; "
                "predicates see only active variables, so use config.get(...) for conditional ones"
            ) from exc


@dataclass(frozen=True, slots=True)
class Derived:
    """A value computed from others: ``fn(config)`` after the variables (and earlier derived values)
    are resolved; ``depends_on`` names them, to order the computation and to catch cycles.

    >>> Derived("max_demos", lambda c: 2 * c["k"], depends_on=["k"]).depends_on
    ('k',)
    """

    name: str
    fn: Callable[[Configuration], Any]
    depends_on: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigurationError(f"derived variable name {self.name!r} is not an identifier")
        if not callable(self.fn):
            raise ConfigurationError(f"derived variable {self.name!r}: fn {self.fn!r} is not callable")
        if isinstance(self.depends_on, str):
            raise ConfigurationError(f"derived variable {self.name!r}: depends_on is a list of names")
        object.__setattr__(self, "depends_on", tuple(self.depends_on))

    def compute(self, config: Configuration) -> Any:
        try:
            return self.fn(config)
        except Exception as exc:
            raise ConfigurationError(
                f"derived variable {self.name!r} raised {type(exc).__name__}: {exc} on {config.to_json()}; "
                "inactive variables are absent, so use config.get(...) for conditional ones"
            ) from exc


@dataclass(frozen=True, slots=True)
class Leaf:
    """One sampled dimension: a non-composite variable at ``path`` (``"group.member"`` inside a
    composite) with the conditions that make it active (a member inherits its group's)."""

    path: str
    variable: Variable
    conditions: tuple[Condition, ...]

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """Whether the leaf is active given the leaf values sampled so far."""
        return all(c.holds(params) for c in self.conditions)


def _domain_size(variable: Variable) -> int:
    """How many values a finite leaf has."""
    if isinstance(variable, ChoiceVariable):
        return len(variable.choices)
    if isinstance(variable, IntVariable):
        return (variable.high - variable.low) // variable.step + 1
    # Callers check is_finite first: the only other finite leaf is a stepped float.
    assert isinstance(variable, FloatVariable)
    assert variable.step is not None
    return round((variable.high - variable.low) / variable.step) + 1


def _topological(names: Sequence[str], edges: Mapping[str, Sequence[str]], what: str) -> list[str]:
    """``names`` ordered so that each comes after the names it depends on; stable; cycles raise."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            raise ConfigurationError(
                f"{what} form a cycle: {' -> '.join(cycle)}; break it by removing one dependency"
            )
        state[name] = 1
        for dep in edges.get(name, ()):
            if dep in edges:
                visit(dep, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in names:
        visit(name, [])
    return order


class VariableSpace:
    """Variables, constraints and derived values; resolves, enumerates and samples configurations.

    The definition is checked up front: unique names, conditions naming existing variables and values
    in their domains, no dependency cycles, and defaults that satisfy the constraints (when they do
    not, the error says whether any configuration does: exhaustively for small finite spaces,
    by sampling otherwise, and shows a valid one to start from).
    """

    __slots__ = ("_by_name", "constraints", "derived", "notes", "variables")

    def __init__(
        self,
        variables: Sequence[Variable],
        constraints: Sequence[Constraint] = (),
        derived: Sequence[Derived] = (),
        *,
        notes: Sequence[str] = (),
    ) -> None:
        self.notes = tuple(notes)  # what from_json could not restore (predicates that are not importable)
        by_name: dict[str, Variable] = {}
        for variable in variables:
            if not isinstance(variable, Variable):
                raise ConfigurationError(f"{variable!r} is not a Variable; use Variable.float(...) etc.")
            if variable.name in by_name:
                raise ConfigurationError(f"two variables are called {variable.name!r}; names must be unique")
            by_name[variable.name] = variable
        derived_by_name = {d.name: d for d in derived}
        if len(derived_by_name) != len(derived):
            raise ConfigurationError("two derived variables share a name; names must be unique")
        for name in derived_by_name:
            if name in by_name:
                raise ConfigurationError(f"{name!r} is both a variable and a derived variable; rename one")
        names = [c.name for c in constraints]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"constraint names must be unique, got {names}")
        for variable in variables:
            for condition in variable.conditions:
                self._check_condition(variable, condition, by_name, derived_by_name)
        order = _topological(
            list(by_name),
            {n: [c.variable for c in v.conditions] for n, v in by_name.items()},
            "active_when conditions",
        )
        self._by_name = {name: by_name[name] for name in order}
        self.variables: tuple[Variable, ...] = tuple(self._by_name.values())
        for d in derived:
            for dep in d.depends_on:
                if dep not in by_name and dep not in derived_by_name:
                    raise ConfigurationError(
                        f"derived variable {d.name!r} depends on "
                        + did_you_mean(dep, [*by_name, *derived_by_name], what="variable")
                    )
        derived_order = _topological(
            list(derived_by_name), {n: d.depends_on for n, d in derived_by_name.items()}, "derived variables"
        )
        self.derived: tuple[Derived, ...] = tuple(derived_by_name[n] for n in derived_order)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)
        self._check_satisfiable()

    @staticmethod
    def _check_condition(
        variable: Variable, condition: Condition, by_name: Mapping[str, Variable], derived: Mapping[str, Any]
    ) -> None:
        where = f"active_when of {variable.name!r}"
        if condition.variable in derived:
            raise ConfigurationError(
                f"{where} names derived variable {condition.variable!r}; conditions depend on variables only"
            )
        parent = by_name.get(condition.variable)
        if parent is None:
            raise ConfigurationError(
                f"{where}: " + did_you_mean(condition.variable, by_name, what="variable")
            )
        if isinstance(parent, CompositeVariable):
            raise ConfigurationError(
                f"{where} names composite {parent.name!r}; conditions compare single values"
            )
        for value in condition.values:
            try:
                parent.validate(value)
            except ConfigurationError:
                raise ConfigurationError(
                    f"{where}: {value!r} is not a value of {parent.name!r}, which is {parent.domain_text()}; "
                    "the condition could never hold"
                ) from None

    def _check_satisfiable(self) -> None:
        """The defaults must pass the constraints; when they do not, say whether anything does."""
        config, failed = self._resolve({})
        if failed is None:
            return
        defaults = f"the defaults {config.to_json()} violate constraint {failed.name!r}" + (
            f" ({failed.message})" if failed.message else ""
        )
        leaves = self.leaves()
        if all(leaf.variable.is_finite() for leaf in leaves):
            size = math.prod(_domain_size(leaf.variable) for leaf in leaves)
            if size <= _STATIC_CHECK_LIMIT:
                valid = self.grid(points_per_float=size, points_per_int=size, limit=size)
                if not valid:
                    raise ConfigurationError(
                        f"constraints are unsatisfiable: none of the {size} configurations of this space "
                        f"passes {', '.join(repr(c.name) for c in self.constraints)}; {defaults}. "
                        "Loosen a constraint or widen a domain"
                    )
                raise ConfigurationError(
                    f"{defaults}; change the defaults, for example to {valid[0].to_json()}"
                )
        try:
            example = self.sample(random.Random(0))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{defaults}, and {exc.message}") from None
        raise ConfigurationError(f"{defaults}; change the defaults, for example to {example.to_json()}")

    # --- lookup -------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Variable:
        variable = self._by_name.get(name)
        if variable is None:
            raise ConfigurationError(did_you_mean(name, self._by_name, what="variable"))
        return variable

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> tuple[str, ...]:
        """Variable names in dependency order (derived values not included)."""
        return tuple(self._by_name)

    def leaves(self) -> tuple[Leaf, ...]:
        """Every sampled dimension in dependency order; composite members flattened to ``group.member``."""
        out: list[Leaf] = []

        def add(variable: Variable, prefix: str, conditions: tuple[Condition, ...]) -> None:
            if isinstance(variable, CompositeVariable):
                for member in variable.members:
                    add(member, f"{prefix}{variable.name}.", conditions)
            else:
                out.append(Leaf(f"{prefix}{variable.name}", variable, conditions))

        for variable in self.variables:
            add(variable, "", variable.conditions)
        return tuple(out)

    # --- resolving ----------------------------------------------------------------------------------

    def _resolve(self, values: Mapping[str, Any]) -> tuple[Configuration, Constraint | None]:
        """The configuration for ``values`` and the first constraint it violates (or None)."""
        derived_names = {d.name for d in self.derived}
        for key in values:
            if key not in self._by_name and key not in derived_names:
                raise ConfigurationError(
                    did_you_mean(str(key), [*self._by_name, *derived_names], what="variable")
                )
        out: dict[str, Any] = {}
        for variable in self.variables:
            if not variable.is_active(out):
                continue  # inactive: absent, even if a value was given (samplers give every value)
            out[variable.name] = (
                variable.validate(values[variable.name]) if variable.name in values else variable.default
            )
        for d in self.derived:
            value = Configuration({d.name: d.compute(Configuration(out))})[d.name]
            if d.name in values and Configuration({d.name: values[d.name]}) != Configuration({d.name: value}):
                raise ConfigurationError(
                    f"derived variable {d.name!r} is computed as {value!r}, but {values[d.name]!r} was given; "
                    "leave it out, it is computed from " + (", ".join(d.depends_on) or "the configuration")
                )
            out[d.name] = value
        config = Configuration(out)
        for constraint in self.constraints:
            if not constraint.accepts(config):
                return config, constraint
        return config, None

    def validate(self, values: Mapping[str, Any] | None = None) -> Configuration:
        """The configuration for ``values``: checked, defaults filled, inactive variables dropped,
        derived values computed, constraints checked. A violation raises ``ConfigurationError``.

        >>> VariableSpace([Variable.int("k", 1, 8)]).validate({"k": "3"})
        Configuration({'k': 3})
        """
        config, failed = self._resolve(values or {})
        if failed is not None:
            reason = failed.message or "its predicate returned False"
            raise ConfigurationError(
                f"configuration {config.to_json()} violates constraint {failed.name!r}: {reason}"
            )
        return config

    def is_valid(self, values: Mapping[str, Any]) -> bool:
        """Whether :meth:`validate` accepts ``values``."""
        try:
            self.validate(values)
        except ConfigurationError:
            return False
        return True

    def defaults(self) -> Configuration:
        """Every active variable at its default (checked against the constraints at construction)."""
        return self.validate({})

    def from_flat(self, params: Mapping[str, Any]) -> Configuration:
        """The configuration for leaf values keyed by :attr:`Leaf.path` (``"group.member"``).

        >>> space = VariableSpace([Variable.composite("g", [Variable.int("k", 1, 4)])])
        >>> space.from_flat({"g.k": 2})
        Configuration({'g': {'k': 2}})
        """
        return self.validate(self._nest(params))

    # --- enumerating and sampling -------------------------------------------------------------------

    @staticmethod
    def _grid_size(leaves: Sequence[Leaf], points_per_float: int, points_per_int: int) -> int:
        # An upper bound: conditional leaves are counted as if always active.
        return math.prod(len(leaf.variable.grid_values(points_per_float, points_per_int)) for leaf in leaves)

    def grid(
        self, *, points_per_float: int = 5, points_per_int: int = 10, limit: int = 100_000
    ) -> list[Configuration]:
        """Every valid configuration of a finite grid, without duplicates: all choices, ``points_per_float``
        evenly spread floats (on the log scale for log variables, on the step grid for stepped ones) and
        up to ``points_per_int`` integers. Combinations the constraints reject are skipped.

        >>> len(VariableSpace([Variable.choice("a", [1, 2]), Variable.float("t", 0.0, 1.0)]).grid(points_per_float=3))
        6
        """
        if points_per_float < 1 or points_per_int < 1:
            raise ConfigurationError("points_per_float and points_per_int must be at least 1")
        leaves = self.leaves()
        candidates = {
            leaf.path: leaf.variable.grid_values(points_per_float, points_per_int) for leaf in leaves
        }
        size = self._grid_size(leaves, points_per_float, points_per_int)
        if size > limit:
            raise ConfigurationError(
                f"the grid has up to {size} points, more than limit={limit}; lower points_per_float or "
                "points_per_int, narrow the domains, or raise the limit"
            )
        found: dict[str, Configuration] = {}

        def walk(i: int, params: dict[str, Any]) -> None:
            if i == len(leaves):
                config, failed = self._resolve(self._nest(params))
                if failed is None:
                    found.setdefault(config.id, config)
                return
            leaf = leaves[i]
            if not leaf.is_active(params):
                walk(i + 1, params)
                return
            for value in candidates[leaf.path]:
                params[leaf.path] = value
                walk(i + 1, params)
            del params[leaf.path]

        walk(0, {})
        return list(found.values())

    @staticmethod
    def _nest(params: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path, value in params.items():
            *groups, last = path.split(".")
            target = values
            for group in groups:
                target = target.setdefault(group, {})
            target[last] = value
        return values

    def sample(self, rng: random.Random | int | None = None, *, tries: int = 1000) -> Configuration:
        """A random valid configuration (rejection sampling over the leaves in dependency order).

        ``rng`` is a ``random.Random`` or a seed: the same seed gives the same configuration.

        >>> space = VariableSpace([Variable.float("t", 0.0, 1.0)])
        >>> space.sample(7) == space.sample(7)
        True
        """
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        leaves = self.leaves()
        rejected: Counter[str] = Counter()
        for _ in range(tries):
            params: dict[str, Any] = {}
            for leaf in leaves:
                if leaf.is_active(params):
                    params[leaf.path] = leaf.variable.draw(rng)
            config, failed = self._resolve(self._nest(params))
            if failed is None:
                return config
            rejected[failed.name] += 1
        by = ", ".join(f"{name!r} {count} times" for name, count in rejected.most_common())
        raise ConfigurationError(
            f"constraints look unsatisfiable: no valid configuration in {tries} tries (rejected by {by}); "
            "loosen the constraints, narrow the domains towards valid values, or raise tries"
        )

    # --- JSON ---------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The space as JSON: variables, and constraints/derived with their code's import path (or
        null for lambdas and closures, which cannot be restored)."""
        return {
            "v": 1,
            "variables": [v.describe() for v in self.variables],
            "constraints": [
                {"name": c.name, "message": c.message, "predicate": _code_path(c.predicate)}
                for c in self.constraints
            ],
            "derived": [
                {"name": d.name, "depends_on": list(d.depends_on), "fn": _code_path(d.fn)}
                for d in self.derived
            ],
        }

    to_json = describe

    @property
    def id(self) -> str:
        """Content hash of :meth:`describe` (names a search study over this space)."""

        return canonical_hash(self.describe())

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, strict: bool = True, functions: ToolRegistry | None = None
    ) -> VariableSpace:
        """The space :meth:`describe` described. Code is imported by path (``module:function``), or
        named in ``functions`` (the operator's registry) by a plain name; code without either (a lambda)
        raises, or with ``strict=False`` is dropped and listed in :attr:`notes`."""
        if not isinstance(data, Mapping) or data.get("v") != 1:
            raise ConfigurationError('a variable space description is a JSON object with "v": 1')
        notes: list[str] = []

        def code(entry: Mapping[str, Any], key: str, what: str) -> Callable[..., Any] | None:
            path = entry.get(key)
            if path and ":" not in path and functions is not None:
                return functions.resolve(path, what=what)
            if path:
                return _load_code(path, what)
            note = (
                f"{what} {entry.get('name')!r} was dropped: its code has no import path (a lambda or closure)"
            )
            if strict:
                raise ConfigurationError(
                    note + "; define it as a module-level function, or pass strict=False"
                )
            notes.append(note)
            return None

        constraints = []
        for entry in data.get("constraints", ()):
            predicate = code(entry, "predicate", "constraint")
            if predicate is not None:
                constraints.append(Constraint(entry["name"], predicate, entry.get("message", "")))
        derived = []
        for entry in data.get("derived", ()):
            fn = code(entry, "fn", "derived variable")
            if fn is not None:
                derived.append(Derived(entry["name"], fn, entry.get("depends_on", ())))
        variables = [Variable.from_json(v) for v in data.get("variables", ())]
        return cls(variables, constraints, derived, notes=notes)

    def __repr__(self) -> str:
        return f"VariableSpace({', '.join(self.names)})"
