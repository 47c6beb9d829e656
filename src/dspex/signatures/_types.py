"""The allow-list of names a signature string may use for types, and the reverse: types to text.

Nothing here imports a module or evaluates text. A type expression is resolved by looking names up
in the tables below (after the caller's ``custom_types``); anything else is refused by the parser.
"""

from __future__ import annotations

import datetime
import decimal
import math
import types
import typing
import uuid
from collections.abc import Mapping
from typing import Any, Final

import annotated_types
import dspy
from pydantic.fields import FieldInfo

NoneType: Final = type(None)

# Builtins that dspy.Signature resolves. `bytearray` is left out: DSPy resolves it but pydantic cannot
# build a schema for it, so every signature using it fails anyway.
_BUILTINS: Final[dict[str, Any]] = {
    t.__name__: t for t in (str, int, float, bool, bytes, complex, list, dict, tuple, set, frozenset)
}

# The typing names people put in signatures. DSPy resolves every name in `typing.__dict__` (ClassVar,
# Final, Self, TypeVar, the `typing.sys` module...); most of those are accidents, so we keep the useful
# ones and refuse the rest with a message that lists these.
_TYPING_NAMES: Final = (
    "Annotated",
    "Any",
    "Dict",
    "FrozenSet",
    "List",
    "Literal",
    "Mapping",
    "Optional",
    "Sequence",
    "Set",
    "Text",
    "Tuple",
    "Union",
)
_TYPING: Final[dict[str, Any]] = {name: getattr(typing, name) for name in _TYPING_NAMES}

# DSPy's own field types (dspy.adapters.types). `dspy.Type` is the abstract base and is left out.
DSPY_TYPE_NAMES: Final = (
    "Audio",
    "Code",
    "File",
    "History",
    "Image",
    "Reasoning",
    "Tool",
    "ToolCallResults",
    "ToolCalls",
)
_DSPY: Final[dict[str, Any]] = {name: getattr(dspy, name) for name in DSPY_TYPE_NAMES}
DSPY_CODE: Final[Any] = dspy.Code

# Standard-library value types that pydantic validates and DSPy reaches by importing the module.
_STDLIB_DOTTED: Final[dict[str, Any]] = {
    "datetime.date": datetime.date,
    "datetime.datetime": datetime.datetime,
    "datetime.time": datetime.time,
    "datetime.timedelta": datetime.timedelta,
    "decimal.Decimal": decimal.Decimal,
    "uuid.UUID": uuid.UUID,
}

#: Bare names a type expression may use (custom types are looked up first).
NAMES: Final[dict[str, Any]] = {**_BUILTINS, **_TYPING, **_DSPY, "NoneType": NoneType}

#: Dotted names a type expression may use; no other attribute access is allowed.
DOTTED: Final[dict[str, Any]] = {
    **{f"typing.{name}": obj for name, obj in _TYPING.items()},
    **{f"dspy.{name}": obj for name, obj in _DSPY.items()},
    **_STDLIB_DOTTED,
}

#: Keywords accepted in ``Annotated[T, Field(...)]``: pydantic constraints and documentation only.
#: ``default``/``alias`` would change how DSPy names and fills fields, and unknown keywords make
#: pydantic warn, so they are refused.
FIELD_KEYWORDS: Final = frozenset(
    {
        "allow_inf_nan",
        "decimal_places",
        "description",
        "ge",
        "gt",
        "le",
        "lt",
        "max_digits",
        "max_length",
        "min_length",
        "multiple_of",
        "pattern",
        "strict",
        "title",
    }
)


def _reserved_names() -> frozenset[str]:
    # A field may not shadow anything on the class or its metaclass (`instructions`, `fields`,
    # `model_dump`, `json`...): pydantic only warns, and the attribute then stops working.
    sig: Any = dspy.Signature
    names = {n for n in (*dir(sig), *dir(type(sig))) if not n.startswith("_")}
    return frozenset(names)


RESERVED: Final = _reserved_names()
#: Pydantic warns about names in its protected namespaces (``model_dump_x``), so they are refused too.
PROTECTED_PREFIXES: Final[tuple[str, ...]] = tuple(
    dspy.Signature.model_config.get("protected_namespaces", ())
)
#: Input names that ``dspy.Predict.__call__`` takes as its own keyword arguments.
RESERVED_INPUTS: Final = frozenset({"config", "demos", "lm"})


def is_field_type(value: object) -> bool:
    """The check `dspy.signatures.signature.make_signature` applies to every field type."""
    return isinstance(
        value,
        (
            type,
            typing._GenericAlias,  # type: ignore[attr-defined]  # private, but it is DSPy's own check
            types.GenericAlias,
            typing._SpecialForm,
            types.UnionType,
        ),
    )


def _code_language(tp: type[Any]) -> str | None:
    # dspy.Code["python"] builds a fresh subclass with a `language` attribute on every call.
    code: type[Any] = dspy.Code
    if tp is not code and issubclass(tp, code):
        language = tp.__dict__.get("language")
        # A signature string passes the subscript as a tuple, so DSPy stores ("python",) there.
        if isinstance(language, tuple) and len(language) == 1:
            language = language[0]
        return language if isinstance(language, str) else None
    return None


_SPEC_NAMES: Final[dict[int, str]] = {
    **{id(obj): name for name, obj in DOTTED.items() if not name.startswith("typing.")},
    **{id(obj): name for name, obj in _BUILTINS.items()},
    id(NoneType): "NoneType",
    id(typing.Any): "Any",
}
_TYPING_ORIGIN_NAMES: Final[dict[str, str]] = {name: name for name in _TYPING_NAMES}


def type_to_spec(tp: object, custom_names: Mapping[int, str] | None = None) -> str:
    """Write a type the way a signature string spells it, so the parser rebuilds an equal type.

    >>> type_to_spec(dict[str, list[int]])
    'dict[str, list[int]]'

    Raises ``ValueError`` for a type that has no spelling (give it one through ``custom_names``,
    a map from ``id(type)`` to the name used in ``custom_types``).
    """
    custom_names = custom_names or {}
    if id(tp) in custom_names:
        return custom_names[id(tp)]
    if id(tp) in _SPEC_NAMES:
        return _SPEC_NAMES[id(tp)]
    if tp is None:
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, type):
        language = _code_language(tp)
        if language is not None:
            return f"dspy.Code[{language!r}]"
        raise ValueError(f"type {tp.__qualname__} has no name in a signature string")
    if isinstance(tp, FieldInfo):
        kwargs = field_kwargs(tp)
        if kwargs is None:
            raise ValueError(f"Field metadata {tp!r} cannot be written in a signature string")
        return f"Field({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if isinstance(tp, (str, bytes, int, float)):
        return repr(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        rendered = [type_to_spec(a, custom_names) for a in args]
        return f"Annotated[{', '.join(rendered)}]"
    if origin is typing.Literal:
        for arg in args:
            finite = type(arg) is float and math.isfinite(arg)
            if type(arg) not in (str, bytes, int, bool, NoneType) and not finite:
                raise ValueError(f"Literal value {arg!r} cannot be written in a signature string")
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is typing.Union or isinstance(tp, types.UnionType):
        rendered = [type_to_spec(a, custom_names) for a in args]
        if len(args) == 2 and NoneType in args:
            other = args[0] if args[1] is NoneType else args[1]
            return f"Optional[{type_to_spec(other, custom_names)}]"
        return f"Union[{', '.join(rendered)}]"
    if isinstance(tp, types.GenericAlias) and isinstance(origin, type):
        if origin is tuple and args == ():
            return "tuple[()]"
        builtin_name: str = origin.__name__
        if _BUILTINS.get(builtin_name) is origin:
            return f"{builtin_name}[{', '.join(type_to_spec(a, custom_names) for a in args)}]"
    name = getattr(tp, "_name", None)
    if isinstance(name, str) and name in _TYPING_ORIGIN_NAMES and args:
        if name == "Tuple" and args == ((),):
            return "Tuple[()]"
        return f"{name}[{', '.join(type_to_spec(a, custom_names) for a in args)}]"
    raise ValueError(f"type {tp!r} cannot be written in a signature string")


_CONSTRAINTS: Final[dict[type[Any], str]] = {
    annotated_types.Gt: "gt",
    annotated_types.Ge: "ge",
    annotated_types.Lt: "lt",
    annotated_types.Le: "le",
    annotated_types.MultipleOf: "multiple_of",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


def field_kwargs(info: FieldInfo) -> dict[str, Any] | None:
    """``Field(...)`` keywords that rebuild ``info``'s constraints, description and title.

    None when ``info`` holds something else (a default, an alias, a validator...).
    """
    kwargs: dict[str, Any] = {}
    for item in info.metadata:
        key = _CONSTRAINTS.get(type(item))
        if key is not None:
            kwargs[key] = getattr(item, key)
            continue
        # pydantic keeps pattern/strict/allow_inf_nan... in a private metadata class with plain attrs.
        values = getattr(item, "__dict__", None)
        if not isinstance(values, dict) or not set(values) <= FIELD_KEYWORDS:
            return None
        kwargs.update(values)
    if info.description is not None:
        kwargs["description"] = info.description
    if info.title is not None:
        kwargs["title"] = info.title
    return kwargs


def describe_type(tp: object) -> str:
    """A short, readable name for a type, for error messages (never raises).

    >>> describe_type(list[int])
    'list[int]'
    """
    try:
        return type_to_spec(tp)
    except ValueError:
        if isinstance(tp, type):
            return tp.__name__
        return repr(tp).replace("typing.", "")
