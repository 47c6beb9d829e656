"""What a catalog option is, and the small runtime type check that validates option values.

Option types are ordinary annotations (``int``, ``float | None``, ``Literal["sandbox", "local"]``,
``list[str | Callable[..., Any]]``, ``dict[str, Any]``, classes). We check them ourselves rather than with
pydantic so that nothing is coerced (``"3"`` is not an ``int``, ``True`` is not a number) and the error can
name the expected type the way a user wrote it.
"""

from __future__ import annotations

import collections.abc
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["REQUIRED", "Option", "OptionKind", "describe_value", "matches", "type_name"]

OptionKind = Literal[
    "arg", "lm", "lm_dict", "tools", "interpreter", "module", "modules", "function", "validator"
]
"""How the builder turns an option into constructor arguments.

- ``arg``: passed to the DSPy constructor under the same name, only when given.
- ``lm``: an LM keyword argument for the module's predictor (``Predict(**config)``); ``None`` is dropped.
- ``lm_dict``: a mapping of further LM keyword arguments, merged with the ``lm`` options.
- ``tools``: tool references resolved through the ``ToolRegistry`` into ``dspy.Tool`` objects.
- ``interpreter``: ``"sandbox"`` or ``"local"``, turned into DSPy's ``interpreter_factory``.
- ``module``: the wrapped module: a nested spec, a catalog name, or (Python) a built ``dspy.Module``.
- ``modules``: a list of ``module`` values (the members of a consensus).
- ``function``: a callable, registry name or import path (reward functions).
- ``validator``: ``"critic"``, ``{"signature": "answer: int"}``, or a ``function`` (self-correcting modules).
"""


class _Sentinel(enum.Enum):
    REQUIRED = "REQUIRED"

    def __repr__(self) -> str:
        return self.value


REQUIRED: Final = _Sentinel.REQUIRED
"""Default of an option that has no default: the caller must give it."""


@dataclass(frozen=True, slots=True)
class Option:
    """One option a catalog module accepts: its name, type, default (or ``REQUIRED``) and meaning."""

    name: str
    type: Any
    default: Any
    doc: str
    kind: OptionKind = "arg"
    minimum: int | float | None = None  # the smallest allowed number (breadth, depth, max_corrections...)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A readable name for an option type: ``int | None``, ``'sandbox' | 'local'``, ``list[str | callable]``."""
    if tp is Any:
        return "any value"
    if tp is None or tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if tp is collections.abc.Callable or origin is collections.abc.Callable:
        return "callable"
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(tp, type):
        module = tp.__module__
        # DSPy classes are better known by their public name (dspy.Module) than their home module.
        return f"dspy.{tp.__name__}" if module.startswith("dspy.") else tp.__name__
    return str(tp)


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of option type ``tp``, without coercion (``bool`` is not a number)."""
    if tp is Any:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is collections.abc.Callable or origin is collections.abc.Callable:
        return callable(value)
    if origin in (list, collections.abc.Sequence):
        # A str is a Sequence too, but never a list of things.
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            return False
        key_type, value_type = args or (Any, Any)
        return all(matches(k, key_type) and matches(v, value_type) for k, v in value.items())
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    raise TypeError(f"unsupported option type {tp!r}")  # a catalog bug, caught by the catalog tests


def describe_value(value: Any) -> str:
    """``'3' (str)``: the value, shortened, and its type, for "expected X, got Y" messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
