"""Check and coerce input or output values against a signature's fields with pydantic.

One ``TypeAdapter`` per field, built on first use and kept per signature class (weakly, so classes
that go away take their adapters with them). Rules:

- a field whose type admits ``None`` (``Optional[...]``) may be omitted and becomes ``None``; every
  other field is required;
- a name that is not a field of that side is an error;
- an input declared without a type (``question`` in ``"question -> answer"``) accepts any value
  unchanged: DSPy formats whatever it is given there, and callers often pass lists to such fields;
- values are validated in pydantic's lax mode, so ``"3"`` becomes ``3`` for an ``int`` field, and a
  ``dspy.Image`` field takes what ``dspy.Image`` validation takes (an Image, a URL, a data URI...).
"""

from __future__ import annotations

import reprlib
import threading
import types
import typing
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import pydantic
from dspy.utils.constants import IS_TYPE_UNDEFINED
from pydantic.fields import FieldInfo

from dspex.errors import FieldIssue, ValidationError
from dspex.signatures import _types

Side = Literal["inputs", "outputs"]

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 5
_repr.maxdict = 5


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    adapter: pydantic.TypeAdapter[Any] | None  # None: accept anything unchanged
    expected: str
    optional: bool


_lock: Final = threading.Lock()
_checks: Final[weakref.WeakKeyDictionary[type[Any], dict[Side, dict[str, _FieldCheck]]]] = (
    weakref.WeakKeyDictionary()
)


def validate_inputs(sig: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and coerce input values for ``sig``; return them in field order.

    >>> QA = signature("question, k: int -> answer")
    >>> validate_inputs(QA, {"question": "why?", "k": "3"})
    {'question': 'why?', 'k': 3}

    Raises :class:`dspex.errors.ValidationError` naming every failing, missing or unknown field.
    """
    return _validate(sig, data, "inputs")


def validate_outputs(sig: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and coerce output values for ``sig`` (a prediction's fields); same rules as inputs.

    >>> validate_outputs(signature("q -> score: float"), {"score": "0.5"})
    {'score': 0.5}
    """
    return _validate(sig, data, "outputs")


def _validate(sig: type[Any], data: Mapping[str, Any], side: Side) -> dict[str, Any]:
    checks = _field_checks(sig, side)
    if not isinstance(data, Mapping):
        raise ValidationError(f"{side} must be a mapping of field names to values, got {type(data).__name__}")
    result: dict[str, Any] = {}
    issues: list[FieldIssue] = []
    for name, check in checks.items():
        if name not in data:
            if check.optional:
                result[name] = None
            else:
                issues.append(FieldIssue(name, check.expected, "missing"))
            continue
        value = data[name]
        if check.adapter is None:
            result[name] = value
            continue
        try:
            result[name] = check.adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            issues.append(FieldIssue(name, check.expected, _problem(value, exc)))
    for name in data:
        if name not in checks:
            expected = f"one of {', '.join(checks)}" if checks else f"no {side}"
            issues.append(FieldIssue(str(name), expected, "unexpected field"))
    if issues:
        issues.sort(key=lambda issue: issue.field)
        parts = "; ".join(_issue_text(issue) for issue in issues)
        raise ValidationError(
            f"{side} do not match signature `{_signature_text(sig)}`: {parts}", issues=tuple(issues)
        )
    return result


def _issue_text(issue: FieldIssue) -> str:
    if issue.message.startswith("got "):
        return f"{issue.field}: expected {issue.expected}, {issue.message}"
    return f"{issue.field}: {issue.message}"


def _problem(value: Any, exc: pydantic.ValidationError) -> str:
    text = f"got {_repr.repr(value)}"
    errors = exc.errors(include_url=False)
    if errors and errors[0]["loc"]:
        first = errors[0]
        loc = "".join(f"[{part!r}]" for part in first["loc"])
        more = f", and {len(errors) - 1} more" if len(errors) > 1 else ""
        text += f" (at {loc}: {first['msg']}{more})"
    return text


def _field_checks(sig: type[Any], side: Side) -> dict[str, _FieldCheck]:
    hit = _recent.get(id(sig))
    if hit is not None and hit[0] is sig:  # a signature of a recent run: no lock, no weakref
        return hit[1][side]
    try:
        with _lock:
            cached = _checks.get(sig)
    except TypeError:  # not weak-referenceable, so not a class: reported below
        cached = None
    if cached is not None:
        _remember(sig, cached)
        return cached[side]
    fields_in = getattr(sig, "input_fields", None)
    fields_out = getattr(sig, "output_fields", None)
    if not isinstance(fields_in, dict) or not isinstance(fields_out, dict):
        raise ValidationError(f"expected a dspy.Signature class, got {sig!r}")
    built: dict[Side, dict[str, _FieldCheck]] = {
        "inputs": {name: _check(field) for name, field in fields_in.items()},
        "outputs": {name: _check(field) for name, field in fields_out.items()},
    }
    with _lock:
        # Two threads may build at once; the first stored wins so every caller shares one set.
        cached = _checks.setdefault(sig, built)
    _remember(sig, cached)
    return cached[side]


# The signatures of the latest runs, by id (each entry holds its class, so an id cannot be reused while
# cached; bounded, since signatures may be made per call).
_recent: dict[int, tuple[type[Any], dict[Side, dict[str, _FieldCheck]]]] = {}


def _remember(sig: type[Any], checks: dict[Side, dict[str, _FieldCheck]]) -> None:
    if len(_recent) >= 64:
        _recent.clear()
    _recent[id(sig)] = (sig, checks)


def _check(field: FieldInfo) -> _FieldCheck:
    annotation = field.annotation
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    expected = _types.describe_type(annotation)
    if extra.get(IS_TYPE_UNDEFINED) is True and extra.get("__dspy_field_type") == "input":
        return _FieldCheck(None, "any value", optional=False)
    target: Any = annotation
    if field.metadata:
        target = typing.Annotated[(annotation, *field.metadata)]
    return _FieldCheck(pydantic.TypeAdapter(target), expected, optional=_admits_none(annotation))


def _admits_none(annotation: Any) -> bool:
    if annotation is _types.NoneType:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return _types.NoneType in typing.get_args(annotation)
    return False


def _signature_text(sig: type[Any]) -> str:
    """``question, k: int -> answer``: names, and types where declared, for messages."""

    def side(fields: dict[str, FieldInfo]) -> str:
        parts = []
        for name, field in fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            untyped = extra.get(IS_TYPE_UNDEFINED) is True or (
                extra.get("__dspy_field_type") == "output" and field.annotation is str
            )
            parts.append(name if untyped else f"{name}: {_types.describe_type(field.annotation)}")
        return ", ".join(parts)

    return f"{side(sig.input_fields)} -> {side(sig.output_fields)}"
