"""``dspex programs``: register from an import path or a spec file, list, show, promote, roll back."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Invoke, as_json


def test_register_import_path_then_list_and_show(dspex: Invoke) -> None:
    registered = dspex(
        "programs", "register", "qa", "cli_sample:build_qa", "--description", "answers [things]"
    )
    assert "registered qa: version" in registered.stdout
    assert "draft" in registered.stdout

    listed = dspex("programs", "list")
    # rich would eat "[things]" as markup if it were not escaped.
    assert "answers [things]" in listed.stdout
    [row] = as_json(dspex("programs", "list", "--json"))
    assert row["name"] == "qa"
    assert row["source"] == {"v": 1, "kind": "import", "path": "cli_sample:build_qa"}
    assert row["production_version"] is None
    assert row["versions"] == 1

    shown = dspex("programs", "show", "qa")
    assert "import path 'cli_sample:build_qa'" in shown.stdout
    assert "registered" in shown.stdout  # the version's note
    detail = as_json(dspex("programs", "show", "qa", "--json"))
    [version] = detail["versions"]
    assert version["status"] == "draft"
    assert "state" not in version
    assert detail["default_version"] == version["id"]
    assert version["id"][:12] in shown.stdout


def test_register_yaml_and_json_spec_files(dspex: Invoke, qa_spec: Path, tmp_path: Path) -> None:
    version = as_json(dspex("programs", "register", "qa", str(qa_spec), "--json"))
    assert version["program"] == "qa"
    assert version["status"] == "draft"
    spec_json = tmp_path / "classify.json"
    spec_json.write_text('{"module": "predict", "signature": "text -> label: str"}', encoding="utf-8")
    dspex("programs", "register", "classify", str(spec_json))

    shown = as_json(dspex("programs", "show", "qa", "--json"))
    assert shown["source"]["spec"] == {"module": "chain_of_thought", "signature": "question -> answer"}
    names = [p["name"] for p in as_json(dspex("programs", "list", "--json"))]
    assert names == ["classify", "qa"]
    # Registering the same spec again records the same state: still one version.
    dspex("programs", "register", "qa", str(qa_spec))
    assert len(as_json(dspex("programs", "show", "qa", "--json"))["versions"]) == 1


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "typo.yaml",
            "# a comment\nmodule: chain_of_thougt\nsignature: q -> a\n",
            "did you mean 'chain_of_thought'",
        ),
        (
            "option.yaml",
            "module: react\nsignature: q -> a\noptions:\n  max_iterz: 3\n",
            "did you mean 'max_iters'",
        ),
        ("syntax.yml", "module: predict\nsignature: [q -> a\n", "invalid YAML"),
        ("list.yaml", "- module\n- predict\n", "a program spec is a mapping"),
        ("broken.json", '{"module": "predict",\n "signature": }', "invalid JSON"),
    ],
)
def test_bad_spec_files_exit_2_with_file_and_line(
    dspex: Invoke, tmp_path: Path, file: str, content: str, message: str
) -> None:
    (tmp_path / file).write_text(content, encoding="utf-8")
    result = dspex("programs", "register", "x", file, code=2)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()  # one line, nothing else
    assert line.startswith(f"error: {file}: ")
    assert message in line
    expected_line = {"typo.yaml": 2, "option.yaml": 4, "syntax.yml": 3, "list.yaml": 1, "broken.json": 2}[
        file
    ]
    assert line.endswith(f"(line {expected_line})")
    assert dspex("programs", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.yaml", "no such spec file: missing.yaml"),
        ("not an import path", "a program import path looks like 'package.module:factory'"),
        ("no_such_module:build", "no module named 'no_such_module'"),
        ("cli_sample:build_qaa", "did you mean 'build_qa'"),
    ],
)
def test_bad_sources_exit_2(dspex: Invoke, source: str, message: str) -> None:
    result = dspex("programs", "register", "x", source, code=2)
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


def test_promote_rollback_and_set_status(dspex: Invoke, qa_spec: Path, tmp_path: Path) -> None:
    first = as_json(dspex("programs", "register", "qa", str(qa_spec), "--json"))["id"]
    other = tmp_path / "qa2.yaml"
    other.write_text("module: predict\nsignature: question -> answer\n", encoding="utf-8")
    refused = dspex("programs", "register", "qa", str(other), code=2)
    assert "already registered" in refused.stderr
    second = as_json(dspex("programs", "register", "qa", str(other), "--replace", "--json"))["id"]
    assert second != first

    promoted = dspex("programs", "promote", "qa", first[:8])  # a prefix, as the registry allows
    assert f"version {first[:12]}" in promoted.stdout
    assert "production" in promoted.stdout
    assert as_json(dspex("programs", "list", "--json"))[0]["production_version"] == first
    assert as_json(dspex("programs", "promote", "qa", second, "--json"))["status"] == "production"
    statuses = {v["id"]: v["status"] for v in as_json(dspex("programs", "show", "qa", "--json"))["versions"]}
    assert statuses == {first: "archived", second: "production"}

    restored = as_json(dspex("programs", "rollback", "qa", "--json"))
    assert restored["id"] == first
    assert restored["status"] == "production"
    nothing = dspex("programs", "rollback", "qa", code=2)
    assert "nothing to roll back to" in nothing.stderr

    dspex("programs", "set-status", "qa", second[:10], "archived")
    bad = dspex("programs", "set-status", "qa", second, "optimizing", code=2)
    assert "is archived" in bad.stderr
    typo = dspex("programs", "set-status", "qa", second, "drafty", code=2)
    assert "did you mean 'draft'" in typo.stderr
    assert "ambiguous" not in dspex("programs", "promote", "qa", "zzzzzz", code=2).stderr


def test_unknown_program_suggests_a_close_name(dspex: Invoke, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("programs", "show", "qaa", code=2)
    assert result.stderr == "error: unknown program 'qaa'; did you mean 'qa'? valid: qa\n"
    assert (
        "unknown version 'abcdef' of program 'qa'"
        in dspex("programs", "promote", "qa", "abcdef", code=2).stderr
    )
