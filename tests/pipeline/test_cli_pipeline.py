"""``dspex pipeline check`` and ``dspex pipeline run``: the steps graph, live progress, recorded runs.

Runs use the LM from settings (DSPEX_LM and DSPEX_API_BASE pointing at the simulated server), so the
module steps make real HTTP calls through DSPy.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from dspex.cli import app
from dspex.testing.server import SimServer

SPEC = textwrap.dedent(
    """
    name: research
    steps:
      - name: parse
        function: pipeline_spec_sample:parse_query
        outputs: [query, keywords]
      - parallel:
          name: retrieve
          branches:
            - {name: bm25, function: "pipeline_spec_sample:bm25", outputs: passages}
            - {name: kw, function: "pipeline_spec_sample:keywords", outputs: passages}
          merge: {passages: concat}
      - name: answer
        module: predict
        signature: "query, passages: list[str] -> answer"
    """
).lstrip()


def dspex(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != code:
        raise AssertionError(
            f"dspex {' '.join(args)} exited {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        ) from result.exception
    return result


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "research.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_check_prints_the_steps_graph(spec_file: Path) -> None:
    out = dspex("pipeline", "check", str(spec_file)).stdout
    assert "pipeline research" in out
    for line in ("parse ", "retrieve ", "branch: bm25", "branch: kw", "answer "):
        assert line in out
    assert "inputs: text" in out
    graph = _json(dspex("pipeline", "check", str(spec_file), "--json"))
    assert graph["inputs"] == ["text"]
    rows = {row["name"]: row for row in graph["steps"]}
    assert rows["retrieve"] == {
        "depth": 1,
        "role": "",
        "name": "retrieve",
        "kind": "parallel",
        "reads": ["query", "keywords"],
        "writes": ["passages"],
    }
    assert (rows["kw"]["depth"], rows["kw"]["role"]) == (2, "branch")
    assert rows["answer"]["kind"] == "predict"


def test_check_reports_spec_errors_with_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SPEC.replace("merge: {passages: concat}", "merge: {passages: concatenate}"), encoding="utf-8"
    )
    result = dspex("pipeline", "check", str(bad), code=2)
    assert "unknown merge rule 'concatenate'" in result.stderr
    assert "at steps[1].parallel.merge.passages (line 11)" in result.stderr
    missing = dspex("pipeline", "check", str(tmp_path / "nope.yaml"), code=2)
    assert "cannot read pipeline spec" in missing.stderr
    assert "No such file" in missing.stderr


def test_run_shows_progress_then_outputs_and_is_recorded(spec_file: Path, settings_sim: SimServer) -> None:
    result = dspex("pipeline", "run", str(spec_file), "-i", "text=What is the capital of Peru?")
    out = result.stdout
    # The live view's last frame: every step done, with its duration.
    for name in ("parse", "retrieve", "branch: bm25", "branch: kw", "answer"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        assert " done " in line, line
    assert "research outputs" in out
    assert "bm25:what is the capital of peru?" in out
    assert "execution " in out
    assert settings_sim.stats().statuses == {200: 1}

    data = _json(
        dspex("pipeline", "run", str(spec_file), "--input", '{"text": "Capital of Peru?"}', "--json")
    )
    assert data["outputs"]["passages"] == ["bm25:capital of peru?", "kw:Capital", "kw:of"]
    assert data["outputs"]["answer"]
    assert {name: s["status"] for name, s in data["steps"].items()} == dict.fromkeys(
        ["parse", "retrieve", "bm25", "kw", "answer"], "done"
    )
    assert data["total_tokens"] > 0
    record = _json(dspex("executions", "show", data["execution_id"], "--json"))
    assert record["status"] == "succeeded"
    assert record["program"] == "research"
    assert record["outputs"]["answer"] == data["outputs"]["answer"]


def test_a_failing_step_shows_failed_and_exits_1(tmp_path: Path, settings_sim: SimServer) -> None:
    spec = tmp_path / "fails.yaml"
    spec.write_text(
        "name: fails\nsteps:\n  - {name: flaky, function: 'pipeline_spec_sample:flaky_once', outputs: r}\n",
        encoding="utf-8",
    )
    result = dspex("pipeline", "run", str(spec), "-i", "query=cli-fail-test", code=1)
    assert "step 'flaky' failed: Flaky" in result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("flaky"))
    assert "failed" in line
    assert "Flaky: first call for 'cli-fail-test'" in line


def test_retries_and_skips_are_reported(tmp_path: Path, settings_sim: SimServer) -> None:
    spec = tmp_path / "retry.yaml"
    spec.write_text(
        textwrap.dedent(
            """
            name: retries
            steps:
              - name: flaky
                function: pipeline_spec_sample:flaky_once
                outputs: r
                retry: {attempts: 2, backoff: 0, jitter: 0}
              - {name: broken, function: "pipeline_spec_sample:flaky_once", inputs: {query: other},
                 outputs: b, continue_on_error: true}
              - {name: after, function: "pipeline_spec_sample:shout", inputs: {passage: b}, outputs: loud}
            """
        ),
        encoding="utf-8",
    )
    data = _json(
        dspex("pipeline", "run", str(spec), "-i", "query=cli-retry", "-i", "other=cli-skip", "--json")
    )
    assert data["outputs"] == {"r": "ok:cli-retry"}
    flaky = data["steps"]["flaky"]
    assert (flaky["status"], flaky["attempts"], flaky["runs"]) == ("done", 2, 1)
    assert data["steps"]["broken"]["status"] == "failed (continued)"
    assert data["steps"]["after"]["status"] == "skipped"
    assert set(data["step_errors"]) == {"broken", "after"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pipeline 'research' needs the inputs text; give them with -i text=..."),
        (["-i", "text=x", "-i", "txt=y"], "takes no input 'txt'"),
    ],
)
def test_input_errors_exit_2(spec_file: Path, settings_sim: SimServer, args: list[str], message: str) -> None:
    result = dspex("pipeline", "run", str(spec_file), *args, code=2)
    assert message in result.stderr
    assert settings_sim.stats().statuses == {}


def test_run_without_an_lm_says_how_to_configure_one(spec_file: Path) -> None:
    result = dspex("pipeline", "run", str(spec_file), "-i", "text=x", code=2)
    assert result.stderr.startswith("error: no language model configured")
    assert result.stdout == ""
