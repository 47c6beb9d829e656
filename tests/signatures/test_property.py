"""Property tests: random and mutated strings against dspy.Signature, and to_spec round trips."""

from __future__ import annotations

import datetime
import typing
from typing import Any

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.errors import SignatureError
from dspex.signatures import signature, to_spec
from dspex.signatures._build import parse_error
from dspex.signatures._parser import STRICTER_THAN_DSPY, parse

from ._oracle import assert_same_signature, dspy_is_safe_on, run_dspy

NAMES = ["a", "b", "question", "context", "answer", "x", "y1", "k", "docs", "scoreValue", "image"]
ODD_NAMES = ["schema", "_x", "lm", "1a", "class", "\ufb01", "\u00e9t\u00e9", "instructions", "match"]
LEAF_TYPES = [
    "str",
    "int",
    "float",
    "bool",
    "bytes",
    "Any",
    "None",
    "NoneType",
    "Text",
    "dspy.Image",
    "Image",
    "dspy.History",
    "datetime.datetime",
    "typing.Any",
    "'int'",
    "ClassVar",
    "complex",
    "dspy.Code",
]
LITERALS = ["'a'", "1", "True", "None", "'->'", "b'x'", "-1", "1.5"]

types_ = st.recursive(
    st.sampled_from(LEAF_TYPES),
    lambda inner: st.one_of(
        st.builds("list[{}]".format, inner),
        st.builds("List[{}]".format, inner),
        st.builds("dict[str, {}]".format, inner),
        st.builds("Dict[{}, {}]".format, inner, inner),
        st.builds("Optional[{}]".format, inner),
        st.builds("Union[{}, {}]".format, inner, inner),
        st.builds("{} | {}".format, inner, inner),
        st.builds("tuple[{}, ...]".format, inner),
        st.builds("Tuple[{}, {}]".format, inner, inner),
        st.builds("set[{}]".format, inner),
        st.builds("Annotated[{}, Field(ge=1)]".format, inner),
        st.builds(
            lambda xs: f"Literal[{', '.join(xs)}]",
            st.lists(st.sampled_from(LITERALS), min_size=1, max_size=3),
        ),
    ),
    max_leaves=4,
)
descriptions = st.one_of(st.none(), st.sampled_from(['"the input"', "'a, b -> c'", '""', 'r"raw"', 'b"x"']))


@st.composite
def fields(draw: st.DrawFn) -> str:
    name = draw(
        st.sampled_from(NAMES) | st.sampled_from(ODD_NAMES).filter(lambda _: draw(st.integers(0, 9)) == 0)
    )
    text = name
    if draw(st.booleans()):
        text += ": " + draw(types_)
    desc = draw(descriptions) if draw(st.integers(0, 9)) == 0 else None
    if desc is not None:
        text += " " + desc
    return text


@st.composite
def specs(draw: st.DrawFn) -> str:
    inputs = draw(st.lists(fields(), min_size=0, max_size=3))
    outputs = draw(st.lists(fields(), min_size=0, max_size=2))
    return ", ".join(inputs) + draw(st.sampled_from([" -> ", "->", " ->\n "])) + ", ".join(outputs)


ALPHABET = [
    *"abxyz019_:,->[]()|'\". =*/#\\\n\t{}\u00e9",
    "->",
    ", ",
    ": ",
    "int",
    "str",
    "list[",
    "Optional[",
    "Literal[",
    "None",
    "dspy.",
    "Image",
    "'a'",
    '"desc"',
    "|",
    "= 3",
    "*",
    "**",
    "/",
    "lambda: ",
    "Field(",
    "...",
    "typing.",
    "#",
    "os.path",
    "[[[",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(specs())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        i = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 3)) :]
        else:
            text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i + 1 :]
    return text


random_text = st.lists(st.sampled_from(ALPHABET + NAMES + LEAF_TYPES), max_size=12).map("".join)


def check_against_dspy(spec: str) -> None:
    try:
        ours: Any = signature(spec, cache=False)
    except SignatureError as exc:
        ours = exc
    # Anything but SignatureError escaping signature() fails the test right here.
    if not dspy_is_safe_on(spec):
        return
    theirs = run_dspy(spec)
    ours_ok, theirs_ok = isinstance(ours, type), isinstance(theirs, type)
    if ours_ok and theirs_ok:
        assert_same_signature(ours, theirs)
    elif ours_ok:
        # Accepted only by dspex: it must use a dspex extension, and without the extension
        # (descriptions dropped, dspy.Image spelled out) DSPy must agree field for field.
        assert parse(spec).extensions, (spec, theirs)
        plain = to_spec(ours, descriptions=False)
        if plain.count("->") == 1:
            again = run_dspy(plain)
            assert isinstance(again, type), (spec, plain, again)
            assert_same_signature(ours, again, descriptions=False)
    elif theirs_ok:
        reject = parse_error(spec)
        assert reject is not None, f"dspex's class build refused {spec!r}, which DSPy accepts: {ours}"
        assert reject.kind in STRICTER_THAN_DSPY, (spec, reject.kind, reject.message)
    else:
        assert isinstance(ours.position, int) or ours.position is None
        assert f"at column {ours.position}" in ours.message or ours.position is None


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(specs())
def test_generated_specs_match_dspy(spec: str) -> None:
    check_against_dspy(spec)


@SETTINGS
@given(mutated())
def test_mutated_specs_match_dspy_or_raise_signature_error(spec: str) -> None:
    check_against_dspy(spec)


@SETTINGS
@given(random_text)
def test_random_text_matches_dspy_or_raises_signature_error(spec: str) -> None:
    check_against_dspy(spec)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_unicode_only_raises_signature_error(spec: str) -> None:
    error: SignatureError | None = None
    try:
        signature(spec, cache=False)
    except SignatureError as exc:
        error = exc
    if error is not None:
        assert error.spec == spec
        assert error.position is None or 0 <= error.position <= len(spec)


# Round trip: signatures built directly through DSPy's API, written with to_spec, parsed back.

TYPE_OBJECTS: list[Any] = [str, int, float, bool, bytes, typing.Any, type(None), dspy.Image, datetime.date]
type_objects = st.recursive(
    st.sampled_from(TYPE_OBJECTS),
    lambda inner: st.one_of(
        inner.map(lambda t: list[t]),  # type: ignore[valid-type]
        inner.map(lambda t: typing.List[t]),  # type: ignore[valid-type]  # noqa: UP006
        inner.map(lambda t: dict[str, t]),  # type: ignore[valid-type]
        inner.map(lambda t: typing.Optional[t]),  # noqa: UP045
        st.tuples(inner, inner).map(lambda ts: typing.Union[ts]),  # noqa: UP007
        inner.map(lambda t: tuple[t, ...]),  # type: ignore[valid-type]
        st.just(typing.Literal["a", 1, None, b"x", True]),
    ),
    max_leaves=4,
)
field_names = st.sampled_from([*NAMES, "passage_text", "HTMLBody", "k2", "\u00e9t\u00e9"])


@st.composite
def generated_signatures(draw: st.DrawFn) -> Any:
    names = draw(st.lists(field_names, min_size=1, max_size=5, unique=True))
    n_inputs = draw(st.integers(0, len(names)))
    built: dict[str, Any] = {}
    for i, name in enumerate(names):
        kwargs: dict[str, Any] = {}
        if draw(st.booleans()):
            kwargs["desc"] = draw(st.text(max_size=20))
        tp = draw(type_objects)
        if i < n_inputs:
            untyped = tp is str and draw(st.booleans())
            built[name] = (tp, dspy.InputField(IS_TYPE_UNDEFINED=untyped, **kwargs))
        else:
            built[name] = (tp, dspy.OutputField(**kwargs))
    instructions = draw(st.text(max_size=30))
    return dspy.Signature(built, instructions)


@settings(max_examples=150, deadline=None)
@given(generated_signatures())
def test_to_spec_round_trips_generated_signatures(sig: Any) -> None:
    spec = to_spec(sig)
    again = signature(spec, sig.__doc__)  # .instructions is cleandoc(__doc__): "" for "  "
    assert_same_signature(again, sig)
    assert to_spec(again) == spec


@pytest.mark.parametrize(
    "spec",
    [
        'question: str "the user question", docs: list[str] "retrieved passages" -> answer "one sentence"',
        "a, b: Optional[int] 'maybe' -> c: Literal['x', 'y'] \"pick, one -> here\"",
        'img: dspy.Image, code: dspy.Code[\'python\'] -> ok: bool "\\"quoted\\"\\n"',
    ],
)
def test_to_spec_round_trips_strings(spec: str) -> None:
    sig = signature(spec)
    again = signature(to_spec(sig))
    assert_same_signature(again, sig)
