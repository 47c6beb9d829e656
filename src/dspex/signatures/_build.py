"""Turn parsed fields into a genuine ``dspy.Signature`` subclass, and cache the result.

``dspy.Signature("...")`` builds its pydantic model twice (once only to compute the default
instructions); we compute the instructions ourselves and call DSPy's ``make_signature`` once with a
fields dict, so the class is built exactly the way DSPy builds it, at half the cost.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any, Final

import dspy
import pydantic
from dspy.signatures.signature import make_signature
from dspy.utils.constants import IS_TYPE_UNDEFINED

from dspex.errors import SignatureError
from dspex.signatures import _parser
from dspex.signatures._parser import ParsedField, ParsedSpec, Reject

#: Distinct (spec, instructions, custom types) combinations kept by :func:`signature`.
CACHE_SIZE: Final = 2048


class _TypesKey:
    """A hashable stand-in for a ``custom_types`` mapping: equal when names and type identities are.

    It holds the snapshot it was built from, so the types stay alive (and their ids unique) for as
    long as a cache entry refers to them.
    """

    __slots__ = ("_hash", "_items", "types")

    def __init__(self, types: Mapping[str, Any]) -> None:
        self.types = dict(types)
        self._items = frozenset((name, id(tp)) for name, tp in self.types.items())
        self._hash = hash(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TypesKey) and other._items == self._items


def signature(
    spec: str,
    instructions: str | None = None,
    custom_types: Mapping[str, Any] | None = None,
    *,
    cache: bool = True,
) -> type[Any]:
    """Compile a signature string into a ``dspy.Signature`` subclass.

    Accepts what ``dspy.Signature(spec)`` accepts (with the differences listed in
    :mod:`dspex.signatures`), plus a quoted description after each field. The result is cached by
    ``(spec, instructions, custom types)``; the returned class is shared, so never mutate it (use
    ``with_instructions`` and friends, which return new classes). ``cache=False`` always compiles.

    >>> QA = signature('question: str "the user question", k: int -> answer "one sentence"')
    >>> list(QA.input_fields), QA.output_fields["answer"].json_schema_extra["desc"]
    (['question', 'k'], 'one sentence')

    Raises :class:`dspex.errors.SignatureError` (with ``.position``) for any invalid string.
    """
    if not isinstance(spec, str):
        raise SignatureError(f"a signature must be a string, got {type(spec).__name__}", spec=None)
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string, got {type(instructions).__name__}", spec=spec)
    key = None if custom_types is None else _types_key(custom_types, spec)
    if not cache:
        return _compile(spec, instructions, key)
    return _compile_cached(spec, instructions, key)


def _types_key(custom_types: Mapping[str, Any], spec: str) -> _TypesKey | None:
    if not isinstance(custom_types, Mapping):
        raise SignatureError(
            f"custom_types must be a mapping of names to types, got {type(custom_types).__name__}",
            spec=spec,
        )
    for name in custom_types:
        if not isinstance(name, str):
            raise SignatureError(f"custom_types keys must be strings, got {name!r}", spec=spec)
    return _TypesKey(custom_types) if custom_types else None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile_cached(spec: str, instructions: str | None, key: _TypesKey | None) -> type[Any]:
    return _compile(spec, instructions, key)


def _compile(spec: str, instructions: str | None, key: _TypesKey | None) -> type[Any]:
    """Parse and build without the cache (what the benchmark calls "cold")."""
    try:
        parsed = _parser.parse(spec, key.types if key is not None else None)
    except Reject as exc:
        raise _signature_error(spec, exc.message, exc.position) from None
    return build(parsed, instructions, spec)


def parse_error(spec: str, custom_types: Mapping[str, Any] | None = None) -> Reject | None:
    """The parser's verdict on ``spec`` without building a class: the rejection, or None (tests)."""
    try:
        _parser.parse(spec, custom_types)
    except Reject as exc:
        return exc
    return None


def _signature_error(spec: str, message: str, position: int | None) -> SignatureError:
    shown = spec if len(spec) <= 80 else spec[:77] + "..."
    where = f" at column {position}" if position is not None else ""
    return SignatureError(f"invalid signature {shown!r}{where}: {message}", spec=spec, position=position)


def default_instructions(inputs: tuple[str, ...], outputs: tuple[str, ...]) -> str:
    """The instructions DSPy writes when none are given.

    >>> default_instructions(("a", "b"), ("c",))
    'Given the fields `a`, `b`, produce the fields `c`.'
    """
    inputs_ = ", ".join(f"`{name}`" for name in inputs)
    outputs_ = ", ".join(f"`{name}`" for name in outputs)
    return f"Given the fields {inputs_}, produce the fields {outputs_}."


def _input_field(field: ParsedField) -> Any:
    if field.description is None:
        return dspy.InputField(**{IS_TYPE_UNDEFINED: not field.typed})
    return dspy.InputField(desc=field.description, **{IS_TYPE_UNDEFINED: not field.typed})


def _output_field(field: ParsedField) -> Any:
    if field.description is None:
        return dspy.OutputField()
    return dspy.OutputField(desc=field.description)


def build(parsed: ParsedSpec, instructions: str | None, spec: str) -> type[Any]:
    """Build the DSPy class for parsed fields; pydantic's refusals become SignatureError."""
    fields: dict[str, tuple[Any, Any]] = {}
    for field in parsed.inputs:
        fields[field.name] = (field.annotation, _input_field(field))
    for field in parsed.outputs:
        fields[field.name] = (field.annotation, _output_field(field))
    if instructions is None:
        instructions = default_instructions(
            tuple(f.name for f in parsed.inputs), tuple(f.name for f in parsed.outputs)
        )
    try:
        cls: type[Any] = make_signature(fields, instructions)
    except Exception as exc:  # pydantic rejects some allow-listed combinations (list[1], Literal...)
        failing = _failing_field(parsed)
        position = failing.position if failing is not None else None
        what = f"field {failing.name!r} has an invalid type: " if failing is not None else ""
        raise _signature_error(spec, f"{what}{_first_line(exc)}", position) from None
    return cls


def _failing_field(parsed: ParsedSpec) -> ParsedField | None:
    """Which field pydantic refused (only called on the error path, so the cost does not matter)."""
    for field in (*parsed.inputs, *parsed.outputs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                pydantic.TypeAdapter(field.annotation)
        except Exception:
            return field
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
