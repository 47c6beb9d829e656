"""Parse a signature string into fields, without evaluating anything in it.

The string is scanned once by hand (brackets, string literals, the ``->`` and the commas between
fields); each type expression is then parsed with :func:`ast.parse` and resolved by walking the tree
against the allow-list in ``_types``. No text is ever passed to ``eval``, ``exec`` or ``import``.

Every problem raises :class:`Reject` with a ``kind`` (stable, for tests), a message and a 0-based
character offset. ``STRICTER_THAN_DSPY`` lists the kinds for which ``dspy.Signature`` may accept the
string; the module docstring of :mod:`dspex.signatures` explains each one.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import pydantic

from dspex.signatures import _types

RejectKind = Literal[
    "arrow",  # no '->', or more than one
    "attribute",  # attribute access outside the allow-list
    "backslash",  # a line continuation outside a string literal
    "call",  # a call other than Field(...) inside Annotated[...]
    "comment",  # '#' outside a string literal
    "default",  # `x: int = 3`
    "description",  # the quoted description is not a plain string literal
    "duplicate",  # a name repeated on the same side of '->'
    "duplicate_io",  # a name both an input and an output
    "expression",  # a syntactically valid expression that is not a type (lambda, 1 + 2, [int]...)
    "field_keyword",  # Field(...) with a keyword or value outside the allow-list
    "forward_ref",  # a quoted type name: list['int']
    "invalid_type",  # names resolve, but the result is not a valid field type
    "name",  # not an identifier, a keyword, or a leading underscore
    "nesting",  # brackets or operators nested deeper than MAX_DEPTH
    "nfkc",  # an identifier that Python would silently rewrite (NFKC normalization)
    "none_type",  # `x: None`
    "reserved",  # a name that shadows a Signature attribute or a Predict keyword
    "star",  # *args, **kwargs, bare '*' or '/'
    "syntax",  # anything Python cannot parse
    "unbalanced",  # a bracket closed without being opened, or never closed
    "unknown_name",  # a name outside the allow-list and custom_types
]

#: Kinds for which dspy.Signature may accept the string (documented in dspex.signatures).
STRICTER_THAN_DSPY: Final[frozenset[RejectKind]] = frozenset(
    {
        "attribute",
        "backslash",
        "call",
        "comment",
        "default",
        "duplicate",
        "field_keyword",
        "forward_ref",
        "nesting",
        "nfkc",
        "none_type",
        "reserved",
        "star",
        "unbalanced",
        "unknown_name",
    }
)

Extension = Literal["description", "bare_dspy_type", "arrow_in_string"]

#: Deepest bracket or expression nesting accepted. Python's own parser gives up near 200 and our
#: resolver recurses once per level, so a fixed bound keeps every failure a clean SignatureError.
MAX_DEPTH: Final = 64

_WHITESPACE: Final = frozenset(" \t\n\r\f")
_OPEN: Final = {"(": ")", "[": "]", "{": "}"}
_CLOSE: Final = {")": "(", "]": "[", "}": "{"}
_STRING_PREFIXES: Final = frozenset({"r", "u", "b", "f", "rb", "br", "fr", "rf"})


class Reject(Exception):
    """A signature string is invalid: ``kind`` says how, ``position`` where (0-based)."""

    def __init__(self, kind: RejectKind, message: str, position: int | None) -> None:
        super().__init__(message)
        self.kind: RejectKind = kind
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class ParsedField:
    """One field of a signature string."""

    name: str
    annotation: Any
    typed: bool
    description: str | None
    position: int


@dataclass(frozen=True, slots=True)
class ParsedSpec:
    """The fields of a signature string, and which dspex-only syntax it used."""

    inputs: tuple[ParsedField, ...]
    outputs: tuple[ParsedField, ...]
    extensions: frozenset[Extension]


@dataclass(slots=True)
class _Scan:
    arrows: list[int]
    commas: list[int]  # depth-0 commas outside strings
    strings: list[tuple[int, int, int]]  # (quote start, end exclusive, depth)


def _scan(spec: str) -> _Scan:
    """One pass over the text: find arrows, top-level commas and string literals; check brackets."""
    arrows: list[int] = []
    commas: list[int] = []
    strings: list[tuple[int, int, int]] = []
    stack: list[int] = []
    i, n = 0, len(spec)
    while i < n:
        ch = spec[i]
        if ch in "'\"":
            end = _string_end(spec, i)
            strings.append((i, end, len(stack)))
            i = end
            continue
        if ch in _OPEN:
            stack.append(i)
            if len(stack) > MAX_DEPTH:
                raise Reject("nesting", f"brackets nested deeper than {MAX_DEPTH} levels", i)
        elif ch in _CLOSE:
            if not stack or spec[stack[-1]] != _CLOSE[ch]:
                raise Reject("unbalanced", f"unmatched {ch!r}", i)
            stack.pop()
        elif ch == "," and not stack:
            commas.append(i)
        elif ch == "-" and spec.startswith("->", i):
            if stack:
                raise Reject("unbalanced", f"{spec[stack[-1]]!r} is not closed before '->'", stack[-1])
            arrows.append(i)
            i += 2
            continue
        elif ch == "#":
            raise Reject("comment", "comments ('#') are not allowed outside quotes", i)
        elif ch == "\\":
            raise Reject("backslash", "a backslash is only allowed inside quotes", i)
        elif ch == "\0":
            raise Reject("syntax", "NUL character", i)
        i += 1
    if stack:
        raise Reject("unbalanced", f"{spec[stack[-1]]!r} is never closed", stack[-1])
    return _Scan(arrows, commas, strings)


def _string_end(spec: str, start: int) -> int:
    """The index just past the string literal whose opening quote is at ``start``."""
    quote = spec[start]
    triple = spec.startswith(quote * 3, start)
    i = start + (3 if triple else 1)
    n = len(spec)
    while i < n:
        ch = spec[i]
        if ch == "\\":
            i += 2
            continue
        if triple:
            if spec.startswith(quote * 3, i):
                return i + 3
        elif ch == quote:
            return i + 1
        elif ch == "\n":
            break
        i += 1
    raise Reject("syntax", "unterminated string literal", start)


def parse(spec: str, custom_types: Mapping[str, Any] | None = None) -> ParsedSpec:
    """Parse ``spec`` into input and output fields, or raise :class:`Reject`.

    >>> [f.name for f in parse("question, k: int -> answer").inputs]
    ['question', 'k']
    """
    scan = _scan(spec)
    if not scan.arrows:
        raise Reject("arrow", "missing '->' between the inputs and the outputs", len(spec))
    if len(scan.arrows) > 1:
        raise Reject("arrow", "more than one '->'", scan.arrows[1])
    arrow = scan.arrows[0]
    extensions: set[Extension] = set()
    if spec.count("->") != 1:
        extensions.add("arrow_in_string")
    parser = _FieldParser(spec, scan, custom_types or {}, extensions)
    inputs = parser.side(0, arrow, is_input=True)
    outputs = parser.side(arrow + 2, len(spec), is_input=False)
    seen = {f.name: f for f in inputs}
    for field in outputs:
        if field.name in seen:
            raise Reject(
                "duplicate_io",
                f"{field.name!r} is both an input and an output (input at column "
                f"{seen[field.name].position}); inputs and outputs need distinct names",
                field.position,
            )
    return ParsedSpec(inputs, outputs, frozenset(extensions))


class _FieldParser:
    """Parses the fields between two offsets; keeps the scan and the type resolver together."""

    def __init__(
        self, spec: str, scan: _Scan, custom_types: Mapping[str, Any], extensions: set[Extension]
    ) -> None:
        self.spec = spec
        self.scan = scan
        self.custom_types = custom_types
        self.extensions = extensions

    def side(self, start: int, end: int, *, is_input: bool) -> tuple[ParsedField, ...]:
        cuts = [c for c in self.scan.commas if start <= c < end]
        bounds = list(zip([start, *(c + 1 for c in cuts)], [*cuts, end], strict=True))
        fields: dict[str, ParsedField] = {}
        for index, (a, b) in enumerate(bounds):
            if self.spec[a:b].strip(" \t\n\r\f") == "":
                # Python allows one trailing comma after at least one field, and an empty side.
                trailing = index == len(bounds) - 1 and (index > 0 or not cuts)
                if trailing:
                    continue
                raise Reject("syntax", "empty field (two commas in a row, or a leading comma)", a)
            field = self.field(a, b, is_input=is_input)
            if field.name in fields:
                raise Reject(
                    "duplicate",
                    f"duplicate field {field.name!r} (first at column {fields[field.name].position})",
                    field.position,
                )
            fields[field.name] = field
        return tuple(fields.values())

    def field(self, start: int, end: int, *, is_input: bool) -> ParsedField:
        spec = self.spec
        p = _skip_ws(spec, start, end)
        body_end, description = self.description(p, end)
        name_end = _identifier_end(spec, p, body_end)
        if name_end == p:
            ch = spec[p]
            if ch in "*/":
                raise Reject("star", f"{ch!r} parameters are not fields; write plain names", p)
            raise Reject("name", f"expected a field name, found {ch!r}", p)
        name = spec[p:name_end]
        _check_name(name, p, is_input=is_input)
        q = _skip_ws(spec, name_end, body_end)
        if q == body_end:
            return ParsedField(name, str, False, description, p)
        ch = spec[q]
        if ch == "=":
            raise Reject("default", f"field {name!r} has a default value; defaults are not supported", q)
        if ch != ":":
            raise Reject("syntax", f"unexpected {ch!r} after field name {name!r}", q)
        type_start = _skip_ws(spec, q + 1, body_end)
        if type_start == body_end:
            raise Reject("syntax", f"missing type after ':' for field {name!r}", q)
        annotation = self.type_expression(name, type_start, body_end)
        return ParsedField(name, annotation, True, description, p)

    def description(self, start: int, end: int) -> tuple[int, str | None]:
        """Split a trailing quoted description off the field text: (end of the rest, description)."""
        last = None
        for s in self.scan.strings:
            if start <= s[0] < end and s[2] == 0:
                last = s
        if last is None or not _tail_blank(self.spec, last[1], end):
            return _rstrip(self.spec, start, end), None
        quote = last[0]
        prefix_start = quote
        while prefix_start > start and _is_identifier_char(self.spec[prefix_start - 1]):
            prefix_start -= 1
        if self.spec[prefix_start:quote].lower() not in _STRING_PREFIXES:
            prefix_start = quote
        if prefix_start == start:
            raise Reject("name", "expected a field name before the description", start)
        before = _rstrip(self.spec, start, prefix_start)
        if self.spec[before - 1] not in "])}'\"" and not _is_identifier_char(self.spec[before - 1]):
            # After an operator (`str | 'int'`, `x: 'int'`) the string belongs to the type expression.
            return _rstrip(self.spec, start, end), None
        literal = self.spec[prefix_start : last[1]]
        try:
            node = ast.parse(literal, mode="eval").body
        except (SyntaxError, ValueError) as exc:
            raise Reject("description", f"invalid description string: {_syntax_msg(exc)}", quote) from None
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            raise Reject("description", "a description must be a plain string literal", prefix_start)
        self.extensions.add("description")
        return _rstrip(self.spec, start, prefix_start), node.value

    def type_expression(self, name: str, start: int, end: int) -> Any:
        text = self.spec[start:end]
        try:
            tree = ast.parse(f"({text})", mode="eval")
        except SyntaxError as exc:
            position = _source_position(text, start, exc.lineno or 1, exc.offset or 1)
            default = _default_sign(self.spec, start, end, self.scan)
            if default is not None:
                raise Reject(
                    "default", f"field {name!r} has a default value; defaults are not supported", default
                ) from None
            raise Reject("syntax", f"invalid type for field {name!r}: {exc.msg}", position) from None
        except (RecursionError, MemoryError, ValueError, OverflowError):
            raise Reject("nesting", f"type of field {name!r} is too deeply nested", start) from None
        node = tree.body
        if isinstance(node, ast.Constant) and node.value is None:
            raise Reject(
                "none_type",
                f"field {name!r} has type None; use Optional[...] (dspy.Signature silently makes it str)",
                start,
            )
        resolver = _Resolver(self, start)
        annotation = resolver.resolve(node, strings_ok=False, calls_ok=False, depth=0)
        if not _types.is_field_type(annotation):
            raise Reject("invalid_type", f"the type of field {name!r} is not a type: {annotation!r}", start)
        return annotation


class _Resolver:
    """Turns a type-expression AST into a type using only allow-listed names."""

    def __init__(self, fields: _FieldParser, start: int) -> None:
        self.fields = fields
        self.custom_types = fields.custom_types
        # The parsed text is "(" + spec[start:end] + ")": line 1, column c is spec[start + c - 1].
        self.start = start
        self.lines = f"({fields.spec[start:]}".split("\n")

    def position(self, node: ast.AST) -> int:
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        offset = sum(len(line) + 1 for line in self.lines[: lineno - 1])
        char_col = len(self.lines[lineno - 1].encode()[:col].decode("utf-8", "ignore"))
        return max(self.start, self.start + offset + char_col - 1)

    def reject(self, kind: RejectKind, message: str, node: ast.AST) -> Reject:
        return Reject(kind, message, self.position(node))

    def resolve(self, node: ast.expr, *, strings_ok: bool, calls_ok: bool, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.reject("nesting", f"type nested deeper than {MAX_DEPTH} levels", node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left = self.resolve(node.left, strings_ok=False, calls_ok=False, depth=depth + 1)
            right = self.resolve(node.right, strings_ok=False, calls_ok=False, depth=depth + 1)
            # Same construction as dspy.Signature, so the annotations compare equal.
            try:
                if right is _types.NoneType:
                    return typing.Optional[left]  # noqa: UP045  (DSPy's exact construction)
                if left is _types.NoneType:
                    return typing.Optional[right]  # noqa: UP045
                return typing.Union[left, right]  # noqa: UP007
            except Exception as exc:  # typing's own checks, on values we built
                raise self.reject("invalid_type", f"invalid union: {exc}", node) from None
        if isinstance(node, ast.Tuple):
            return tuple(
                self.resolve(e, strings_ok=strings_ok, calls_ok=calls_ok, depth=depth + 1) for e in node.elts
            )
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not strings_ok:
                raise self.reject(
                    "forward_ref",
                    f"quoted type {node.value!r}: write the type without quotes (quoted names are "
                    "forward references that pydantic would evaluate)",
                    node,
                )
            return node.value
        if isinstance(node, ast.Call):
            if calls_ok:
                return self.field_call(node)
            raise self.reject("call", "calls are not allowed in a type (only Field(...) in Annotated)", node)
        raise self.reject("expression", f"{_describe_node(node)} is not allowed in a type", node)

    def name(self, node: ast.Name) -> Any:
        ident = node.id
        if ident in self.custom_types:
            return self.custom_types[ident]
        if ident in _types.NAMES:
            if ident in _types.DSPY_TYPE_NAMES:
                self.fields.extensions.add("bare_dspy_type")
            return _types.NAMES[ident]
        known = [*self.custom_types, *_types.NAMES, *_types.DOTTED]
        close = difflib.get_close_matches(ident, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise self.reject(
            "unknown_name",
            f"unknown type {ident!r}{hint} (use a builtin, typing or dspy type, or pass custom_types)",
            node,
        )

    def attribute(self, node: ast.Attribute) -> Any:
        parts: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name):
            raise self.reject("attribute", "attribute access is only allowed on dotted names", node)
        parts.append(current.id)
        dotted = ".".join(reversed(parts))
        if dotted in self.custom_types:
            return self.custom_types[dotted]
        if dotted in _types.DOTTED:
            return _types.DOTTED[dotted]
        if current.id in self.custom_types:
            found = _static_path(self.custom_types[current.id], list(reversed(parts[:-1])))
            if found is not None:
                return found
        close = difflib.get_close_matches(dotted, list(_types.DOTTED), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise self.reject(
            "attribute",
            f"attribute access {dotted!r} is not allowed{hint} (allowed: dspy.<type>, typing.<name>, "
            "datetime/decimal/uuid types, or names passed in custom_types)",
            node,
        )

    def subscript(self, node: ast.Subscript, depth: int) -> Any:
        base = self.resolve(node.value, strings_ok=False, calls_ok=False, depth=depth + 1)
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        # Literal values and dspy.Code's language are strings, not forward references.
        literal = base is typing.Literal or base is _types.DSPY_CODE
        annotated = base is typing.Annotated
        args = tuple(
            self.resolve(
                e,
                strings_ok=literal or (annotated and i > 0),
                calls_ok=annotated and i > 0,
                depth=depth + 1,
            )
            for i, e in enumerate(elts)
        )
        if base is typing.Optional and len(args) != 1:
            raise self.reject("invalid_type", "Optional takes exactly one type", node)
        try:
            # Optional[(X,)] is an error, so unpack it the way dspy.Signature does.
            return typing.Optional[args[0]] if base is typing.Optional else base[args]  # noqa: UP045
        except Exception as exc:  # typing's checks, or a custom type's __class_getitem__
            raise self.reject("invalid_type", f"invalid type arguments: {exc}", node) from None

    def field_call(self, node: ast.Call) -> Any:
        if not (isinstance(node.func, ast.Name) and node.func.id == "Field"):
            raise self.reject("call", "only Field(...) may be called, inside Annotated[...]", node)
        if node.args:
            raise self.reject("field_keyword", "Field(...) takes keyword arguments only", node)
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None or kw.arg not in _types.FIELD_KEYWORDS:
                allowed = ", ".join(sorted(_types.FIELD_KEYWORDS))
                raise self.reject("field_keyword", f"Field keyword {kw.arg!r} not allowed; use {allowed}", kw)
            if not isinstance(kw.value, ast.Constant):
                raise self.reject("field_keyword", f"Field({kw.arg}=...) must be a literal", kw.value)
            kwargs[kw.arg] = kw.value.value
        try:
            return pydantic.Field(**kwargs)
        except Exception as exc:
            raise self.reject("field_keyword", f"invalid Field(...): {exc}", node) from None


def _static_path(obj: Any, path: list[str]) -> Any:
    """Follow ``a.b.c`` through module and class namespaces without running any descriptor."""
    for attr in path:
        namespace = getattr(obj, "__dict__", None)
        if not isinstance(namespace, Mapping) or attr not in namespace:
            return None
        obj = namespace[attr]
    return obj if _types.is_field_type(obj) else None


def _check_name(name: str, position: int, *, is_input: bool) -> None:
    if not name.isidentifier():
        raise Reject("name", f"{name!r} is not a valid identifier", position)
    if keyword.iskeyword(name):
        raise Reject("name", f"{name!r} is a Python keyword and cannot be a field name", position)
    if not name.isascii() and unicodedata.normalize("NFKC", name) != name:
        normal = unicodedata.normalize("NFKC", name)
        raise Reject("nfkc", f"field name {name!r} is not NFKC-normalized; write {normal!r}", position)
    if name.startswith("_"):
        raise Reject("name", f"field name {name!r} starts with '_'; pydantic forbids it", position)
    if name in _types.RESERVED or name.startswith(_types.PROTECTED_PREFIXES):
        raise Reject("reserved", f"field name {name!r} shadows a dspy.Signature attribute", position)
    if is_input and name in _types.RESERVED_INPUTS:
        raise Reject("reserved", f"input name {name!r} is taken by dspy.Predict as its own keyword", position)


def _is_identifier_char(ch: str) -> bool:
    return (ch.isascii() and (ch.isalnum() or ch == "_")) or (not ch.isascii() and ("a" + ch).isidentifier())


def _identifier_end(spec: str, start: int, end: int) -> int:
    i = start
    while i < end and _is_identifier_char(spec[i]):
        i += 1
    return i


def _skip_ws(spec: str, start: int, end: int) -> int:
    while start < end and spec[start] in _WHITESPACE:
        start += 1
    return start


def _rstrip(spec: str, start: int, end: int) -> int:
    while end > start and spec[end - 1] in _WHITESPACE:
        end -= 1
    return end


def _tail_blank(spec: str, start: int, end: int) -> bool:
    """Whether only whitespace lies between ``start`` and ``end``."""
    return _skip_ws(spec, start, end) == end


def _default_sign(spec: str, start: int, end: int, scan: _Scan) -> int | None:
    """The offset of a top-level '=' (a default value) in spec[start:end], outside strings."""
    depth = 0
    inside = [(s, e) for s, e, _ in scan.strings if start <= s < end]
    i = start
    while i < end:
        if inside and inside[0][0] == i:
            i = inside.pop(0)[1]
            continue
        ch = spec[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "=" and depth == 0:
            before = spec[i - 1] if i > start else ""
            after = spec[i + 1] if i + 1 < end else ""
            if before not in "=!<>:" and after != "=":
                return i
        i += 1
    return None


def _source_position(text: str, start: int, lineno: int, offset: int) -> int:
    """Map a 1-based (line, character) in "(" + text + ")" back to an offset in the spec."""
    lines = f"({text})".split("\n")
    index = sum(len(line) + 1 for line in lines[: lineno - 1]) + offset - 1
    return start + min(max(index - 1, 0), len(text))


def _syntax_msg(exc: Exception) -> str:
    return exc.msg if isinstance(exc, SyntaxError) else str(exc)


def _describe_node(node: ast.AST) -> str:
    names = {
        ast.Lambda: "a lambda",
        ast.List: "a list",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.Starred: "a starred expression",
        ast.Compare: "a comparison",
        ast.BinOp: "an operator other than '|'",
        ast.UnaryOp: "a unary operator",
        ast.BoolOp: "'and'/'or'",
        ast.IfExp: "a conditional expression",
        ast.NamedExpr: "':='",
        ast.JoinedStr: "an f-string",
        ast.Slice: "a slice",
    }
    for cls, text in names.items():
        if isinstance(node, cls):
            return text
    return f"a {type(node).__name__} expression"
