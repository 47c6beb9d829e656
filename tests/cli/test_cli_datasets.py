"""``dspex datasets``: import JSONL and CSV, list, show, export, and the round trip back to the same version."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_support import Invoke, as_json


@pytest.fixture
def qa_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"q{i} [x]", "answer": ["yes", "no"][i % 2], "n": i} for i in range(20)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_csv(tmp_path: Path) -> Path:
    path = tmp_path / "qa.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["question", "answer", "fold"])
        writer.writerows([f"q{i}, with a comma", f"a{i}", "train" if i % 3 else "test"] for i in range(9))
    return path


def test_import_jsonl_with_fractions_then_list_and_show(dspex: Invoke, qa_jsonl: Path) -> None:
    imported = dspex(
        "datasets", "import", "qa", str(qa_jsonl), "--inputs", "question", "--labels", "answer",
        "--split", "train=0.75,dev=0.25", "--seed", "7", "--description", "toy [qa]",
    )  # fmt: skip
    assert "imported qa: version" in imported.stdout
    assert "20 examples" in imported.stdout
    assert "train=15, dev=5 (seed 7)" in imported.stdout

    [row] = as_json(dspex("datasets", "list", "--json"))
    assert row["name"] == "qa"
    assert row["description"] == "toy [qa]"
    assert row["versions"] == 1
    assert row["latest"]["splits"]["counts"] == {"train": 15, "dev": 5}
    assert "toy [qa]" in dspex("datasets", "list").stdout

    shown = dspex("datasets", "show", "qa").stdout
    for expected in ("question", "input", "answer", "label", "extra", "no: 10", "yes: 10", "0 / 9.5 / 19"):
        assert expected in shown
    detail = as_json(dspex("datasets", "show", "qa", "--json"))
    assert detail["version"]["input_fields"] == ["question"]
    assert detail["version"]["label_fields"] == ["answer"]
    assert [f["name"] for f in detail["version"]["stats"]["fields"]] == ["question", "answer", "n"]
    version_id = detail["version"]["id"]
    assert as_json(dspex("datasets", "show", version_id[:10], "--json"))["version"]["id"] == version_id
    assert as_json(dspex("datasets", "show", f"qa@{version_id[:8]}", "--json"))["version"]["id"] == version_id


def test_import_csv_with_split_field_and_export_round_trip(
    dspex: Invoke, qa_csv: Path, tmp_path: Path
) -> None:
    version = as_json(
        dspex(
            "datasets", "import", "qa", str(qa_csv), "--inputs", "question", "--split-field", "fold", "--json"
        )
    )
    assert version["splits"]["counts"] == {"train": 6, "test": 3}
    assert version["label_fields"] == ["answer"]

    exported = as_json(dspex("datasets", "export", "qa", "copy.csv", "--json"))
    assert exported == {"path": "copy.csv", "examples": 9, "version_id": version["id"], "split": None}
    assert (tmp_path / "copy.csv").read_text(encoding="utf-8") == qa_csv.read_text(encoding="utf-8")
    again = as_json(
        dspex(
            "datasets", "import", "qa", "copy.csv", "--inputs", "question", "--split-field", "fold", "--json"
        )
    )
    assert again["id"] == version["id"]  # same content, same version
    assert as_json(dspex("datasets", "list", "--json"))[0]["versions"] == 1

    test_only = dspex("datasets", "export", "qa", "test.jsonl", "--split", "test", "--without-split-field")
    assert "exported 3 examples of qa" in test_only.stdout
    records = [
        json.loads(line) for line in (tmp_path / "test.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert records == [{"question": f"q{i}, with a comma", "answer": f"a{i}"} for i in (0, 3, 6)]


def test_jsonl_export_reimports_to_the_same_version(dspex: Invoke, qa_jsonl: Path) -> None:
    first = as_json(dspex("datasets", "import", "qa", str(qa_jsonl), "--inputs", "question", "--json"))
    dspex("datasets", "export", first["id"][:12], "out/qa.jsonl")
    second = as_json(dspex("datasets", "import", "qa", "out/qa.jsonl", "--inputs", "question", "--json"))
    assert second["id"] == first["id"]
    cannot = dspex("datasets", "export", "qa", "qa.csv", code=2)
    assert "CSV holds text only" in cannot.stderr  # field n holds numbers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inputs", "questio"], "unknown input field 'questio'; did you mean 'question'?"),
        (["--inputs", "question,"], "--inputs takes comma-separated field names"),
        (["--inputs", "question", "--split", "train=0.8,dev=0.3"], "split fractions add up to 1.1"),
        (["--inputs", "question", "--split", "train:0.8"], "--split takes split=fraction pairs"),
        (["--inputs", "question", "--split", "a=1", "--split-field", "n"], "not both"),
        (["--inputs", "question", "--format", "xml"], "--format is one of jsonl, json, csv"),
    ],
)
def test_import_errors_exit_2(dspex: Invoke, qa_jsonl: Path, args: list[str], message: str) -> None:
    result = dspex("datasets", "import", "qa", str(qa_jsonl), *args, code=2)
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert as_json(dspex("datasets", "list", "--json")) == []


def test_unknown_dataset_and_missing_file_exit_2(dspex: Invoke, qa_jsonl: Path) -> None:
    dspex("datasets", "import", "qa", str(qa_jsonl), "--inputs", "question")
    assert "did you mean 'qa'" in dspex("datasets", "show", "qaa", code=2).stderr
    assert "no such file" in dspex("datasets", "import", "x", "missing.jsonl", "--inputs", "q", code=2).stderr
    assert "has no splits" in dspex("datasets", "export", "qa", "x.jsonl", "--split", "dev", code=2).stderr
