"""Run dspy.Signature on a string safely and compare its result with dspex's, field by field."""

from __future__ import annotations

import builtins
import importlib.util
import re
import sys
import typing
import warnings
from typing import Any

import dspy
from pydantic.fields import FieldInfo

_IDENT = re.compile(r"[^\W\d]\w*")
_safe_names: dict[str, bool] = {}


def _name_is_safe(name: str) -> bool:
    # dspy.Signature imports any module named in a type ("x: antigravity" opens a browser) and
    # pydantic evaluates quoted types, which could call builtins: skip strings that could do either.
    if name not in _safe_names:
        value = getattr(builtins, name, None)
        if value is not None and not isinstance(value, type):
            safe = False
        elif name in sys.modules or name in typing.__dict__:
            safe = True
        else:
            try:
                safe = importlib.util.find_spec(name) is None
            except (ImportError, ValueError):
                safe = True
        _safe_names[name] = safe
    return _safe_names[name]


def dspy_is_safe_on(spec: str) -> bool:
    """Whether running dspy.Signature on ``spec`` cannot import a module or call a builtin."""
    return "__" not in spec and all(_name_is_safe(name) for name in _IDENT.findall(spec))


def run_dspy(spec: str) -> Any:
    """dspy.Signature(spec), or the exception it raised (warnings count as rejections)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            # custom_types={} turns off DSPy's search of the caller's frames for type names.
            return dspy.Signature(spec, custom_types={})
        except Exception as exc:
            return exc


def same_type(a: Any, b: Any) -> bool:
    """Annotation equality, except that each dspy.Code[...] is a fresh class: compare languages."""
    if a == b:
        return True
    if isinstance(a, FieldInfo) and isinstance(b, FieldInfo):
        return repr(a) == repr(b)  # FieldInfo has no __eq__; its repr lists every setting
    code: Any = dspy.Code
    if isinstance(a, type) and isinstance(b, type) and issubclass(a, code) and issubclass(b, code):
        return a.__mro__[1] is b.__mro__[1] and a.__dict__.get("language") == b.__dict__.get("language")
    args_a, args_b = typing.get_args(a), typing.get_args(b)
    return (
        bool(args_a)
        and typing.get_origin(a) == typing.get_origin(b)
        and len(args_a) == len(args_b)
        and all(same_type(x, y) for x, y in zip(args_a, args_b, strict=True))
    )


def field_table(sig: Any, *, descriptions: bool = True) -> list[tuple[Any, ...]]:
    """Everything about a signature's fields that a string determines, in order."""
    rows = []
    for name, field in sig.fields.items():
        extra = dict(field.json_schema_extra)
        if not descriptions:
            extra.pop("desc")
        rows.append((name, extra, field.metadata, field.description, field.title))
    return rows


def assert_same_signature(ours: Any, theirs: Any, *, descriptions: bool = True) -> None:
    assert issubclass(ours, dspy.Signature)
    assert list(ours.input_fields) == list(theirs.input_fields)
    assert list(ours.output_fields) == list(theirs.output_fields)
    for name, field in theirs.fields.items():
        assert same_type(ours.fields[name].annotation, field.annotation), (
            name,
            ours.fields[name].annotation,
            field.annotation,
        )
    assert field_table(ours, descriptions=descriptions) == field_table(theirs, descriptions=descriptions)
    if descriptions:
        assert ours.instructions == theirs.instructions
    assert ours.__name__ == theirs.__name__
