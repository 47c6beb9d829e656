"""``dspex jobs submit-*|list|show|cancel`` and ``dspex worker``, in-process, against the simulated LM."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from dspex import Settings
from dspex.cli import app as cli
from dspex.runtime import App
from dspex.testing.server import SimServer

Invoke = Callable[..., Result]
SPACE = """\
variables:
  v: 1
  variables:
    - {name: temperature, kind: float, low: 0.0, high: 1.5}
bindings:
  version: 1
  bindings:
    - {variable: temperature, target: lm_setting, setting: temperature, predictors: "*"}
"""


@pytest.fixture
def dspex() -> Invoke:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Result:
        result = runner.invoke(cli, list(args))
        if result.exit_code != code:
            raise AssertionError(
                f"dspex {' '.join(args)} exited {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            ) from result.exception
        return result

    return invoke


@pytest.fixture
def space(settings_sim: SimServer, tmp_path: Path) -> Path:
    """A registered program, a dataset with train/dev splits, and a space file."""
    with App(Settings.load()) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        rows = [
            {**row, "part": "train" if i < 4 else "dev"}
            for i, row in enumerate(settings_sim.task.dicts()[:12])
        ]
        app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
    path = tmp_path / "space.yaml"
    path.write_text(SPACE, encoding="utf-8")
    return path


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_submit_run_list_show(dspex: Invoke, space: Path) -> None:
    submitted = dspex(
        "jobs",
        "submit-optimization",
        "qa",
        "--dataset",
        "qa-set",
        "--space",
        str(space),
        "--budget",
        "2",
        "--json",
    )
    job = _json(submitted)
    assert (job["status"], job["kind"], job["payload"]["n_trials"]) == ("queued", "optimize", 2)
    evaluation = dspex("jobs", "submit-evaluation", "qa", "--dataset", "qa-set", "--metric", "f1").stdout
    assert evaluation.startswith("queued job ")
    evaluation_id = evaluation.split()[2].rstrip(":")

    listed = _json(dspex("jobs", "list", "--status", "queued", "--json"))
    assert {j["id"] for j in listed} == {job["id"], evaluation_id}
    assert "Jobs (2 shown; 2 queued)" in dspex("jobs", "list").stdout

    out = dspex("worker", "--until-idle", "--poll", "0.05", "--lease", "5").stdout
    lines = out.splitlines()
    assert lines[0].startswith("worker ")
    assert sum(line.startswith("start ") for line in lines) == 2
    assert sum(line.startswith("succeeded ") for line in lines) == 2
    assert lines[-1].endswith("stopped after 2 job(s)")

    shown = _json(dspex("jobs", "show", job["id"], "--json"))
    assert (shown["status"], shown["attempts"]) == ("succeeded", 1)
    assert shown["result"]["finished"] == 2
    text = dspex("jobs", "show", evaluation_id).stdout
    assert "status succeeded" in text
    assert '"metric": "f1"' in text  # the payload
    assert '"score"' in text  # the result
    assert "2/2 trials" in dspex("jobs", "list", "--kind", "optimize").stdout


def test_cancel_and_errors(dspex: Invoke, space: Path) -> None:
    job = _json(dspex("jobs", "submit-evaluation", "qa", "--dataset", "qa-set", "--json"))
    assert dspex("jobs", "cancel", job["id"]).stdout.strip() == f"job {job['id']} cancelled"
    again = dspex("jobs", "cancel", job["id"], code=2)
    assert "already ended: cancelled" in again.stderr
    assert "no job 'nope'" in dspex("jobs", "show", "nope", code=2).stderr
    assert "job status" in dspex("jobs", "list", "--status", "done", code=2).stderr
    bad = dspex(
        "jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--space", str(space), "--budget", "2",
        "--metric", "exact", code=2,
    )  # fmt: skip
    assert "did you mean 'exact_match'" in bad.stderr
    assert (
        "--variables"
        in dspex(
            "jobs", "submit-evaluation", "qa", "--dataset", "qa-set", "--variables", "[1]", code=2
        ).stderr
    )
    assert "did you mean 'optimize'" in dspex("worker", "--kinds", "optimise", "--until-idle", code=2).stderr
    failed = _json(dspex("jobs", "list", "--status", "failed", "--json"))
    assert failed == []  # refused submissions queue nothing
