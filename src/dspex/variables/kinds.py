"""The variable kinds: numeric, categorical (plain, module type, model) and composite.

Build them with the factories on :class:`~dspex.variables.core.Variable` (``Variable.float(...)``) or
construct the classes directly; both check the definition the same way.
"""

from __future__ import annotations

import difflib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from dspex.errors import ConfigurationError, did_you_mean
from dspex.variables.core import (
    _DEFAULT_MODULES,
    Kind,
    Scalar,
    Variable,
    _is_number,
    _is_scalar,
    _number,
    _OutOfDomain,
    _same,
)

__all__ = [
    "KINDS",
    "ChoiceVariable",
    "CompositeVariable",
    "FloatVariable",
    "IntVariable",
    "ModelVariable",
    "ModuleTypeVariable",
]


def _spread(low: float, high: float, count: int, log: bool) -> list[float]:
    if count == 1:
        return [math.sqrt(low * high) if log else (low + high) / 2]
    if log:
        a, b = math.log(low), math.log(high)
        points = [math.exp(a + (b - a) * i / (count - 1)) for i in range(count)]
    else:
        points = [low + (high - low) * i / (count - 1) for i in range(count)]
    # exp(log(high)) may land a hair outside the range; the ends are exactly the bounds.
    points[0], points[-1] = low, high
    return points


def _evenly(count: int, points: int) -> list[int]:
    """``points`` indices spread evenly over ``range(count)``, ends included."""
    if count <= points:
        return list(range(count))
    if points == 1:
        return [count // 2]
    return sorted({round(i * (count - 1) / (points - 1)) for i in range(points)})


@dataclass(frozen=True, slots=True)
class FloatVariable(Variable):
    """A float in ``[low, high]``. ``log`` samples on a log scale (needs ``low > 0``); ``step`` restricts
    values to ``low + k * step`` (and cannot be combined with ``log``, as in Optuna)."""

    kind: ClassVar[Kind] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        self._init_common()
        where = f"float variable {self.name!r}"
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if not _is_number(value) or not math.isfinite(value):
                raise ConfigurationError(f"{where}: {bound} must be a finite number, got {value!r}")
            object.__setattr__(self, bound, float(value))
        if not self.low < self.high:
            raise ConfigurationError(f"{where}: low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ConfigurationError(f"{where}: a log scale needs low > 0, got low={self.low}")
        if self.step is not None:
            if self.log:
                raise ConfigurationError(f"{where}: use either log=True or a step, not both")
            if not _is_number(self.step) or not self.step > 0:
                raise ConfigurationError(f"{where}: step must be a positive number, got {self.step!r}")
            object.__setattr__(self, "step", float(self.step))
            steps = (self.high - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
                raise ConfigurationError(
                    f"{where}: step {self.step} does not divide the range [{self.low}, {self.high}]; "
                    "pick a step that does, or move high to a multiple of it"
                )
        middle = _spread(self.low, self.high, 1, self.log)[0]
        self._init_default(self._snap(middle) if self.step else middle)

    def _snap(self, value: float) -> float:
        assert self.step is not None
        # Rounded so that 0.1 + 0.2 and 0.3 are the same stored value (and the same configuration id).
        return round(self.low + round((value - self.low) / self.step) * self.step, 12)

    def _coerce(self, value: Any) -> float:
        number = _number(value)
        if not self.low <= number <= self.high:
            raise _OutOfDomain()
        if self.step is not None:
            k = (number - self.low) / self.step
            if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                raise _OutOfDomain(f" (off the step grid {self.low} + k * {self.step})")
            return self._snap(number)
        return number

    def domain_text(self) -> str:
        scale = " on a log scale" if self.log else ""
        step = f" in steps of {self.step}" if self.step else ""
        return f"a float in [{self.low}, {self.high}]{step}{scale}"

    def grid_values(self, points_per_float: int, points_per_int: int) -> tuple[float, ...]:
        if self.step is not None:
            count = round((self.high - self.low) / self.step) + 1
            return tuple(self._snap(self.low + i * self.step) for i in _evenly(count, points_per_float))
        return tuple(_spread(self.low, self.high, points_per_float, self.log))

    def draw(self, rng: random.Random) -> float:
        if self.log:
            return min(
                self.high, max(self.low, math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
            )
        if self.step is not None:
            return self._snap(
                self.low + rng.randint(0, round((self.high - self.low) / self.step)) * self.step
            )
        return rng.uniform(self.low, self.high)

    def is_finite(self) -> bool:
        return self.step is not None

    def _domain_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True, slots=True)
class IntVariable(Variable):
    """An integer in ``[low, high]`` (both included) on the grid ``low + k * step``; ``log`` needs
    ``low >= 1`` and ``step == 1`` (as in Optuna)."""

    kind: ClassVar[Kind] = "int"
    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        self._init_common()
        where = f"int variable {self.name!r}"
        for bound in ("low", "high", "step"):
            value = getattr(self, bound)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(f"{where}: {bound} must be an integer, got {value!r}")
        if not self.low < self.high:
            raise ConfigurationError(f"{where}: low ({self.low}) must be less than high ({self.high})")
        if self.step < 1:
            raise ConfigurationError(f"{where}: step must be at least 1, got {self.step}")
        if (self.high - self.low) % self.step:
            raise ConfigurationError(
                f"{where}: step {self.step} does not divide the range [{self.low}, {self.high}]; "
                f"use high={self.high - (self.high - self.low) % self.step} or another step"
            )
        if self.log and self.low < 1:
            raise ConfigurationError(f"{where}: a log scale needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ConfigurationError(f"{where}: use either log=True or a step, not both")
        middle = _spread(self.low, self.high, 1, self.log)[0]
        self._init_default(self.low + round((middle - self.low) / self.step) * self.step)

    def _coerce(self, value: Any) -> int:
        number = _number(value)
        if number != int(number):
            raise _OutOfDomain(" (not a whole number)")
        integer = int(number)
        if not self.low <= integer <= self.high:
            raise _OutOfDomain()
        if (integer - self.low) % self.step:
            raise _OutOfDomain(f" (off the step grid {self.low} + k * {self.step})")
        return integer

    def domain_text(self) -> str:
        scale = " on a log scale" if self.log else ""
        step = f" in steps of {self.step}" if self.step != 1 else ""
        return f"an integer in [{self.low}, {self.high}]{step}{scale}"

    def grid_values(self, points_per_float: int, points_per_int: int) -> tuple[int, ...]:
        count = (self.high - self.low) // self.step + 1
        if self.log and count > points_per_int:
            return tuple(sorted({round(v) for v in _spread(self.low, self.high, points_per_int, True)}))
        return tuple(self.low + i * self.step for i in _evenly(count, points_per_int))

    def draw(self, rng: random.Random) -> int:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return min(self.high, math.floor(value))
        return self.low + rng.randint(0, (self.high - self.low) // self.step) * self.step

    def _domain_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True, slots=True)
class ChoiceVariable(Variable):
    """One of ``choices``: distinct strings, numbers, booleans or None. The default is the first."""

    kind: ClassVar[Kind] = "choice"
    choices: Sequence[Scalar]

    def __post_init__(self) -> None:
        self._init_common()
        where = f"{self.kind} variable {self.name!r}"
        if isinstance(self.choices, str | bytes) or not isinstance(self.choices, Iterable):
            raise ConfigurationError(f"{where}: choices must be a list, got {self.choices!r}")
        choices = tuple(self.choices)
        if not choices:
            raise ConfigurationError(f"{where}: choices is empty; list at least one value")
        for choice in choices:
            if not _is_scalar(choice):
                raise ConfigurationError(
                    f"{where}: choice {choice!r} is not a JSON scalar; choices are strings, numbers, "
                    "booleans or None (name complex options and map the names to values in your program)"
                )
        for i, choice in enumerate(choices):
            if any(_same(choice, other) for other in choices[:i]):
                raise ConfigurationError(
                    f"{where}: choice {choice!r} is listed twice; choices must be unique"
                )
        object.__setattr__(self, "choices", choices)
        self._check_choices()
        self._init_default(choices[0])

    def _check_choices(self) -> None:
        """Kind-specific checks of ``choices`` (module names, model names)."""

    def _coerce(self, value: Any) -> Scalar:
        for choice in self.choices:
            if _same(value, choice):
                return choice
        if isinstance(value, str):
            # A value typed on a command line: "4" for 4, "true" for True, "null" for None.
            for choice in self.choices:
                if not isinstance(choice, str) and value.strip() == json.dumps(choice):
                    return choice
            close = difflib.get_close_matches(value, [c for c in self.choices if isinstance(c, str)], n=1)
            if close:
                raise _OutOfDomain(f"; did you mean {close[0]!r}?")
        raise _OutOfDomain()

    def domain_text(self) -> str:
        return f"one of {list(self.choices)!r}"

    def grid_values(self, points_per_float: int, points_per_int: int) -> tuple[Scalar, ...]:
        return tuple(self.choices)

    def draw(self, rng: random.Random) -> Scalar:
        return rng.choice(tuple(self.choices))

    def _domain_json(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True, slots=True)
class ModuleTypeVariable(ChoiceVariable):
    """Which DSPy module runs a signature: names from the module catalog that take a signature
    (``predict``, ``chain_of_thought``, ``react``...), so swapping keeps the signature."""

    kind: ClassVar[Kind] = "module_type"
    choices: Sequence[Scalar] = _DEFAULT_MODULES

    def _check_choices(self) -> None:
        # The catalog imports dspy; a module-type variable is about DSPy modules, so that is expected.
        from dspex.modules.catalog import catalog

        entries = catalog()
        swappable = sorted(name for name, entry in entries.items() if entry.takes_signature)
        for choice in self.choices:
            if not isinstance(choice, str) or choice not in entries:
                raise ConfigurationError(
                    f"module_type variable {self.name!r}: "
                    + did_you_mean(str(choice), swappable, what="module")
                )
            if not entries[choice].takes_signature:
                raise ConfigurationError(
                    f"module_type variable {self.name!r}: module {choice!r} does not take a signature "
                    f"(it wraps a module or runs pairs), so it cannot replace one; use {', '.join(swappable)}"
                )


@dataclass(frozen=True, slots=True)
class ModelVariable(ChoiceVariable):
    """Which LM: ``provider/model`` strings, checked with the rule ``dspex.lm.build_lm`` applies."""

    kind: ClassVar[Kind] = "model"

    def _check_choices(self) -> None:
        from dspex.lm import _MODEL  # the one rule for model names; dspex.lm loads no DSPy

        for choice in self.choices:
            if not isinstance(choice, str) or not _MODEL.match(choice):
                raise ConfigurationError(
                    f"model variable {self.name!r}: model {choice!r} needs a provider prefix, "
                    f"like 'openai/{choice}' or 'anthropic/{choice}'"
                )


@dataclass(frozen=True, slots=True)
class CompositeVariable(Variable):
    """A named group of variables (for example one predictor's LM settings). Its value is a mapping of
    member name to value; a partial mapping is completed with the members' defaults. Members cannot be
    conditional themselves: put ``active_when`` on the group, or make the member a top-level variable."""

    kind: ClassVar[Kind] = "composite"
    members: Sequence[Variable]

    def __post_init__(self) -> None:
        self._init_common()
        where = f"composite variable {self.name!r}"
        members = tuple(self.members)
        if not members:
            raise ConfigurationError(f"{where} has no members; give at least one variable")
        seen: set[str] = set()
        for member in members:
            if not isinstance(member, Variable):
                raise ConfigurationError(f"{where}: member {member!r} is not a Variable")
            if member.name in seen:
                raise ConfigurationError(f"{where}: two members are called {member.name!r}")
            seen.add(member.name)
            if member.conditions:
                raise ConfigurationError(
                    f"{where}: member {member.name!r} has active_when; put the condition on the "
                    "composite, or make the member a top-level variable"
                )
        object.__setattr__(self, "members", members)
        self._init_default({m.name: m.default for m in members})

    def member(self, name: str) -> Variable:
        """The member called ``name``."""
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigurationError(
            f"composite variable {self.name!r}: "
            + did_you_mean(name, [m.name for m in self.members], what="member")
        )

    def _coerce(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _OutOfDomain()
        names = [m.name for m in self.members]
        for key in value:
            if key not in names:
                raise _OutOfDomain(f" ({did_you_mean(str(key), names, what='member')})")
        out: dict[str, Any] = {}
        for member in self.members:
            if member.name not in value:
                out[member.name] = member.default
                continue
            try:
                out[member.name] = member.validate(value[member.name])
            except ConfigurationError as exc:
                raise _OutOfDomain(f" ({exc.message})") from None
        return out

    def domain_text(self) -> str:
        return f"a mapping of {', '.join(m.name for m in self.members)}"

    def is_finite(self) -> bool:
        return all(m.is_finite() for m in self.members)

    def describe(self) -> dict[str, Any]:
        out = Variable.describe(self)
        out["members"] = [m.describe() for m in self.members]
        return out

    def _domain_json(self) -> dict[str, Any]:
        return {}


KINDS: tuple[type[Variable], ...] = (
    FloatVariable,
    IntVariable,
    ChoiceVariable,
    ModuleTypeVariable,
    ModelVariable,
    CompositeVariable,
)
