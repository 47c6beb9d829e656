"""``dspex run``: inputs from --input and -i, outputs as a table or JSON, failures recorded and exit codes.

Runs use the LM from settings (DSPEX_LM and DSPEX_API_BASE pointing at the simulated server), so every
run here makes a real HTTP call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import Invoke, as_json

from dspex.testing.server import SimServer


def test_run_with_input_prints_outputs_and_execution(
    dspex: Invoke, settings_sim: SimServer, qa_spec: Path
) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("run", "qa", "--input", '{"question": "What is the capital of Peru?"}')
    assert "answer" in result.stdout
    assert "reasoning" in result.stdout
    assert "execution " in result.stdout
    assert settings_sim.stats().statuses == {200: 1}

    data = as_json(dspex("run", "qa", "--input", '{"question": "What is the capital of Peru?"}', "--json"))
    assert set(data) == {
        "program",
        "version_id",
        "execution_id",
        "outputs",
        "duration_ms",
        "usage",
        "total_tokens",
        "cost_usd",
        "trace_id",
    }
    assert data["trace_id"] is None  # no export, no traceparent: no trace (README, "Trace ids")
    assert data["outputs"]["answer"]
    assert data["usage"]["openai/sim-medium"]["calls"] == 1
    assert data["total_tokens"] > 0
    record = as_json(dspex("executions", "show", data["execution_id"], "--json"))
    assert record["status"] == "succeeded"
    assert record["version_id"] == data["version_id"]
    assert record["outputs"] == data["outputs"]


def test_key_value_inputs_are_parsed_as_json_when_they_parse(dspex: Invoke, settings_sim: SimServer) -> None:
    dspex("programs", "register", "typed", "cli_sample:build_typed")
    data = as_json(
        dspex(
            "run",
            "typed",
            "--input",
            '{"question": "overridden", "k": 1}',
            "-i",
            "question=What is the capital of Peru?",
            "-i",
            "k=3",
            "--field",
            'tags=["geo", "capitals"]',
            "--json",
        )
    )
    inputs = as_json(dspex("executions", "show", data["execution_id"], "--json"))["inputs"]
    # -i wins over --input; 3 is a number and the list a list; text that is not JSON stays text.
    assert inputs == {"question": "What is the capital of Peru?", "k": 3, "tags": ["geo", "capitals"]}


def test_input_from_a_file(dspex: Invoke, settings_sim: SimServer, qa_spec: Path, tmp_path: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    (tmp_path / "in.json").write_text('{"question": "What is the capital of Peru?"}', encoding="utf-8")
    assert as_json(dspex("run", "qa", "--input", "@in.json", "--json"))["outputs"]["answer"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "[1, 2]"], "--input must be a JSON object (field names to values), got a JSON array"),
        (["--input", "{question: hi}"], "--input must be a JSON object such as"),
        (["--input", "@nowhere.json"], "cannot read 'nowhere.json'"),
        (["-i", "question"], "-i takes key=value, got 'question'"),
    ],
)
def test_malformed_input_options_exit_2(
    dspex: Invoke, settings_sim: SimServer, qa_spec: Path, args: list[str], message: str
) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("run", "qa", *args, code=2)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert settings_sim.stats().statuses == {}


def test_inputs_that_do_not_match_exit_2_and_the_failed_run_is_recorded(
    dspex: Invoke, settings_sim: SimServer, qa_spec: Path
) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("run", "qa", "-i", "questio=hi", code=2)
    assert "questio: unexpected field" in result.stderr
    assert "question: missing" in result.stderr
    failed = as_json(dspex("executions", "list", "--status", "failed", "--json"))
    assert len(failed) == 1
    assert failed[0]["id"] in result.stderr  # the error line names the record
    assert failed[0]["inputs"] == {"questio": "hi"}
    assert failed[0]["error"]["code"] == "validation_error"
    assert settings_sim.stats().statuses == {}


@pytest.mark.sim_lm(error_rate=1.0)
def test_an_lm_failure_exits_1_and_is_recorded(dspex: Invoke, settings_sim: SimServer, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("run", "qa", "-i", "question=What is the capital of Peru?", code=1)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the language model failed")
    [record] = as_json(dspex("executions", "list", "--json"))
    assert record["status"] == "failed"
    assert record["error"]["type"] == "LMServerError"  # DSPy's error, as the run recorded it
    assert record["id"] in line


def test_no_lm_configured_is_a_clear_configuration_error(dspex: Invoke, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    result = dspex("run", "qa", "-i", "question=hi", code=2)
    assert result.stderr.startswith("error: no language model configured: set DSPEX_LM")


def test_a_spec_with_its_own_lm_runs_without_a_configured_lm(
    dspex: Invoke, sim_lm_server: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sim")  # specs never store credentials; litellm reads this
    spec = tmp_path / "own.yaml"
    spec.write_text(
        "module: predict\nsignature: question -> answer\n"
        f"lm: {{model: openai/sim-large, api_base: '{sim_lm_server.url}', cache: false}}\n",
        encoding="utf-8",
    )
    dspex("programs", "register", "own", str(spec))
    data = as_json(dspex("run", "own", "-i", "question=What is the capital of Peru?", "--json"))
    assert list(data["usage"]) == ["openai/sim-large"]
    assert sim_lm_server.stats().statuses == {200: 1}


def test_unknown_version_and_program_exit_2(dspex: Invoke, settings_sim: SimServer, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    assert (
        "unknown version 'ffffff'"
        in dspex("run", "qa", "--version", "ffffff", "-i", "question=x", code=2).stderr
    )
    assert "did you mean 'qa'" in dspex("run", "qaa", "-i", "question=x", code=2).stderr


def test_real_subprocess_register_run_and_list(settings_sim: SimServer, qa_spec: Path) -> None:
    env = dict(os.environ)  # DSPEX_HOME, DSPEX_LM, DSPEX_API_BASE... from the fixtures
    dspex_script = [str(Path(sys.executable).with_name("dspex"))]  # the installed console script

    def dspex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*dspex_script, *args], env=env, capture_output=True, text=True, timeout=60)

    assert dspex("programs", "register", "qa", str(qa_spec)).returncode == 0
    ran = dspex("run", "qa", "-i", "question=What is the capital of Peru?", "--json")
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout)  # the whole of stdout is JSON
    assert data["outputs"]["answer"]
    bad = dspex("run", "qa", "--input", "[]")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr == "error: --input must be a JSON object (field names to values), got a JSON array\n"
    listed = dspex("executions", "list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [data["execution_id"]]
