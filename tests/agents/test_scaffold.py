"""Self-scaffolding: invalid or unsafe specs are rejected with their path and fed back, failing test cases
are fed back, and the best spec becomes a draft program that runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dspex import ConfigurationError, ExecutionError, Settings, SpecError
from dspex.agents import ScaffoldCase, load_tests, scaffold
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine

IMPORT_PATH = """name: bad
steps:
  - {name: shell, function: "os:system", outputs: answer}
"""
RUNS_CODE = """name: bad
steps:
  - {name: solve, module: rlm, signature: "question -> answer", options: {interpreter: local}}
"""
WRONG_FIELD = """name: bad
steps:
  - {name: solve, module: predict, signature: "question -> result"}
"""
MISREADS = """```yaml
name: reads_text
inputs: [question]
steps:
  - {name: solve, module: predict, signature: "text -> answer", inputs: {text: question}}
```"""
GOOD = """name: adds
inputs: [question]
outputs: [answer]
steps:
  - {name: solve, module: chain_of_thought, signature: "question -> answer"}
"""
TESTS = [
    ScaffoldCase({"question": "2+3"}, {"answer": "5"}),
    ScaffoldCase({"question": "10+4"}, {"answer": "14"}),
]


def _add(inputs: dict[str, Any]) -> str:
    if "question" not in inputs:  # the misreading spec asks with another field: a wrong answer
        return "0"
    return str(sum(int(x) for x in str(inputs["question"]).split("+")))


def _app(tmp_path: Path, specs: list[str]) -> tuple[App, ScriptedEngine]:
    engine = ScriptedEngine({"spec": specs, "answer": _add})
    settings = Settings.load(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'dspex.db'}")
    return App(settings, lm=engine.lm("sim")), engine


def test_rejects_unsafe_and_invalid_specs_then_recovers_and_registers_a_draft(tmp_path: Path) -> None:
    app, engine = _app(tmp_path, [IMPORT_PATH, RUNS_CODE, WRONG_FIELD, MISREADS, GOOD, GOOD])
    with app:
        result = scaffold(app, "add the numbers", TESTS, name="adder", iterations=6)
        errors = [a.error for a in result.attempts]
        assert "import path" in (errors[0] or "")
        assert "steps[0].function" in (errors[0] or "")
        assert "runs generated code" in (errors[1] or "")
        assert "never writes answer" in (errors[2] or "")
        assert [a.score for a in result.attempts] == [
            None,
            None,
            None,
            0.0,
            1.0,
        ]  # stopped at a perfect score
        assert result.attempts[3].failures[0]["got"] == {"answer": "0"}
        assert result.score == 1.0
        assert result.spec["name"] == "adds"

        feedback = [c.prompt.inputs["feedback"] for c in engine.history if "feedback" in c.prompt.inputs]
        assert feedback[0] == ""
        assert "rejected" in feedback[1]
        assert "os:system" in feedback[1]
        assert "scored 0.00" in feedback[4]
        assert '"expected": {"answer": "5"}' in feedback[4]

        versions = app.programs.versions("adder")
        assert [v.status for v in versions] == ["draft"]
        assert versions[0].id == result.version_id
        assert app.run("adder", {"question": "7+8"}).outputs["answer"] == "15"  # the draft runs
        app.flush()
        proposals = [r for r in app.executions.find(limit=100) if r.inputs.get("task") == "add the numbers"]
        assert len(proposals) == 5
        assert all(r.status == "succeeded" for r in proposals)


def test_keeps_the_best_spec_when_none_is_perfect_and_fails_when_none_is_valid(tmp_path: Path) -> None:
    app, _ = _app(tmp_path, [MISREADS, "steps: []", IMPORT_PATH])
    with app:
        result = scaffold(app, "add the numbers", TESTS, name="adder", iterations=3)
        assert (result.score, result.spec["name"]) == (0.0, "reads_text")
        assert "non-empty list" in (result.attempts[1].error or "")

    app, _ = _app(tmp_path / "second", ["just prose, no spec", RUNS_CODE])
    with app:
        with pytest.raises(ExecutionError, match="no acceptable pipeline spec in 2 iteration"):
            scaffold(app, "add the numbers", TESTS, name="never", iterations=2)
        with pytest.raises(ConfigurationError, match=r"unknown program|no program"):
            app.programs.get("never")


def test_tests_file_and_arguments_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "tests.jsonl"
    path.write_text(json.dumps({"inputs": {"question": "1+1"}, "expected": {"answer": "2"}}) + "\n\n")
    assert load_tests(path) == [ScaffoldCase({"question": "1+1"}, {"answer": "2"})]
    path.write_text('{"inputs": {"question": "1+1"}}\n')
    with pytest.raises(SpecError, match="line 1"):
        load_tests(path)
    path.write_text('{"inputs": {}, "expected": {"answer": "2"}}\n')
    with pytest.raises(SpecError, match="inputs of the test case"):
        load_tests(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_tests(tmp_path / "missing.jsonl")
    app, _ = _app(tmp_path, [GOOD])
    with app:
        with pytest.raises(ConfigurationError, match="iterations"):
            scaffold(app, "add", TESTS, name="x", iterations=0)
        with pytest.raises(ConfigurationError, match="task is a description"):
            scaffold(app, " ", TESTS, name="x")


def test_api_program_specs_cannot_smuggle_code_in_a_pipeline(tmp_path: Path) -> None:
    app, _ = _app(tmp_path, [])
    with app:
        policy = app.spec_policy("untrusted")
        branch = {"name": "a", "module": "predict", "signature": "q -> a"}
        merged = {"steps": [{"parallel": {"branches": [branch], "merge": {"a": "evil.mod:merge"}}}]}
        with pytest.raises(SpecError, match="import path") as info:
            policy.check_program_spec({"pipeline": merged})
        assert info.value.path == "pipeline.steps[0].parallel.merge.a"
        retried = {"steps": [{**branch, "retry": {"retry_on": ["TimeoutError", "evil:Error"]}}]}
        with pytest.raises(SpecError, match="import path") as info:
            policy.check_program_spec({"pipeline": retried})
        assert info.value.path == "pipeline.steps[0].retry.retry_on[1]"
        local = {"steps": [{**branch, "module": "rlm", "options": {"interpreter": "local"}}]}
        with pytest.raises(SpecError, match="interpreter"):
            policy.check_program_spec({"pipeline": local})
