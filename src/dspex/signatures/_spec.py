"""Write a signature class back to a string that :func:`dspex.signature` parses into an equal one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dspy.signatures.signature import infer_prefix
from dspy.utils.constants import IS_TYPE_UNDEFINED
from pydantic.fields import FieldInfo

from dspex.errors import SignatureError
from dspex.signatures import _types

# json_schema_extra keys a signature string can express (the rest, such as `constraints` from
# InputField(ge=...), cannot be written back and make to_spec refuse).
_EXPRESSIBLE: Final = frozenset({"desc", "prefix", "__dspy_field_type", IS_TYPE_UNDEFINED})


def to_spec(
    sig: type[Any], *, custom_types: Mapping[str, Any] | None = None, descriptions: bool = True
) -> str:
    """Write ``sig`` as a signature string, with types and (unless told not to) descriptions.

    ``signature(to_spec(sig), sig.instructions, custom_types)`` is equal to ``sig``: same fields in
    the same order, annotations, descriptions and prefixes. Custom types are written under the name
    they have in ``custom_types``.

    >>> to_spec(signature('question, k: int "how many" -> answer: list[str]'))
    'question, k: int "how many" -> answer: list[str]'

    Raises :class:`dspex.errors.SignatureError` when the signature holds something a string cannot
    express (a custom prefix, a type with no name, a pydantic constraint given to InputField).
    """
    fields = _fields(sig)
    names = {id(tp): name for name, tp in (custom_types or {}).items()}
    inputs: list[str] = []
    outputs: list[str] = []
    for name, field in fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rendered = _field_spec(sig, name, field, extra, names, descriptions=descriptions)
        (inputs if extra.get("__dspy_field_type") == "input" else outputs).append(rendered)
    return f"{', '.join(inputs)} -> {', '.join(outputs)}"


def _fields(sig: type[Any]) -> dict[str, FieldInfo]:
    fields = getattr(sig, "fields", None)
    if not isinstance(fields, dict):
        raise SignatureError(f"to_spec() needs a dspy.Signature class, got {sig!r}")
    return fields


def _field_spec(
    sig: type[Any],
    name: str,
    field: FieldInfo,
    extra: dict[str, Any],
    names: Mapping[int, str],
    *,
    descriptions: bool,
) -> str:
    def refuse(why: str) -> SignatureError:
        return SignatureError(f"cannot write {sig.__name__} as a string: field {name!r} {why}")

    unknown = set(extra) - _EXPRESSIBLE
    if unknown:
        raise refuse(f"has settings a string cannot express: {', '.join(sorted(unknown))}")
    if extra.get("prefix", infer_prefix(name) + ":") != infer_prefix(name) + ":":
        raise refuse(f"has a custom prefix {extra['prefix']!r}")
    try:
        type_text = _types.type_to_spec(field.annotation, names)
    except ValueError as exc:
        raise refuse(f"{exc}; pass custom_types={{'Name': type}}") from None
    meta = _types.field_kwargs(field)
    if meta is None:
        raise refuse(f"has metadata a string cannot express: {field.metadata!r}")
    if meta:
        type_text = f"Annotated[{type_text}, Field({', '.join(f'{k}={v!r}' for k, v in meta.items())})]"
    is_input = extra.get("__dspy_field_type") == "input"
    untyped = extra.get(IS_TYPE_UNDEFINED) is True if is_input else type_text == "str"
    text = name if untyped and type_text == "str" else f"{name}: {type_text}"
    desc = extra.get("desc")
    if descriptions and isinstance(desc, str) and desc != f"${{{name}}}":
        text += " " + _quote(desc)
    return text


def _quote(text: str) -> str:
    # Prefer double quotes (the documented form); repr() picks single quotes when it can.
    if '"' not in text:
        return '"' + repr("'" + text)[2:-1] + '"'
    return repr(text)
