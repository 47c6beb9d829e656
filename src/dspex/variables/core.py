"""Variables: the tunable knobs of a program, each with a domain, a default and an activation rule.

A variable is a frozen value that knows its domain and checks both its own definition and the values
given to it. The kinds are numeric (:class:`FloatVariable`, :class:`IntVariable`), categorical
(:class:`ChoiceVariable` and its two specialisations :class:`ModuleTypeVariable`, the DSPy module to
run a signature with, and :class:`ModelVariable`, the LM) and :class:`CompositeVariable`, a named group.
Any variable can be conditional: ``active_when={"module": ["chain_of_thought"]}`` makes it absent from a
configuration unless ``module`` has one of those values. ::

    temperature = Variable.float("temperature", 0.0, 1.5, default=0.7)
    module = Variable.module_type("module", ["predict", "chain_of_thought"])
    hint = Variable.choice("hint", ["short", "long"], active_when={"module": ["chain_of_thought"]})
    temperature.validate("0.3")        # -> 0.3; out-of-range values raise ConfigurationError

Numeric and categorical variables are *leaves*: their fields (``low``/``high``/``log``/``step`` or
``choices``) are exactly what a search library asks for (Optuna's ``suggest_float``, ``suggest_int``,
``suggest_categorical``), so a sampler matches on the leaf type and reads them.

This module holds what every kind shares (:class:`Variable`, its factories, :class:`Condition`); the
kinds themselves are in :mod:`dspex.variables.kinds`.
"""

from __future__ import annotations

import builtins
import enum
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from dspex.variables.kinds import (
        ChoiceVariable,
        CompositeVariable,
        FloatVariable,
        IntVariable,
        ModelVariable,
        ModuleTypeVariable,
    )

__all__ = ["UNSET", "ActiveWhen", "Condition", "Kind", "Scalar", "Variable"]

Scalar: TypeAlias = str | int | float | bool | None
Kind = Literal["float", "int", "choice", "module_type", "model", "composite"]
_DEFAULT_MODULES = ("predict", "chain_of_thought")


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""A default that was not given (``None`` is a legitimate choice value)."""


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``True`` is not ``1`` (Python says it is), ``1`` is ``1.0``."""
    return (type(a) is bool) == (type(b) is bool) and a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return (
        value is None or isinstance(value, str | bool | int) or (_is_number(value) and math.isfinite(value))
    )


def _check_name(name: Any, what: str = "variable") -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigurationError(
            f"{what} name {name!r} is not an identifier; use letters, digits and underscores, "
            "not starting with a digit (for example 'temperature')"
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """``variable`` has one of ``values``: the rule that makes a conditional variable active.

    >>> Condition("module", ("chain_of_thought",)).holds({"module": "chain_of_thought"})
    True

    A condition on a variable that is itself inactive (absent) does not hold, so conditions chain.
    """

    variable: str
    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        _check_name(self.variable)
        values = self.values
        if isinstance(values, str) or not isinstance(values, Iterable):
            values = (values,)
        values = tuple(values)
        if not values:
            raise ConfigurationError(f"active_when for {self.variable!r} lists no values; give at least one")
        bad = [v for v in values if not _is_scalar(v)]
        if bad:
            raise ConfigurationError(
                f"active_when for {self.variable!r} has non-scalar value {bad[0]!r}; "
                "conditions compare strings, numbers, booleans or None"
            )
        object.__setattr__(self, "values", values)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the (partial) configuration ``values``."""
        if self.variable not in values:
            return False
        return any(_same(values[self.variable], v) for v in self.values)

    def __str__(self) -> str:
        return f"{self.variable} in {list(self.values)!r}"


ActiveWhen: TypeAlias = Mapping[str, Any] | Condition | Iterable[Condition] | None


def _conditions(active_when: ActiveWhen) -> tuple[Condition, ...]:
    if active_when is None:
        return ()
    if isinstance(active_when, Condition):
        return (active_when,)
    if isinstance(active_when, Mapping):
        return tuple(Condition(k, v) for k, v in sorted(active_when.items()))
    found = tuple(active_when)
    if not all(isinstance(c, Condition) for c in found):
        raise ConfigurationError(
            "active_when takes a mapping {variable: [values]}, a Condition or a list of Conditions"
        )
    return tuple(sorted(found, key=lambda c: c.variable))


@dataclass(frozen=True, slots=True)
class Variable:
    """A tunable value; use the factories ``Variable.float(...)``, ``.int``, ``.choice``, ``.module_type``,
    ``.model`` and ``.composite``, or the kind classes directly.

    Common keyword fields: ``default`` (within the domain; a sensible one is chosen when not given),
    ``active_when`` (``{"other": [values...]}``, every entry must hold) and ``description``. After
    construction ``active_when`` is a tuple of :class:`Condition` and ``default`` a valid value.
    """

    kind: ClassVar[Kind]
    name: str
    _: KW_ONLY
    default: Any = UNSET
    active_when: ActiveWhen = None
    description: str = ""

    def __post_init__(self) -> None:
        # Every kind defines its own; only the abstract base gets here.
        raise ConfigurationError("Variable is abstract; use Variable.float(...), Variable.choice(...), ...")

    def _init_common(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "active_when", _conditions(self.active_when))
        if any(c.variable == self.name for c in self.conditions):
            raise ConfigurationError(f"variable {self.name!r} cannot be active_when itself")

    def _init_default(self, fallback: Any) -> None:
        if self.default is UNSET:
            object.__setattr__(self, "default", fallback)
            return
        try:
            object.__setattr__(self, "default", self._coerce(self.default))
        except _OutOfDomain as exc:
            raise ConfigurationError(
                f"default {self.default!r} of variable {self.name!r} is not {self.domain_text()}"
                f"{exc.detail}; change the default or the domain"
            ) from None

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """The normalized ``active_when``: every condition must hold for the variable to be active."""
        assert isinstance(self.active_when, tuple)  # normalized in __post_init__
        return self.active_when

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether this variable is active given the values decided so far."""
        return all(c.holds(values) for c in self.conditions)

    def validate(self, value: Any) -> Any:
        """``value`` checked and coerced to this variable's domain, or a ``ConfigurationError``.

        >>> Variable.int("n", 1, 5).validate(9)
        Traceback (most recent call last):
        dspex.errors.ConfigurationError: variable 'n': 9 is not an integer in [1, 5]
        """
        try:
            return self._coerce(value)
        except _OutOfDomain as exc:
            raise ConfigurationError(
                f"variable {self.name!r}: {value!r} is not {self.domain_text()}{exc.detail}"
            ) from None

    def _coerce(self, value: Any) -> Any:
        raise NotImplementedError

    def domain_text(self) -> str:
        """The domain in words, for messages."""
        raise NotImplementedError

    def grid_values(self, points_per_float: builtins.int, points_per_int: builtins.int) -> tuple[Any, ...]:
        """A finite set of values covering the domain (leaves only)."""
        raise NotImplementedError

    def draw(self, rng: random.Random) -> Any:
        """A random value of the domain (leaves only)."""
        raise NotImplementedError

    def is_finite(self) -> bool:
        """Whether the domain is a finite set (the grid is then exhaustive)."""
        return True

    def describe(self) -> dict[str, Any]:
        """A JSON description of the definition; :meth:`from_json` rebuilds the variable."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, **self._domain_json()}
        out["default"] = self.default
        out["active_when"] = {c.variable: list(c.values) for c in self.conditions}
        out["description"] = self.description
        return out

    def _domain_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Variable:
        """The variable that :meth:`describe` described.

        >>> v = Variable.float("t", 0.0, 1.0)
        >>> Variable.from_json(v.describe()) == v
        True
        """
        from dspex.variables.kinds import KINDS

        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a variable definition is a JSON object, got {data!r}")
        kinds: dict[str, type[Variable]] = {cls.kind: cls for cls in KINDS}
        kind = data.get("kind")
        if kind not in kinds:
            raise ConfigurationError(did_you_mean(str(kind), kinds, what="variable kind"))
        args = {k: v for k, v in data.items() if k != "kind"}
        if kind == "composite":
            args["members"] = [Variable.from_json(m) for m in args.get("members", ())]
        try:
            return kinds[kind](**args)
        except TypeError as exc:
            raise ConfigurationError(f"bad {kind} variable definition {dict(data)!r}: {exc}") from None

    # Factories: one place to discover every kind. The kinds subclass Variable, so they live in
    # dspex.variables.kinds, imported on first use. ``builtins.`` because ``float``/``int`` are the
    # names of methods in this class body.
    @staticmethod
    def float(
        name: str,
        low: builtins.float,
        high: builtins.float,
        *,
        log: bool = False,
        step: builtins.float | None = None,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> FloatVariable:
        """A float in ``[low, high]``; ``log=True`` samples on a log scale, ``step`` makes it discrete.

        >>> Variable.float("temperature", 0.0, 1.0, step=0.1).validate(0.3)
        0.3
        """
        from dspex.variables.kinds import FloatVariable

        return FloatVariable(
            name, low, high, log, step, default=default, active_when=active_when, description=description
        )

    @staticmethod
    def int(
        name: str,
        low: builtins.int,
        high: builtins.int,
        *,
        log: bool = False,
        step: builtins.int = 1,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> IntVariable:
        """An integer in ``[low, high]`` (both included), on a ``step`` grid from ``low``.

        >>> Variable.int("max_demos", 0, 8, step=2).default
        4
        """
        from dspex.variables.kinds import IntVariable

        return IntVariable(
            name, low, high, log, step, default=default, active_when=active_when, description=description
        )

    @staticmethod
    def choice(
        name: str,
        choices: Sequence[Scalar],
        *,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> ChoiceVariable:
        """One of ``choices`` (strings, numbers, booleans or None); the default is the first.

        >>> Variable.choice("style", ["short", "long"]).default
        'short'
        """
        from dspex.variables.kinds import ChoiceVariable

        return ChoiceVariable(
            name, choices, default=default, active_when=active_when, description=description
        )

    @staticmethod
    def module_type(
        name: str,
        choices: Sequence[str] = _DEFAULT_MODULES,
        *,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> ModuleTypeVariable:
        """Which DSPy module runs a signature: catalog names (``dspex.modules.module_names()``).

        >>> Variable.module_type("module").choices
        ('predict', 'chain_of_thought')
        """
        from dspex.variables.kinds import ModuleTypeVariable

        return ModuleTypeVariable(
            name, choices, default=default, active_when=active_when, description=description
        )

    @staticmethod
    def model(
        name: str,
        choices: Sequence[str],
        *,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> ModelVariable:
        """Which LM: ``provider/model`` strings, as ``dspex.lm.build_lm`` takes them.

        >>> Variable.model("lm", ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku"]).default
        'openai/gpt-4o-mini'
        """
        from dspex.variables.kinds import ModelVariable

        return ModelVariable(name, choices, default=default, active_when=active_when, description=description)

    @staticmethod
    def composite(
        name: str,
        members: Sequence[Variable],
        *,
        default: Any = UNSET,
        active_when: ActiveWhen = None,
        description: str = "",
    ) -> CompositeVariable:
        """A named group; its value is a mapping of the members' values.

        >>> Variable.composite("sampling", [Variable.float("top_p", 0.5, 1.0, default=0.9)]).default
        {'top_p': 0.9}
        """
        from dspex.variables.kinds import CompositeVariable

        return CompositeVariable(
            name, members, default=default, active_when=active_when, description=description
        )


class _OutOfDomain(Exception):
    """Internal: a value is outside a domain; ``detail`` adds why (``" (off the 0.1 step grid)"``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


def _number(value: Any) -> float:
    """A finite float from a number or a numeric string (values typed on a command line)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _OutOfDomain(" (not a number)") from None
    if not _is_number(value) or not math.isfinite(value):
        raise _OutOfDomain()
    return float(value)
