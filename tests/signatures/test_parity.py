"""Parity with dspy.Signature over strings from DSPy's source, docs and tests, and our own.

Each string carries the expected verdict:

- ``same``: both accept, with identical fields, order, annotations, prefixes, descriptions and
  instructions;
- ``reject``: both refuse (dspex with a SignatureError that names a column);
- ``dspex-only``: a dspex extension (descriptions, bare DSPy type names, ``->`` inside quotes);
- ``stricter:<kind>``: DSPy accepts, dspex refuses on purpose (see dspex.signatures' docstring).

DSPy runs with warnings turned into errors, like the rest of the suite, so a name that makes
pydantic warn ("shadows an attribute") counts as a DSPy rejection here.
"""

from __future__ import annotations

from typing import Any

import pytest

from dspex.errors import SignatureError
from dspex.signatures import signature
from dspex.signatures._build import parse_error
from dspex.signatures._parser import STRICTER_THAN_DSPY, parse

from ._oracle import assert_same_signature, run_dspy

CASES: list[tuple[str, str]] = [
    ("a -> b", "same"),
    ("a, b -> c, d", "same"),
    ("input -> output", "same"),
    ("input1, input2 -> output1, output2", "same"),
    ("input_text -> output_text", "same"),
    ("inputs -> outputs", "same"),
    ("invoice -> qty: int, unit_price: float", "same"),
    ("invoice -> shipping_dollars: float", "same"),
    ("invoice: str -> qty: int, unit_price_cents: int", "same"),
    ("q -> a", "same"),
    ("q->a", "same"),
    ("question -> answer", "same"),
    ("question, context -> answer", "same"),
    ("question->answer", "same"),
    ("question->answer, reasoning", "same"),
    ("text -> label", "same"),
    ("text -> summary", "same"),
    ("ticket: str -> category: str", "same"),
    ("input1, input2 -> output", "same"),
    ("value -> value", "reject"),
    ("", "reject"),
    ("input1 -> output1", "same"),
    ("input2 -> output2", "same"),
    ("input1: int, input2: str -> output: float", "same"),
    ("input_list: list[int], input_dict: dict[str, float] -> output_tuple: tuple[str, int]", "same"),
    ("input_opt: Optional[str], input_union: Union[int, None] -> output_union: Union[int, str]", "same"),
    ("input_any: Any -> output_any: Any", "same"),
    ("input_nested: list[Union[str, int]] -> output_nested: Tuple[int, Optional[float], list[str]]", "same"),
    (
        "input_complex: dict[str, list[Optional[Tuple[int, str]]]] -> output_complex: Union[list[str], dict[str, Any]]",
        "same",
    ),
    ("input1: int, input2: dict[str, int] -> output1: list[str], output2: Union[int, str]", "same"),
    ("input: MyType -> output", "reject"),
    ("input: CustomType -> output: str", "reject"),
    ("question: str -> answer: int", "same"),
    ("sentence -> sentiment: bool", "same"),
    ("document -> summary", "same"),
    ("context: list[str], question: str -> answer: str", "same"),
    ("question -> answer: float", "same"),
    ("claim, evidence -> verdict: Literal['supported', 'refuted', 'not enough info']", "same"),
    ("text -> entities: list[dict[str, str]]", "same"),
    ("image: dspy.Image -> description", "same"),
    ("image: dspy.Image, question -> answer", "same"),
    ("images: list[dspy.Image] -> caption: str", "same"),
    ("audio: dspy.Audio -> transcript", "same"),
    ("history: dspy.History, question -> answer", "same"),
    ("question, tools: list[dspy.Tool] -> answer, tool_calls: dspy.ToolCalls", "same"),
    ("task -> code: dspy.Code", "same"),
    ("task -> code: dspy.Code['python']", "same"),
    ("file: dspy.File -> summary", "same"),
    ("question -> reasoning: dspy.Reasoning, answer", "same"),
    ("topic -> joke", "same"),
    ("-> joke", "same"),
    ("question ->", "same"),
    (" -> ", "same"),
    ("->", "same"),
    ("english -> french", "same"),
    ("passage -> question, answer", "same"),
    ("query -> rewritten_query", "same"),
    ("context: list[str] -> confidence: float", "same"),
    ("x: int -> y: int", "same"),
    ("x: float -> y: bool", "same"),
    ("x: bytes -> y", "same"),
    ("x: complex -> y", "same"),
    ("x: list -> y", "same"),
    ("x: dict -> y", "same"),
    ("x: tuple -> y", "same"),
    ("x: set -> y", "same"),
    ("x: frozenset[int] -> y", "same"),
    ("x: set[str] -> y: frozenset[str]", "same"),
    ("x: List[int] -> y", "same"),
    ("x: Dict[str, List[int]] -> y", "same"),
    ("x: Tuple[int, str] -> y", "same"),
    ("x: tuple[int, ...] -> y", "same"),
    ("x: tuple[()] -> y", "same"),
    ("x: Set[int] -> y: FrozenSet[str]", "same"),
    ("x: Sequence[int] -> y: Mapping[str, int]", "same"),
    ("x: Text -> y", "same"),
    ("x: typing.List[int] -> y", "same"),
    ("x: typing.Optional[str] -> y", "same"),
    ("x: Optional[int] -> y", "same"),
    ("x: int | None -> y", "same"),
    ("x: None | int -> y", "same"),
    ("x: int | str | None -> y", "same"),
    ("x: int | None | str -> y", "same"),
    ("x: Union[int] -> y", "same"),
    ("x: Union[int, int] -> y", "same"),
    ("x: Optional[None] -> y", "same"),
    ("x: NoneType -> y", "same"),
    ("x: dict[str, None] -> y", "same"),
    ("x: list[None] -> y", "same"),
    ("x: Literal['a', 1, None] -> y", "same"),
    ("x: Literal[True, b'x'] -> y", "same"),
    ("x: Literal[1.5] -> y", "same"),
    ("x: Literal[Literal['a']] -> y", "same"),
    ("x: Literal[int] -> y", "same"),
    ("x: Annotated[int, 'meta'] -> y", "same"),
    ("x: Annotated[str, Field(min_length=3)] -> y", "same"),
    ("x: Annotated[str, Field(description='d')] -> y", "same"),
    ("x: Annotated[int, Field(ge=0, le=10)] -> y: Annotated[float, Field(gt=0.5)]", "same"),
    ("x: Any -> y: Any", "same"),
    ("x: list[Any] -> y: dict[str, Any]", "same"),
    ("x: dict[str, list[dict[str, Optional[list[int]]]]] -> y", "same"),
    ("x: list[list[list[list[int]]]] -> y", "same"),
    ("x: datetime.datetime -> y: datetime.date", "same"),
    ("x: decimal.Decimal -> y: uuid.UUID", "same"),
    ("x: dspy.History -> y", "same"),
    ("x: dspy.ToolCallResults -> y", "same"),
    ("x:int->y:int", "same"),
    ("x: list[ int ] -> y", "same"),
    ("a, -> b,", "same"),
    ("  a  ,  b  ->  c  ", "same"),
    ("a,\n b -> c", "same"),
    ("a\t->\tb", "same"),
    ("x: list[\n  int\n] -> y", "same"),
    ("été -> réponse", "same"),
    ("match, case, type -> result", "same"),
    ("camelCase, snake_case, HTMLParser -> text2number", "same"),
    ("x -> y: list[int]", "same"),
    ("model_x -> y", "same"),
    ("a, b", "reject"),
    ("a -> b -> c", "reject"),
    ("a -> a", "reject"),
    ("a, b -> c, a", "reject"),
    ("a,, b -> c", "reject"),
    (", a -> b", "reject"),
    ("a b -> c", "reject"),
    ("1a -> b", "reject"),
    ("class -> b", "reject"),
    ("None -> b", "reject"),
    ("a -> def", "reject"),
    ("_x -> y", "reject"),
    ("__x -> y", "reject"),
    ("x: -> y", "reject"),
    ("x: int: str -> y", "reject"),
    ("x: List -> y", "reject"),
    ("x: Optional -> y", "reject"),
    ("x: Literal -> y", "reject"),
    ("x: Union -> y", "reject"),
    ("x: Optional[int, str] -> y", "reject"),
    ("x: Annotated[int] -> y", "reject"),
    ("x: ClassVar[int] -> y", "reject"),
    ("x: list[1] -> y", "reject"),
    ("x: 'int' -> y", "reject"),
    ("x: int -> y: 'str'", "reject"),
    ("x: Image -> y", "dspex-only"),
    ("x: os -> y", "reject"),
    ("x: foo -> y", "reject"),
    ("x: foo.bar -> y", "reject"),
    ("x: int + str -> y", "reject"),
    ("x: -int -> y", "reject"),
    ("x: Literal[-1] -> y", "reject"),
    ("x: [int] -> y", "reject"),
    ("x: {int} -> y", "reject"),
    ("x: (int, str) -> y", "reject"),
    ("x: lambda: int -> y", "reject"),
    ("x: __import__('os') -> y", "reject"),
    ("x: __import__('os').system('true') -> y", "reject"),
    ("x: eval('int') -> y", "reject"),
    ("x: int if True else str -> y", "reject"),
    ("x: list[int:str] -> y", "reject"),
    ("x: dict[str, int][int] -> y", "reject"),
    ("x: f'int' -> y", "reject"),
    ("x: Annotated[str, Field(foo=1)] -> y", "reject"),
    ("x: bytearray -> y", "reject"),
    ("x: type -> y", "reject"),
    ("x: object -> y", "reject"),
    ("x: Never -> y", "reject"),
    ("x: TypeVar -> y", "reject"),
    ("x: Callable -> y", "reject"),
    ("x: Callable[[int], str] -> y", "reject"),
    ("x: dspy.Prediction -> y", "reject"),
    ("x: list[int -> y]", "reject"),
    ("x: list[int -> y", "reject"),
    ("x: list[int]] -> y", "reject"),
    ("a) -> b", "reject"),
    ("(a -> b", "reject"),
    ("x: Literal['->'] -> y", "dspex-only"),
    ("x: int; y -> z", "reject"),
    ("x: int\ny: str -> z", "reject"),
    ("schema -> y", "reject"),
    ("instructions -> y", "reject"),
    ("fields -> y", "reject"),
    ("signature -> y", "reject"),
    ("x -> model_fields", "reject"),
    ("json, dict -> copy", "reject"),
    ("x: int = 3 -> y", "stricter:default"),
    ("x = 'a' -> y", "stricter:default"),
    ("x: None -> y", "stricter:none_type"),
    ("a, a -> b", "stricter:duplicate"),
    ("a -> b, b", "stricter:duplicate"),
    ("a, /, b -> c", "stricter:star"),
    ("*a -> b", "stricter:star"),
    ("a, *, b -> c", "stricter:star"),
    ("**k -> c", "stricter:star"),
    ("a -> b, *c", "stricter:star"),
    ("ﬁ -> y", "stricter:nfkc"),
    ("x: ClassVar -> y", "stricter:unknown_name"),
    ("x: Final -> y", "stricter:unknown_name"),
    ("x: Self -> y", "stricter:unknown_name"),
    ("x: Type[int] -> y", "stricter:unknown_name"),
    ("x: collections.OrderedDict -> y", "stricter:attribute"),
    ("x: List['int'] -> y", "stricter:forward_ref"),
    ("x: Annotated[str, Field(default_factory=list)] -> y", "stricter:field_keyword"),
    ("lm, question -> answer", "stricter:reserved"),
    ("demos -> answer", "stricter:reserved"),
    ("a # comment\n, b -> c", "stricter:comment"),
    ("a): pass\ndef g(b -> c", "stricter:unbalanced"),
    ("a, \\\n b -> c", "stricter:backslash"),
    (
        'question: str "the user question", docs: list[str] "retrieved passages" -> answer "one sentence"',
        "dspex-only",
    ),
    ("question 'what is asked' -> answer 'short, precise: a -> b'", "dspex-only"),
    ("x: Image -> y: dspy.Audio", "dspex-only"),
    ("x: Literal['a -> b'] -> y", "dspex-only"),
    ("x: int r'raw \\d' -> y", "dspex-only"),
    ("x: Literal['a', 'b'] \"pick one\" -> y", "dspex-only"),
    ('x "" -> y', "dspex-only"),
]


def test_enough_cases() -> None:
    assert len(CASES) >= 150
    assert len({spec for spec, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("spec", "verdict"), CASES, ids=[repr(s)[:60] for s, _ in CASES])
def test_parity_with_dspy(spec: str, verdict: str) -> None:
    theirs = run_dspy(spec)
    ours: Any
    try:
        ours = signature(spec, cache=False)
    except SignatureError as exc:
        ours = exc
    if isinstance(ours, SignatureError):
        assert ours.spec == spec
        assert ours.position is not None
        assert 0 <= ours.position <= len(spec)
        assert f"at column {ours.position}" in str(ours)
        if verdict == "reject":
            assert not isinstance(theirs, type), f"DSPy accepts {spec!r}"
            return
        assert verdict.startswith("stricter:"), f"dspex rejects {spec!r}: {ours}"
        assert isinstance(theirs, type), f"DSPy rejects {spec!r} too: {theirs!r}"
        reject = parse_error(spec)
        assert reject is not None
        assert f"stricter:{reject.kind}" == verdict
        assert reject.kind in STRICTER_THAN_DSPY
        return
    if verdict == "same":
        assert isinstance(theirs, type), f"DSPy rejects {spec!r}: {theirs!r}"
        assert_same_signature(ours, theirs)
    else:
        assert verdict == "dspex-only", f"dspex accepts {spec!r}"
        assert not isinstance(theirs, type)
        assert parse(spec).extensions
