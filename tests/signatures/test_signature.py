"""signature(): results, errors with positions, custom types, instructions and the cache."""

from __future__ import annotations

import pickle
import threading
import typing
from typing import Any

import dspy
import pydantic
import pytest

import dspex.signatures
from dspex.errors import SignatureError
from dspex.signatures import signature
from dspex.signatures._build import _compile_cached, parse_error


def test_public_names() -> None:
    public = [n for n in vars(dspex.signatures) if n.isidentifier() and not n.startswith("_")]
    assert dspex.signatures.__all__ == sorted(public)


def test_returns_a_dspy_signature_usable_by_predict() -> None:
    qa = signature("question, k: int -> answer: list[str]", "Answer briefly.")
    assert issubclass(qa, dspy.Signature)
    assert qa.instructions == "Answer briefly."
    assert qa.input_fields["k"].annotation is int
    assert qa.output_fields["answer"].annotation == list[str]
    assert dspy.Predict(qa).signature is qa


def test_default_instructions_match_dspy() -> None:
    assert signature("a, b -> c").instructions == "Given the fields `a`, `b`, produce the fields `c`."


def test_descriptions_set_desc_and_keep_prefixes() -> None:
    sig = signature('question: str "the user question", docs: list[str] "retrieved passages" -> answer "one"')
    extra = {name: f.json_schema_extra for name, f in sig.fields.items()}
    assert extra["question"]["desc"] == "the user question"
    assert extra["docs"]["desc"] == "retrieved passages"
    assert extra["answer"]["desc"] == "one"
    assert extra["question"]["prefix"] == "Question:"
    assert sig.fields["docs"].annotation == list[str]


def test_description_may_contain_arrows_commas_and_escapes() -> None:
    sig = signature('a \'x -> y, z\' -> b "say \\"hi\\"\\n"')
    assert sig.fields["a"].json_schema_extra["desc"] == "x -> y, z"
    assert sig.fields["b"].json_schema_extra["desc"] == 'say "hi"\n'


@pytest.mark.parametrize(
    ("spec", "position", "fragment"),
    [
        ("a, b", 4, "missing '->'"),
        ("a -> b -> c", 7, "more than one '->'"),
        ("a, a -> b", 3, "duplicate field 'a'"),
        ("a -> a", 5, "both an input and an output"),
        ("a, 1x -> b", 3, "not a valid identifier"),
        ("class -> b", 0, "keyword"),
        ("x: __import__('os') -> y", 3, "calls are not allowed"),
        ("x: os.system -> y", 3, "attribute access 'os.system' is not allowed"),
        ("x: lambda: int -> y", 3, "lambda"),
        ("question: Lst[int] -> y", 10, "did you mean 'List'"),
        ("x: int = 3 -> y", 7, "default"),
        ("x: list[int -> y", 7, "'[' is not closed before '->'"),
        ("x: list[int]] -> y", 12, "unmatched ']'"),
        ("x: int, y: dict[str, 'int'] -> z", 21, "quoted type 'int'"),
        ("abc, de: Literal['a] -> y", 17, "unterminated string"),
        ("x: int ? -> y", 7, "invalid type for field 'x'"),
        ("instructions -> y", 0, "shadows a dspy.Signature attribute"),
        ("x -> y: list[1]", 5, "field 'y' has an invalid type"),
    ],
)
def test_errors_name_the_problem_and_the_column(spec: str, position: int, fragment: str) -> None:
    with pytest.raises(SignatureError) as info:
        signature(spec)
    assert info.value.position == position
    assert info.value.spec == spec
    assert fragment in str(info.value)
    assert f"at column {position}" in str(info.value)


def test_nothing_in_the_string_is_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("builtins.__import__", lambda *a, **k: calls.append(a[0]))  # type: ignore[arg-type,return-value]
    with pytest.raises(SignatureError):
        signature("x: __import__('antigravity') -> y", cache=False)
    monkeypatch.undo()
    assert calls == []
    with pytest.raises(SignatureError, match="unknown type 'antigravity'"):
        signature("x: antigravity -> y")
    with pytest.raises(SignatureError, match="attribute access"):
        signature("x: this.s -> y")


@pytest.mark.parametrize("depth", [65, 500, 5000])
def test_deep_nesting_is_a_signature_error(depth: int) -> None:
    for spec in ("x: " + "list[" * depth + "int" + "]" * depth + " -> y", "x: " + "(" * depth + "int -> y"):
        with pytest.raises(SignatureError, match="nested"):
            signature(spec, cache=False)
    with pytest.raises(SignatureError, match="nested"):
        signature("x: " + " | ".join(["int"] * (depth + 2)) + " -> y", cache=False)


def test_non_string_arguments_raise_signature_error() -> None:
    with pytest.raises(SignatureError, match="must be a string"):
        signature(42)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="instructions"):
        signature("a -> b", instructions=3)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="custom_types"):
        signature("a -> b", custom_types=[int])  # type: ignore[arg-type]


def test_signature_error_survives_pickling() -> None:
    with pytest.raises(SignatureError) as info:
        signature("a -> b -> c")
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.message, again.spec, again.position) == (info.value.message, "a -> b -> c", 7)


class Person(pydantic.BaseModel):
    name: str


class Namespace:
    Person = Person


def test_custom_types_bare_dotted_and_by_namespace() -> None:
    sig = signature(
        "p: Person, q: models.Person, r: ns.Person -> ok: bool",
        custom_types={
            "Person": Person,
            "models.Person": Person,
            "ns": Namespace,
        },
    )
    assert [f.annotation for f in sig.input_fields.values()] == [Person, Person, Person]
    assert (
        signature("p: list[Person] -> y", custom_types={"Person": Person}).fields["p"].annotation
        == list[Person]
    )


def test_custom_types_override_builtin_names() -> None:
    sig = signature("x: int -> y", custom_types={"int": Person})
    assert sig.fields["x"].annotation is Person


def test_dspy_types_bare_and_qualified() -> None:
    sig = signature("a: Image, b: dspy.Image, c: list[dspy.History] -> d: dspy.Code['python']")
    assert sig.fields["a"].annotation is dspy.Image
    assert sig.fields["b"].annotation is dspy.Image
    assert sig.fields["c"].annotation == list[dspy.History]
    assert issubclass(sig.fields["d"].annotation, dspy.Code)


def test_union_spellings_give_dspys_annotations() -> None:
    sig = signature("a: int | None, b: Optional[int], c: Union[int, None], d: typing.Optional[int] -> e")
    assert all(f.annotation == typing.Optional[int] for f in sig.input_fields.values())  # noqa: UP045


def test_cache_returns_the_same_class_for_the_same_key() -> None:
    _compile_cached.cache_clear()
    first = signature("question -> answer")
    assert signature("question -> answer") is first
    assert signature("question -> answer", "Other.") is not first
    assert signature("question -> answer", cache=False) is not first
    assert _compile_cached.cache_info().hits == 1


def test_cache_keys_custom_types_by_name_and_identity() -> None:
    class A(pydantic.BaseModel):
        v: int

    class B(pydantic.BaseModel):
        v: int

    one = signature("x: T -> y", custom_types={"T": A})
    assert signature("x: T -> y", custom_types={"T": A}) is one
    other = signature("x: T -> y", custom_types={"T": B})
    assert other.fields["x"].annotation is B
    assert signature("x: T -> y", custom_types={"U": A, "T": A}) is not one


def test_cache_is_thread_safe() -> None:
    _compile_cached.cache_clear()
    results: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(50):
                results.append(signature(f"q{i % 5}: int -> a"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({id(r) for r in results}) <= 5 * 8  # at most one class per racing thread and key
    assert {next(iter(r.input_fields)) for r in results} == {f"q{i}" for i in range(5)}


def test_parse_error_reports_a_kind() -> None:
    reject = parse_error("x: int = 3 -> y")
    assert reject is not None
    assert reject.kind == "default"
    assert parse_error("x: int -> y") is None
