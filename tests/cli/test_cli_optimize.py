"""``dspex optimize`` and ``dspex optimizations list|show`` against the simulated LM server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import Invoke, as_json

from dspex.testing.server import SimServer

SPACE = """\
variables:
  v: 1
  variables:
    - {name: model, kind: model, choices: [openai/sim-small, openai/sim-large]}
    - {name: temperature, kind: float, low: 0.0, high: 1.0, step: 0.5}
bindings:
  version: 1
  bindings:
    - {variable: model, target: model, predictors: "*"}
    - {variable: temperature, target: lm_setting, setting: temperature, predictors: "*"}
"""


@pytest.fixture
def project(dspex: Invoke, settings_sim: SimServer, tmp_path: Path) -> Path:
    """A registered program, a dataset with train/dev splits, and a space file."""
    spec = tmp_path / "qa.yaml"
    spec.write_text("module: predict\nsignature: question -> answer\n", encoding="utf-8")
    dspex("programs", "register", "qa", str(spec))
    rows = tmp_path / "qa.jsonl"
    lines = [
        json.dumps({**row, "part": "train" if i < 6 else "dev"})
        for i, row in enumerate(settings_sim.task.dicts()[:20])
    ]
    rows.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dspex("datasets", "import", "qa-set", str(rows), "--inputs", "question", "--split-field", "part")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE, encoding="utf-8")
    return space


def test_optimize_then_list_and_show(dspex: Invoke, project: Path) -> None:
    out = dspex("optimize", "qa", "--dataset", "qa-set", "--space", str(project), "--budget", "3").stdout
    assert "Score by trial" in out
    assert "█" in out
    assert "<- best" in out
    assert "in optimizing; promote with `dspex programs promote qa " in out
    listed = as_json(dspex("optimizations", "list", "--program", "qa", "--json"))
    assert len(listed) == 1
    assert listed[0]["status"] == "succeeded"
    assert listed[0]["finished_trials"] == 3
    run_id = listed[0]["id"]
    shown = dspex("optimizations", "show", run_id[:10]).stdout
    assert run_id in shown
    assert "Trials (" in shown
    assert "<- best" in shown
    detail = as_json(dspex("optimizations", "show", run_id, "--json"))
    assert [t["number"] for t in detail["trials"]][:3] == [0, 1, 2]
    version = detail["result_version_id"]
    assert version is not None
    versions = dspex("programs", "show", "qa").stdout
    assert "optimizing" in versions
    dspex("programs", "promote", "qa", version[:12])
    assert "Optimization runs (1)" in dspex("optimizations", "list").stdout


def test_optimize_json(dspex: Invoke, project: Path) -> None:
    data = as_json(
        dspex(
            "optimize",
            "qa",
            "--dataset",
            "qa-set",
            "--space",
            str(project),
            "--budget",
            "2",
            "--metric",
            "f1",
            "--seed",
            "3",
            "--json",
        )
    )
    assert data["program"] == "qa"
    assert len([t for t in data["trials"] if t["state"] != "failed"]) == 2
    assert set(data["best"]["configuration"]) == {"model", "temperature"}
    assert data["version_id"]
    assert data["lm_calls"] > 0
    # --max-lm-calls: the variable search starts no trial once its trials made that many calls.
    capped = as_json(
        dspex("optimize", "qa", "--dataset", "qa-set", "--space", str(project), "--budget", "50",
              "--seed", "4", "--max-lm-calls", "1", "--json")
    )  # fmt: skip
    assert len([t for t in capped["trials"] if t["state"] != "failed"]) < 50
    assert capped["lm_calls"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dataset", "nope"), "dataset"),
        (("--dataset", "qa-set", "--metric", "exact"), "exact_match"),
        (("--dataset", "qa-set", "--objectives", "quality,speed"), "objective"),
    ],
)
def test_optimize_bad_names_exit_2(dspex: Invoke, project: Path, args: tuple[str, ...], message: str) -> None:
    result = dspex("optimize", "qa", *args, "--space", str(project), "--budget", "1", code=2)
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_space_file_exit_2_with_path_and_line(dspex: Invoke, project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPACE.replace("kind: float", "kind: floaty"), encoding="utf-8")
    result = dspex("optimize", "qa", "--dataset", "qa-set", "--space", str(bad), "--budget", "1", code=2)
    assert str(bad) in result.stderr
    assert "variables.variables[1]" in result.stderr
    assert "(line 5)" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(SPACE.replace("target: model", "target: modle"), encoding="utf-8")
    result = dspex("optimize", "qa", "--dataset", "qa-set", "--space", str(broken), "--budget", "1", code=2)
    assert "bindings.bindings[0]" in result.stderr
    assert "(line 9)" in result.stderr
    unparsable = tmp_path / "unparsable.yaml"
    unparsable.write_text("variables: [\n", encoding="utf-8")
    result = dspex(
        "optimize", "qa", "--dataset", "qa-set", "--space", str(unparsable), "--budget", "1", code=2
    )
    assert "invalid YAML" in result.stderr
    assert "line" in result.stderr
    dspex(
        "optimize", "qa", "--dataset", "qa-set", "--space", str(tmp_path / "no.yaml"), "--budget", "1", code=2
    )
    dspex("optimize", "nope", "--dataset", "qa-set", "--space", str(project), "--budget", "1", code=2)


def test_show_unknown_run_exit_2(dspex: Invoke) -> None:
    assert "no optimization" in dspex("optimizations", "show", "opt-nope", code=2).stderr


# -- DSPy's optimizers -------------------------------------------------------------------------------------


def test_optimize_with_a_dspy_optimizer_and_again_from_the_evaluation_cache(
    dspex: Invoke, project: Path, settings_sim: SimServer
) -> None:
    args = ("optimize", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap_rs")
    options = (
        "-o",
        "num_candidate_programs=2",
        "-o",
        "max_bootstrapped_demos=2",
        "--options",
        '{"num_threads": 2}',
    )
    before = settings_sim.stats().total_requests
    out = dspex(*args, *options).stdout
    assert "bootstrap_rs: score " in out
    assert "in optimizing; promote with `dspex programs promote qa " in out
    first_calls = settings_sim.stats().total_requests - before
    assert first_calls > 0
    # The same command again: the same run, every evaluation already in the store, so no LM call.
    again = as_json(dspex(*args, *options, "--json"))
    assert settings_sim.stats().total_requests - before == first_calls
    assert again["lm_calls"] == 0
    assert again["cached"] > 0
    assert again["optimizer"] == "bootstrap_rs"
    assert again["options"] == {"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "num_threads": 2}
    listed = as_json(dspex("optimizations", "list", "--program", "qa", "--json"))
    assert [(r["id"], r["status"]) for r in listed] == [(again["optimization_id"], "succeeded")]


def test_optimizer_options_are_checked(dspex: Invoke, project: Path) -> None:
    args = ("optimize", "qa", "--dataset", "qa-set")
    err = dspex(*args, "--optimizer", "copro", "-o", "bredth=3", code=2).stderr
    assert "unknown copro option 'bredth'; did you mean 'breadth'? valid: breadth, depth" in err
    err = dspex(*args, "--optimizer", "copro", "-o", "depth", code=2).stderr
    assert "-o/--option takes NAME=VALUE" in err
    err = dspex(*args, "--optimizer", "simba", "--space", str(project), code=2).stderr
    assert "--space belong to the variable search; --optimizer takes its options with -o" in err
    err = dspex(*args, code=2).stderr
    assert "the variable search needs --space and --budget; or pick a DSPy optimizer with --optimizer" in err
    err = dspex(
        "jobs",
        "submit-optimization",
        "qa",
        "--dataset",
        "qa-set",
        "--optimizer",
        "gepa",
        "-o",
        "auto=fast",
        code=2,
    ).stderr
    assert "option 'auto' must be one of 'light', 'medium', 'heavy' or null, got 'fast'" in err


def test_submit_a_dspy_optimizer_job(dspex: Invoke, project: Path) -> None:
    queued = as_json(
        dspex(
            "jobs",
            "submit-optimization",
            "qa",
            "--dataset",
            "qa-set",
            "--optimizer",
            "bootstrap",
            "-o",
            "max_bootstrapped_demos=1",
            "--json",
        )
    )
    assert queued["payload"]["optimizer"] == "bootstrap"
    assert queued["payload"]["options"] == {"max_bootstrapped_demos": 1}
    assert "succeeded" in dspex("worker", "--until-idle", "--poll", "0.05").stdout
    shown = dspex("jobs", "list").stdout
    assert "bootstrap" in shown  # the progress column: the optimizer, its phase, candidates, LM calls
    job = as_json(dspex("jobs", "show", queued["id"], "--json"))
    assert job["status"] == "succeeded"
    assert job["result"]["version_id"]
    assert job["progress"]["optimizer"] == "bootstrap"


def test_max_lm_calls_caps_a_dspy_optimizer_in_the_foreground_and_as_a_job(
    dspex: Invoke, project: Path, settings_sim: SimServer
) -> None:
    args = ("optimize", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap_rs")
    options = ("-o", "num_candidate_programs=8", "-o", "max_bootstrapped_demos=2", "-o", "num_threads=2")
    before = settings_sim.stats().total_requests
    result = as_json(dspex(*args, *options, "--max-lm-calls", "30", "--json"))
    sent = settings_sim.stats().total_requests - before
    assert result["lm_calls"] == sent <= 30
    assert result["stopped"].startswith("max_lm_calls=30 reached")
    assert result["version_id"]
    err = dspex(*args, "--max-lm-calls", "0", code=2).stderr
    assert "--max-lm-calls" in err
    queued = as_json(
        dspex("jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap_rs",
              *options, "--max-lm-calls", "25", "--json")
    )  # fmt: skip
    assert queued["payload"]["max_lm_calls"] == 25
    before = settings_sim.stats().total_requests
    assert "succeeded" in dspex("worker", "--until-idle", "--poll", "0.05").stdout
    assert settings_sim.stats().total_requests - before <= 25
    job = as_json(dspex("jobs", "show", queued["id"], "--json"))
    assert job["result"]["stopped"].startswith("max_lm_calls=25 reached")
