"""``dspex optimize`` and ``dspex optimizations list|show`` against the simulated LM server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import Invoke, as_json

from dspex.runtime import App
from dspex.settings import Settings
from dspex.store.optimizations import TrialRecord
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


# -- trials at once -----------------------------------------------------------------------------------------


def test_optimize_with_parallel_trials(dspex: Invoke, project: Path) -> None:
    args = ("optimize", "qa", "--dataset", "qa-set", "--space", str(project), "--budget", "4", "--seed", "5")
    data = as_json(dspex(*args, "--parallel", "2", "--json"))
    numbers = [t["number"] for t in data["trials"]]
    assert numbers == list(range(len(numbers)))  # contiguous from 0, none twice
    assert sum(t["state"] in ("complete", "pruned") for t in data["trials"]) == 4
    assert data["version_id"]
    for bad in ("0", "65"):
        assert "--parallel" in dspex(*args, "--parallel", bad, code=2).stderr
    err = dspex(
        "optimize", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap", "--parallel", "2", code=2
    ).stderr
    assert "--parallel belongs to the variable search" in err


def test_submit_a_parallel_optimization_job_and_run_it(dspex: Invoke, project: Path) -> None:
    submit = ("jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--space", str(project))
    queued = as_json(dspex(*submit, "--budget", "4", "--parallel", "2", "--drivers", "2", "--json"))
    assert (queued["payload"]["parallel"], queued["payload"]["drivers"]) == (2, 2)
    assert "--parallel" in dspex(*submit, "--budget", "4", "--parallel", "0", code=2).stderr
    assert "--drivers" in dspex(*submit, "--budget", "4", "--drivers", "17", code=2).stderr
    jobs = as_json(dspex("jobs", "list", "--json"))
    assert len(jobs) == 2  # the owner and one joining job
    assert "succeeded" in dspex("worker", "--until-idle", "--poll", "0.05").stdout
    job = as_json(dspex("jobs", "show", queued["id"], "--json"))
    assert job["status"] == "succeeded"
    assert (job["result"]["finished"], job["result"]["parallel"]) == (4, 2)
    detail = as_json(dspex("optimizations", "show", queued["payload"]["optimization_id"], "--json"))
    numbers = [t["number"] for t in detail["trials"]]
    assert numbers == list(range(len(numbers)))


# -- several drivers of one run ------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], thread: threading.Thread, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert thread.is_alive(), f"the owner ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _drivers(trials: list[TrialRecord]) -> set[str]:
    return {t.driver for t in trials if t.driver}


@pytest.mark.sim_lm(latency=0.1)
def test_optimize_join_adds_a_driver_to_the_run_of_the_same_command(dspex: Invoke, project: Path) -> None:
    from dspex.cli.optimize import load_space_file

    space, bindings = load_space_file(project)
    outcome: list[Any] = []
    with App(Settings.load()) as app:
        # The owner: what `dspex optimize qa --dataset qa-set --space ... --budget 8 --shared` runs, in a thread.
        owner = threading.Thread(
            target=lambda: outcome.append(
                app.optimize("qa", dataset="qa-set", space=space, bindings=bindings, n_trials=8, shared=True)
            ),
            daemon=True,
        )
        owner.start()
        _wait_until(lambda: bool(app.optimizations.runs()), owner, "the run exists")
        args = ("optimize", "qa", "--dataset", "qa-set", "--space", str(project), "--budget", "8")
        joined = as_json(dspex(*args, "--join", "--json"))
        owner.join(60)
        assert not owner.is_alive()
        (result,) = outcome
        trials = app.optimizations.trials(result.id)
        run = app.optimizations.get(result.id)
        optimizing = [v for v in app.programs.versions("qa") if v.status == "optimizing"]
    assert [t["number"] for t in joined["trials"]] == list(range(len(joined["trials"])))
    assert sum(t["state"] in ("complete", "pruned") for t in joined["trials"]) == 8
    assert [t.number for t in trials] == list(range(len(trials)))  # contiguous, none twice
    assert sum(t.state in ("complete", "pruned") for t in trials) == 8
    assert len(_drivers(trials)) == 2  # the owner's and the joiner's trials
    assert (run.status, run.result_version_id) == ("succeeded", result.version_id)
    assert result.version_id is not None
    assert [v.id for v in optimizing] == [result.version_id]  # the owner saved it; the joiner saved nothing
    # Joining needs a running run of the same inputs.
    err = dspex(*args, "--join", code=2).stderr
    assert "is succeeded; there is nothing to join" in err
    err = dspex(*args[:-1], "9", "--join", code=2).stderr
    assert "was started with another budget; join it with the same inputs" in err
    err = dspex(*args, "--seed", "9", "--join", code=2).stderr  # another seed: another run, not started
    assert "no optimization" in err
    assert "to join; start it first" in err
    err = dspex("optimize", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap", "--join", code=2).stderr
    assert "--join belongs to the variable search" in err
    # A run started without --shared (nor --parallel N) has one driver: it cannot be joined.
    with App(Settings.load()) as app:
        alone = threading.Thread(
            target=lambda: app.optimize(
                "qa", dataset="qa-set", space=space, bindings=bindings, n_trials=2, seed=5
            ),
            daemon=True,
        )
        alone.start()
        _wait_until(lambda: len(app.optimizations.runs()) == 2, alone, "the second run exists")
        err = dspex(*args[:-1], "2", "--seed", "5", "--join", code=2).stderr
        alone.join(60)
        assert not alone.is_alive()
    assert "is driven by one process" in err
    assert "--shared" in err


@pytest.mark.sim_lm(latency=0.1)
def test_optimizations_join_adds_a_driver_to_a_running_job(dspex: Invoke, project: Path) -> None:
    from dspex.jobs.worker import Worker

    submit = ("jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--space", str(project))
    queued = as_json(dspex(*submit, "--budget", "8", "--parallel", "2", "--json"))  # parallel: shared
    run_id = queued["payload"]["optimization_id"]
    err = dspex("optimizations", "join", run_id, code=2).stderr
    assert f"the job of optimization {run_id!r} is queued; join it once a worker runs it" in err
    assert "no optimization job 'opt-nope'" in dspex("optimizations", "join", "opt-nope", code=2).stderr
    with App(Settings.load()) as app:
        worker = Worker(app, lease_s=10, poll_s=0.05)
        thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": True}, daemon=True)
        thread.start()
        _wait_until(lambda: bool(app.optimizations.runs()), thread, "the worker started the run")
        joined = as_json(dspex("optimizations", "join", run_id, "--parallel", "2", "--json"))
        thread.join(60)
        assert not thread.is_alive()
        job = app.jobs.get(queued["id"])
        trials = app.optimizations.trials(run_id)
    assert job is not None
    assert job.status == "succeeded", job.error
    assert job.result is not None
    assert job.result["finished"] == 8
    assert [t.number for t in trials] == list(range(len(trials)))  # contiguous, none twice
    assert sum(t.state in ("complete", "pruned") for t in trials) == 8
    assert len(_drivers(trials)) == 2  # the job's worker and the joiner
    assert sum(t["state"] in ("complete", "pruned") for t in joined["trials"]) == 8
    assert joined["version_id"] in (None, job.result["version_id"])  # only the job's worker saves one
    # Finished now; and a DSPy optimizer's run has one driver.
    err = dspex("optimizations", "join", run_id, code=2).stderr
    assert f"the job of optimization {run_id!r} is succeeded" in err
    dspy_job = as_json(
        dspex(
            "jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--optimizer", "bootstrap", "--json"
        )
    )
    err = dspex("optimizations", "join", dspy_job["payload"]["optimization_id"], code=2).stderr
    assert "only a variable search can be joined" in err


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


# -- MIPROv2's candidates on a worker pool ---------------------------------------------------------------


MIPRO = ("-o", "num_candidates=2", "-o", "num_trials=4", "-o", "minibatch_size=4", "-o", "num_threads=2",
         "-o", "max_bootstrapped_demos=1", "-o", "max_labeled_demos=1", "--seed", "3")  # fmt: skip


def test_miprov2_on_a_pool_ends_with_the_program_and_scores_of_the_run_in_process(
    dspex: Invoke, project: Path, settings_sim: SimServer
) -> None:
    Path("dspex.toml").write_text("[pools.general]\nsize = 2\n", encoding="utf-8")
    args = ("optimize", "qa", "--dataset", "qa-set", "--optimizer", "miprov2", *MIPRO)
    in_process = as_json(dspex(*args, "--json"))
    # The same run again on the pool: bootstrapping and proposals come from the store (they ran here), the
    # candidates' evaluations are the pool's own (another cache key), made again by its workers.
    before = settings_sim.stats().total_requests
    pooled = as_json(dspex(*args, "--pool", "general", "--json"))
    assert pooled["lm_calls"] == settings_sim.stats().total_requests - before > 0
    assert pooled["lm_cached"] > 0  # the proposer's calls, served from the store
    same = ("score", "version_id", "candidates", "evaluations")
    assert {k: pooled[k] for k in same} == {k: in_process[k] for k in same}
    assert 0 < pooled["score"] < 1
    # Again on the pool: every evaluation from the store, no LM call.
    assert as_json(dspex(*args, "--pool", "general", "--json"))["lm_calls"] == 0

    err = dspex(*args, "--pool", "genral", code=2).stderr
    assert "unknown pool 'genral'; did you mean 'general'? valid: general" in err
    err = dspex(
        "optimize", "qa", "--dataset", "qa-set", "--optimizer", "simbaa", "--pool", "general", code=2
    ).stderr
    assert "unknown optimizer 'simbaa'; did you mean 'simba'?" in err


def test_a_miprov2_job_evaluates_on_the_worker_s_pool(dspex: Invoke, project: Path) -> None:
    Path("dspex.toml").write_text("[pools.general]\nsize = 2\n", encoding="utf-8")
    args = ("--dataset", "qa-set", "--optimizer", "miprov2", *MIPRO)
    foreground = as_json(dspex("optimize", "qa", *args, "--json"))
    queued = as_json(dspex("jobs", "submit-optimization", "qa", *args, "--json"))
    assert "pool" not in queued["payload"]
    assert "succeeded" in dspex("worker", "--until-idle", "--poll", "0.05", "--pool", "general").stdout
    job = as_json(dspex("jobs", "show", queued["id"], "--json"))
    assert job["result"]["placement"] == {
        "target": "pool",
        "pool": "general",
        "reason": "the worker's own pool (dspex worker --pool)",
    }
    assert job["result"]["version_id"] == foreground["version_id"]
    assert job["result"]["score"] == foreground["score"]
    assert job["result"]["lm_calls"] > 0  # the pool's evaluations are its own (not the foreground's cache)
    # BootstrapFewShot on that worker: its traced calls go to the pool too.
    queued = as_json(dspex("jobs", "submit-optimization", "qa", "--dataset", "qa-set", "--optimizer",
                           "bootstrap", "-o", "max_bootstrapped_demos=1", "--json"))  # fmt: skip
    assert "succeeded" in dspex("worker", "--until-idle", "--poll", "0.05", "--pool", "general").stdout
    placement = as_json(dspex("jobs", "show", queued["id"], "--json"))["result"]["placement"]
    assert placement["target"] == "pool"


def test_gepa_on_a_pool_ends_with_the_program_and_score_of_the_run_in_process(
    dspex: Invoke, project: Path, settings_sim: SimServer
) -> None:
    Path("dspex.toml").write_text("[pools.general]\nsize = 2\n", encoding="utf-8")
    args = ("optimize", "qa", "--dataset", "qa-set", "--optimizer", "gepa", "-o", "max_metric_calls=40",
            "-o", "reflection_minibatch_size=2", "-o", "num_threads=2", "--seed", "3")  # fmt: skip
    in_process = as_json(dspex(*args, "--json"))
    # Again on the pool: the minibatches (traces) and reflections come from the store, the valset
    # evaluations (14 dev examples, the seed's at least) are the workers' own.
    before = settings_sim.stats().total_requests
    pooled = as_json(dspex(*args, "--pool", "general", "--json"))
    assert pooled["lm_calls"] == settings_sim.stats().total_requests - before
    assert pooled["lm_calls"] >= 14
    assert pooled["lm_calls"] % 14 == 0  # whole valset evaluations only
    same = ("score", "version_id", "candidates", "evaluations")
    assert {k: pooled[k] for k in same} == {k: in_process[k] for k in same}


def test_the_variable_search_takes_a_pool_by_name(dspex: Invoke, project: Path) -> None:
    Path("dspex.toml").write_text("[pools.general]\nsize = 1\n", encoding="utf-8")
    args = ("optimize", "qa", "--dataset", "qa-set", "--space", str(project), "--budget", "2", "--seed", "8")
    err = dspex(*args, "--pool", "genral", code=2).stderr
    assert "unknown pool 'genral'; did you mean 'general'? valid: general" in err
    data = as_json(dspex(*args, "--pool", "general", "--json"))
    assert sum(t["state"] in ("complete", "pruned") for t in data["trials"]) == 2
    assert data["lm_calls"] > 0
