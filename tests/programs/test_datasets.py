from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dspy
import pytest
import sqlalchemy as sa

from dspex.errors import ConfigurationError, ValidationError
from dspex.programs.datasets import Datasets, DatasetVersion, example_hash
from dspex.store import open_database
from dspex.store.datasets import StoredExample
from dspex.store.schema import dataset_examples, dataset_versions, datasets

QA = [
    {"question": "2+2?", "answer": "4", "topic": "math"},
    {"question": "Capital of France?", "answer": "Paris", "topic": "geo"},
    {"question": "3*3?", "answer": "9", "topic": "math"},
]


@pytest.fixture
def ds(database_url: str) -> Iterator[Datasets]:
    db = open_database(database_url)
    yield Datasets(db)
    db.dispose()


def _rows(ds: Datasets, table: sa.Table) -> int:
    with ds.db.read() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- importing -----------------------------------------------------------------------------------------------


def test_records_import_declares_inputs_and_defaults_labels_to_the_other_fields(ds: Datasets) -> None:
    version = ds.import_records("qa", QA, inputs=["question"], description="tiny QA")
    assert len(version.id) == 64
    assert version.dataset == "qa"
    assert version.input_fields == ("question",)
    assert version.label_fields == ("answer", "topic")
    assert version.example_count == 3
    assert version.splits == {}
    assert version.created_at.tzinfo is not None
    examples = ds.examples("qa")
    assert all(isinstance(e, dspy.Example) for e in examples)
    assert [e.toDict() for e in examples] == QA
    assert set(examples[0].inputs().keys()) == {"question"}
    assert set(examples[0].labels().keys()) == {"answer", "topic"}
    [dataset] = ds.list()
    assert (dataset.name, dataset.description, dataset.version_count) == ("qa", "tiny QA", 1)
    assert dataset.latest_id == version.id
    assert dataset.created_at.tzinfo is not None


def test_explicit_labels_keep_other_fields_as_extras(ds: Datasets) -> None:
    version = ds.import_records("qa", QA, inputs=["question"], labels=["answer"])
    assert version.label_fields == ("answer",)
    assert version.stats.field("topic").role == "extra"
    assert ds.examples("qa")[0].topic == "math"  # extras stay in the data


def test_dspy_examples_and_tuples_are_accepted_as_records(ds: Datasets) -> None:
    records = [
        dspy.Example(question="q", answer="a").with_inputs("question"),
        {"question": "r", "tags": ("x",)},
    ]
    ds.import_records("mixed", records, inputs=["question"], labels=[])
    assert [e.toDict() for e in ds.examples("mixed")] == [
        {"question": "q", "answer": "a"},
        {"question": "r", "tags": ["x"]},
    ]


def test_jsonl_file_skips_blank_lines_and_keeps_nested_values(ds: Datasets, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '\ufeff{"question": "a", "answer": {"text": "x", "score": 1.5}}\n\n'
        '{"question": "b", "answer": {"text": "y", "score": 2}}\n',
        encoding="utf-8",
    )
    version = ds.import_file("qa", path, inputs=["question"])
    assert version.example_count == 2
    assert ds.examples(version)[1].answer == {"text": "y", "score": 2}


def test_csv_file_handles_quoted_commas_and_newlines(ds: Datasets, tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"Hello, world?","line one\nline two"\nplain,2\n', encoding="utf-8")
    version = ds.import_file("qa", path, inputs=["question"])
    assert [e.toDict() for e in ds.examples(version)] == [
        {"question": "Hello, world?", "answer": "line one\nline two"},
        {"question": "plain", "answer": "2"},  # CSV values stay strings
    ]


def test_json_array_file(ds: Datasets, tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(QA), encoding="utf-8")
    version = ds.import_file("qa", path, inputs=["question"])
    assert version.id == ds.import_records("qa", QA, inputs=["question"]).id


# --- versions ------------------------------------------------------------------------------------------------


def test_same_content_gives_the_same_version_without_new_rows(ds: Datasets, tmp_path: Path) -> None:
    first = ds.import_records("qa", QA, inputs=["question"])
    again = ds.import_file("qa", _jsonl(tmp_path / "qa.jsonl", QA), inputs=["question"])
    assert again.id == first.id
    assert again.created_at == first.created_at
    assert _rows(ds, dataset_versions) == 1
    assert _rows(ds, dataset_examples) == 3
    assert [v.id for v in ds.versions("qa")] == [first.id]


def test_changed_content_or_declaration_makes_a_new_latest_version(ds: Datasets) -> None:
    first = ds.import_records("qa", QA, inputs=["question"])
    second = ds.import_records(
        "qa", [*QA, {"question": "1+1?", "answer": "2", "topic": "math"}], inputs=["question"]
    )
    relabelled = ds.import_records("qa", QA, inputs=["question"], labels=["answer"])
    assert len({first.id, second.id, relabelled.id}) == 3
    assert [v.id for v in ds.versions("qa")] == [relabelled.id, second.id, first.id]
    assert ds.latest("qa").id == relabelled.id
    assert ds.examples("qa")[0].toDict() == QA[0]
    assert len(ds.examples(second.id)) == 4
    # The same content under another name is another dataset, so another version.
    assert ds.import_records("qa2", QA, inputs=["question"]).id != first.id
    assert _rows(ds, dataset_examples) == 3 + 4 + 3 + 3


def test_concurrent_imports_of_the_same_content_store_it_once(ds: Datasets) -> None:
    records = _numbers(2500)  # several chunks, so the transactions overlap

    def run(_: int) -> str:
        return ds.import_records("n", records, inputs=["question"]).id

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(run, range(4)))
    assert len(ids) == 1
    assert (_rows(ds, dataset_versions), _rows(ds, dataset_examples)) == (1, 2500)


def test_versions_resolve_by_id_prefix_and_name_at_prefix(ds: Datasets) -> None:
    version = ds.import_records("qa", QA, inputs=["question"])
    assert ds.version(version.id[:8]).id == version.id
    assert ds.resolve(f"qa@{version.id[:10]}").id == version.id
    assert ds.resolve(version.id).id == version.id
    with pytest.raises(ConfigurationError, match="is of dataset 'qa', not 'other'"):
        ds.resolve(f"other@{version.id[:10]}")
    with pytest.raises(ConfigurationError, match="no dataset version 'deadbeef'"):
        ds.version("deadbeef")


def test_example_hashes_are_canonical(ds: Datasets) -> None:
    version = ds.import_records("qa", [{"b": 1, "a": "x"}], inputs=["a"])
    [stored] = ds.repository.examples(version.id)
    assert stored.example_hash == example_hash({"a": "x", "b": 1})
    assert stored.example_hash != example_hash({"a": "x", "b": 2})


def test_delete_removes_versions_and_examples(ds: Datasets) -> None:
    ds.import_records("qa", QA, inputs=["question"])
    assert ds.delete("qa") is True
    assert ds.delete("qa") is False
    assert (_rows(ds, datasets), _rows(ds, dataset_versions), _rows(ds, dataset_examples)) == (0, 0, 0)


def test_a_failing_example_stream_writes_nothing(ds: Datasets) -> None:
    version = ds.import_records("qa", QA, inputs=["question"])
    fresh = DatasetVersion(**{**{f: getattr(version, f) for f in version.__slots__}, "id": "f" * 64})

    def broken() -> Iterator[StoredExample]:
        for position in range(1500):  # past one chunk, so some rows were sent before the failure
            yield StoredExample(position, "0" * 64, None, {"question": "q"})
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        ds.repository.add_version(fresh, broken())
    assert (_rows(ds, dataset_versions), _rows(ds, dataset_examples)) == (1, 3)


# --- splits --------------------------------------------------------------------------------------------------


def _numbers(n: int) -> list[dict[str, Any]]:
    return [{"question": f"q{i}", "answer": str(i % 3)} for i in range(n)]


def _split_of(ds: Datasets, version: DatasetVersion) -> dict[str, str | None]:
    return {e.data["question"]: e.split for e in ds.repository.examples(version.id)}


def test_fraction_splits_are_deterministic_and_follow_the_content(ds: Datasets) -> None:
    records = _numbers(50)
    version = ds.import_records("n", records, inputs=["question"], split={"train": 0.8, "dev": 0.2}, seed=7)
    assert version.splits == {"train": 40, "dev": 10}
    assert (version.split_fractions, version.split_seed, version.split_field) == (
        {"train": 0.8, "dev": 0.2},
        7,
        None,
    )
    assert len(ds.examples("n", split="dev")) == 10
    assert all(set(e.inputs().keys()) == {"question"} for e in ds.examples("n", split="train"))
    again = ds.import_records("n", records, inputs=["question"], split={"train": 0.8, "dev": 0.2}, seed=7)
    assert again.id == version.id
    # Reordered records: a new version, but every example keeps its split.
    shuffled = ds.import_records(
        "n", records[::-1], inputs=["question"], split={"train": 0.8, "dev": 0.2}, seed=7
    )
    assert shuffled.id != version.id
    assert _split_of(ds, shuffled) == _split_of(ds, version)
    reseeded = ds.import_records("n", records, inputs=["question"], split={"train": 0.8, "dev": 0.2}, seed=8)
    assert _split_of(ds, reseeded) != _split_of(ds, version)


def test_fraction_counts_add_up_by_largest_remainder(ds: Datasets) -> None:
    version = ds.import_records(
        "n", _numbers(10), inputs=["question"], split={"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    )
    assert sorted(version.splits.values()) == [3, 3, 4]
    tiny = ds.import_records("t", _numbers(1), inputs=["question"], split={"train": 0.9, "dev": 0.1})
    assert tiny.splits == {"train": 1, "dev": 0}
    assert ds.examples("t", split="dev") == []


def test_split_from_a_field_is_kept_out_of_the_examples(ds: Datasets, tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("fold,question,answer\ntrain,a,1\ndev,b,2\ntrain,c,3\n", encoding="utf-8")
    version = ds.import_file("qa", path, inputs=["question"], split="fold")
    assert version.splits == {"train": 2, "dev": 1}
    assert version.split_field == "fold"
    assert version.label_fields == ("answer",)
    assert [e.toDict() for e in ds.examples("qa", split="train")] == [
        {"question": "a", "answer": "1"},
        {"question": "c", "answer": "3"},
    ]
    assert version.stats.field("fold").distribution == (("train", 2), ("dev", 1))


# --- statistics ----------------------------------------------------------------------------------------------


def test_stats_describe_every_field(ds: Datasets) -> None:
    records = [
        {"question": "ab", "answer": "yes", "score": 1, "meta": {"k": 1}},
        {"question": "abcd", "answer": "no", "score": 2.5, "meta": None},
        {"question": "abcdef", "answer": "yes", "score": 3, "meta": [1]},
        {"question": "abcdef", "answer": "yes", "score": 1, "meta": None},
    ]
    stats = ds.import_records("s", records, inputs=["question"], labels=["answer", "score"]).stats
    assert (stats.examples, stats.duplicates, stats.splits) == (4, 0, {})
    assert [f.name for f in stats.fields] == ["question", "answer", "score", "meta"]
    question = stats.field("question")
    assert (question.role, question.present, question.types, question.distinct) == (
        "input",
        4,
        {"string": 4},
        3,
    )
    assert question.length is not None
    assert (question.length.min, question.length.mean, question.length.max) == (2, 4.5, 6)
    assert question.distribution is None  # inputs get no distribution
    answer = stats.field("answer")
    assert answer.distribution == (("yes", 3), ("no", 1))
    score = stats.field("score")
    assert score.types == {"integer": 3, "number": 1}
    assert score.number is not None
    assert (score.number.min, score.number.mean, score.number.max) == (1, 1.875, 3)
    assert score.distribution == ((1, 2), (2.5, 1), (3, 1))
    stored = json.loads(json.dumps(ds.latest("s").to_json()))  # plain JSON all the way down
    assert stored["stats"]["v"] == 1
    assert stored["stats"]["fields"][1]["distribution"] == [["yes", 3], ["no", 1]]
    meta = stats.field("meta")
    assert (meta.role, meta.types, meta.number, meta.length) == (
        "extra",
        {"object": 1, "null": 2, "array": 1},
        None,
        None,
    )


def test_stats_cap_distinct_values_and_drop_high_cardinality_distributions(ds: Datasets) -> None:
    records = [{"q": str(i), "a": str(i)} for i in range(1200)] + [{"q": "0", "a": "0"}]
    stats = ds.import_records("big", records, inputs=["q"]).stats
    assert stats.duplicates == 1
    a = stats.field("a")
    assert (a.distinct, a.distinct_capped, a.distribution) == (1000, True, None)


# --- export --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_round_trips_to_the_same_version(ds: Datasets, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        source.write_text(
            'id,question,answer,fold\n1,a,x,train\n2,"b, c",y,dev\n3,d,z,train\n', encoding="utf-8"
        )
    else:
        _jsonl(source, [{"id": i, "question": f"q{i}", "answer": [i], "fold": "train"} for i in range(5)])
    version = ds.import_file("rt", source, inputs=["question"], labels=["answer"], split="fold")
    out = tmp_path / f"out.{fmt}"
    assert ds.export("rt", out) == version.example_count
    assert ds.import_file("rt", out, inputs=["question"], labels=["answer"], split="fold").id == version.id
    if fmt == "csv":
        assert out.read_text(encoding="utf-8").splitlines()[0] == "id,question,answer,fold"
    else:
        assert [json.loads(line) for line in out.read_text().splitlines()] == [
            json.loads(line) for line in source.read_text().splitlines()
        ]


def test_export_one_split_and_freeze_a_random_split(ds: Datasets, tmp_path: Path) -> None:
    version = ds.import_records("n", _numbers(10), inputs=["question"], split={"train": 0.5, "dev": 0.5})
    assert ds.export(version, tmp_path / "dev.jsonl", split="dev", with_split=False) == 5
    dev = [json.loads(line) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    assert [r["question"] for r in dev] == [e.question for e in ds.examples(version, split="dev")]
    ds.export(version, tmp_path / "all.csv", with_split="split")
    frozen = ds.import_file("n", tmp_path / "all.csv", inputs=["question"], split="split")
    assert _split_of(ds, frozen) == _split_of(ds, version)


def test_csv_export_refuses_values_that_are_not_text(ds: Datasets, tmp_path: Path) -> None:
    ds.import_records("n", [{"q": "a", "n": 1}], inputs=["q"])
    with pytest.raises(ValidationError, match=r"example 1 holds a JSON integer in field 'n'.*format='jsonl'"):
        ds.export("n", tmp_path / "out.csv")
    assert not list(tmp_path.glob("out.csv*"))  # no partial file left behind


# --- errors --------------------------------------------------------------------------------------------------


def test_unknown_fields_suggest_the_available_ones(ds: Datasets) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"unknown input field 'questoin'; did you mean 'question'\? valid: answer, question, topic",
    ):
        ds.import_records("qa", QA, inputs=["questoin"])
    with pytest.raises(ConfigurationError, match="unknown label field 'answr'; did you mean 'answer'"):
        ds.import_records("qa", QA, inputs=["question"], labels=["answr"])
    with pytest.raises(ConfigurationError, match=r"unknown input field 'q'; valid: answer, question$"):
        ds.import_records("qa", [{"question": "q", "answer": "a", "fold": "x"}], inputs=["q"], split="fold")
    assert ds.list() == []


@pytest.mark.parametrize(
    ("inputs", "labels", "split", "message"),
    [
        ([], None, None, r"declare at least one input field"),
        ("question", None, None, r"inputs= and labels= are lists of field names"),
        (
            ["question"],
            ["question", "answer"],
            None,
            r"question declared as both input and label; choose one",
        ),
        (["question", "question"], None, None, r"inputs lists question more than once"),
        (["question"], ["answer"], "answer", r"split field 'answer' is also declared as an input or label"),
        (["question"], None, {"train": 0.5, "dev": 0.4}, r"split fractions add up to 0.9, not 1"),
        (["question"], None, {"train": 1.5}, r"fractions are numbers in \(0, 1\]"),
        (["question"], None, {}, r"split= is an empty mapping"),
    ],
)
def test_bad_declarations_are_refused(
    ds: Datasets, inputs: Any, labels: Any, split: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ds.import_records("qa", QA, inputs=inputs, labels=labels, split=split)


def test_bad_names_are_refused(ds: Datasets) -> None:
    with pytest.raises(ConfigurationError, match="invalid dataset name 'my data'"):
        ds.import_records("my data", QA, inputs=["question"])


def test_a_missing_field_names_the_line(ds: Datasets, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(ValidationError, match=r"qa.jsonl line 2: the example has no field 'answer'"):
        ds.import_file("qa", path, inputs=["question"])
    # A field that only later examples have is missing from the first one.
    path = _jsonl(tmp_path / "late.jsonl", [{"question": "a"}, {"question": "b", "answer": "1"}])
    with pytest.raises(ValidationError, match=r"late.jsonl line 1: the example has no field 'answer'"):
        ds.import_file("qa", path, inputs=["question"])
    # ... unless the field is not declared: then it is an extra, present where it is present.
    assert ds.import_file("qa", path, inputs=["question"], labels=[]).stats.field("answer").present == 1
    with pytest.raises(ValidationError, match=r"record 2: the example has no split field 'fold'"):
        ds.import_records(
            "qa", [{"question": "a", "fold": "x"}, {"question": "b"}], inputs=["question"], split="fold"
        )


def test_malformed_files_name_the_line(ds: Datasets, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n{"question": "b",}\n', encoding="utf-8")
    with pytest.raises(ValidationError, match=r"bad.jsonl line 2: not valid JSON .*one JSON object"):
        ds.import_file("qa", bad, inputs=["question"])
    bad.write_text('{"question": "a"}\n["b"]\n', encoding="utf-8")
    with pytest.raises(
        ValidationError,
        match=r"bad.jsonl line 2: an example must be a JSON object \(a dict\), got a JSON array",
    ):
        ds.import_file("qa", bad, inputs=["question"])
    bad.write_text('{"question": NaN}\n', encoding="utf-8")
    with pytest.raises(ValidationError, match=r"line 1: not valid JSON \(NaN is not valid JSON"):
        ds.import_file("qa", bad, inputs=["question"])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("question,answer\na,1\nb,2,extra\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"ragged.csv line 3: 3 values but the header has 2 columns"):
        ds.import_file("qa", ragged, inputs=["question"])
    ragged.write_text('question,answer\n"multi\nline",1\nb\n', encoding="utf-8")
    with pytest.raises(ValidationError, match=r"ragged.csv line 4: 1 values but the header has 2 columns"):
        ds.import_file("qa", ragged, inputs=["question"])
    ragged.write_text("question,question\na,b\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"line 1: the header repeats question"):
        ds.import_file("qa", ragged, inputs=["question"])
    assert ds.list() == []


def test_empty_sources_and_non_json_values_are_refused(ds: Datasets, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"dataset 'qa': the source has no examples"):
        ds.import_file("qa", empty, inputs=["question"])
    with pytest.raises(ValidationError, match=r"dataset 'qa': the source has no examples"):
        ds.import_records("qa", [], inputs=["question"])
    with pytest.raises(ValidationError, match=r"record 1: field 'when' is a date; only JSON values"):
        ds.import_records(
            "qa", [{"question": "a", "when": __import__("datetime").date(2026, 1, 1)}], inputs=["question"]
        )
    with pytest.raises(ValidationError, match=r"record 1: field 'x'\[1\] is nan, which JSON cannot hold"):
        ds.import_records("qa", [{"question": "a", "x": [1, float("nan")]}], inputs=["question"])
    with pytest.raises(ValidationError, match=r"record 1: field 'x' contains a NUL character"):
        ds.import_records("qa", [{"question": "a", "x": "a\x00b"}], inputs=["question"])
    with pytest.raises(ValidationError, match=r"record 1: field 'x'\.k contains a lone surrogate"):
        ds.import_records("qa", [{"question": "a", "x": {"k": "\ud800"}}], inputs=["question"])
    with pytest.raises(ValidationError, match=r"record 1: split field 'fold' is 1; a split is a name"):
        ds.import_records("qa", [{"question": "a", "fold": 1}], inputs=["question"], split="fold")


def test_file_arguments_are_checked(ds: Datasets, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"cannot tell the format of data.txt.*format= one of jsonl, json, csv"
    ):
        ds.import_file("qa", tmp_path / "data.txt", inputs=["question"])
    with pytest.raises(ConfigurationError, match="no such file"):
        ds.import_file("qa", tmp_path / "missing.jsonl", inputs=["question"])


def test_unknown_datasets_and_splits_are_named(ds: Datasets, tmp_path: Path) -> None:
    ds.import_records("qa", QA, inputs=["question"], split={"train": 0.5, "dev": 0.5})
    ds.import_records("plain", QA, inputs=["question"])
    with pytest.raises(
        ConfigurationError, match=r"unknown dataset 'qaa'; did you mean 'qa'\? valid: plain, qa"
    ):
        ds.examples("qaa")
    with pytest.raises(ConfigurationError, match=r"unknown split 'trian'; did you mean 'train'\?"):
        ds.examples("qa", split="trian")
    with pytest.raises(ConfigurationError, match=r"has no splits; leave split= out"):
        ds.examples("plain", split="train")
    with pytest.raises(ConfigurationError, match=r"has no splits; leave with_split out"):
        ds.export("plain", tmp_path / "out.jsonl", with_split="fold")
    with pytest.raises(ConfigurationError, match="unknown dataset 'nope'"):
        ds.versions("nope")


# --- scale ---------------------------------------------------------------------------------------------------


def test_ten_thousand_examples_import_in_chunks(ds: Datasets, tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "big.jsonl", [{"question": f"question {i}", "answer": str(i % 7)} for i in range(10_000)]
    )
    started = time.perf_counter()
    version = ds.import_file("big", path, inputs=["question"], split={"train": 0.9, "dev": 0.1})
    elapsed = time.perf_counter() - started
    assert version.splits == {"train": 9000, "dev": 1000}
    assert version.stats.field("answer").distribution is not None
    assert _rows(ds, dataset_examples) == 10_000
    dev = ds.examples("big", split="dev")
    assert len(dev) == 1000
    assert [e.position for e in ds.repository.examples(version.id)] == list(range(10_000))
    print(f"10,000 examples imported in {elapsed:.2f} s")  # visible with -s; a benchmark, not an assertion
