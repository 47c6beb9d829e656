"""validate_inputs / validate_outputs: coercion, and errors that name every failing field."""

from __future__ import annotations

import dspy
import pytest

from dspex.errors import FieldIssue, ValidationError
from dspex.signatures import signature, validate_inputs, validate_outputs


def test_coerces_values_and_returns_them_in_field_order() -> None:
    sig = signature("k: int, question -> answer")
    assert validate_inputs(sig, {"question": "why?", "k": "3"}) == {"k": 3, "question": "why?"}


def test_reports_every_failing_field_with_the_expected_type() -> None:
    sig = signature("question, k: int -> answer")
    with pytest.raises(ValidationError) as info:
        validate_inputs(sig, {"k": "abc"})
    assert str(info.value) == (
        "inputs do not match signature `question, k: int -> answer`: "
        "k: expected int, got 'abc'; question: missing"
    )
    assert info.value.issues == (
        FieldIssue("k", "int", "got 'abc'"),
        FieldIssue("question", "any value", "missing"),
    )


def test_unknown_fields_are_reported() -> None:
    sig = signature("question -> answer")
    with pytest.raises(ValidationError, match="answer: unexpected field") as info:
        validate_inputs(sig, {"question": "q", "answer": "a"})
    assert info.value.issues[0].expected == "one of question"


def test_nested_errors_say_where() -> None:
    sig = signature("q -> scores: list[int]")
    with pytest.raises(ValidationError, match=r"scores: expected list\[int\], got \[1, 'x'\] \(at \[1\]"):
        validate_outputs(sig, {"scores": [1, "x"]})
    assert validate_outputs(sig, {"scores": ["1", 2]}) == {"scores": [1, 2]}


def test_optional_fields_may_be_omitted() -> None:
    sig = signature("a: Optional[int], b: int | None -> c")
    assert validate_inputs(sig, {}) == {"a": None, "b": None}


def test_untyped_inputs_accept_anything_but_typed_str_does_not() -> None:
    sig = signature("context, name: str -> answer")
    assert validate_inputs(sig, {"context": ["p1", "p2"], "name": "n"})["context"] == ["p1", "p2"]
    with pytest.raises(ValidationError, match="name: expected str, got 3"):
        validate_inputs(sig, {"context": "c", "name": 3})


def test_constraints_from_annotated_field_apply() -> None:
    sig = signature("q -> n: Annotated[int, Field(ge=0, le=10)]")
    assert validate_outputs(sig, {"n": 10}) == {"n": 10}
    with pytest.raises(ValidationError, match="n: expected int, got 11"):
        validate_outputs(sig, {"n": 11})


def test_literal_and_dspy_image() -> None:
    sig = signature("image: dspy.Image -> label: Literal['cat', 'dog']")
    url = "https://example.com/cat.png"
    image = dspy.Image(url)
    assert validate_inputs(sig, {"image": image})["image"] == image
    # Whatever pydantic validation of dspy.Image takes, such as its dict form; not a bare string.
    assert validate_inputs(sig, {"image": {"url": url}})["image"] == image
    with pytest.raises(ValidationError, match=r"image: expected dspy\.Image, got 'https://"):
        validate_inputs(sig, {"image": url})
    with pytest.raises(ValidationError, match=r"label: expected Literal\['cat', 'dog'\], got 'cow'"):
        validate_outputs(sig, {"label": "cow"})


def test_works_with_class_based_signatures_and_rejects_non_mappings() -> None:
    class QA(dspy.Signature):
        question: str = dspy.InputField()
        answer: float = dspy.OutputField()

    assert validate_outputs(QA, {"answer": "0.5"}) == {"answer": 0.5}
    with pytest.raises(ValidationError, match="must be a mapping"):
        validate_inputs(QA, ["question"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"expected a dspy\.Signature"):
        validate_inputs(int, {})
