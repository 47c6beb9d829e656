"""DSPy's optimizers as durable jobs on the simulated LM: each one runs on a worker and saves a loadable
version; options are checked at submission; a MIPROv2 job whose worker is killed mid-run is resumed by
another worker and finishes with fewer LM calls than a fresh run, with the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import wait_for

from dspex import Settings
from dspex.errors import ConfigurationError
from dspex.jobs import Worker, WorkerEvent, submit_dspy_optimization
from dspex.runtime import App
from dspex.testing.server import SimServer

# Small budgets: a few seconds each on the simulated LM.
SMALL: dict[str, dict[str, Any]] = {
    "bootstrap": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    "bootstrap_rs": {"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "num_threads": 2},
    "ensemble": {"num_candidate_programs": 2, "size": 2, "num_threads": 2},
    "copro": {"breadth": 2, "depth": 1, "num_threads": 2},
    "miprov2": {
        "num_candidates": 2,
        "num_trials": 3,
        "minibatch_size": 4,
        "max_bootstrapped_demos": 1,
        "max_labeled_demos": 1,
        "num_threads": 2,
    },
    "simba": {"bsize": 4, "num_candidates": 2, "max_steps": 1, "num_threads": 2},
    "gepa": {"max_metric_calls": 30, "reflection_minibatch_size": 2, "num_threads": 2},
}


def _dataset(app: App, sim: SimServer, train: int = 8, dev: int = 8) -> None:
    rows = [
        {**row, "part": "train" if i < train else "dev"}
        for i, row in enumerate(sim.task.dicts()[: train + dev])
    ]
    app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")


@pytest.fixture
def app(settings_sim: SimServer, tmp_path: Path) -> Iterator[App]:
    database_url = f"sqlite:///{tmp_path / 'dspex.db'}"
    with App(Settings.load(home=tmp_path / "home", database_url=database_url)) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        _dataset(app, settings_sim)
        yield app


@pytest.mark.parametrize("optimizer", sorted(SMALL))
def test_each_dspy_optimizer_runs_as_a_job_and_saves_a_loadable_version(
    app: App, settings_sim: SimServer, optimizer: str
) -> None:
    job = submit_dspy_optimization(
        app, program="qa", dataset="qa-set", optimizer=optimizer, options=SMALL[optimizer]
    )
    assert (job.kind, job.payload["optimizer"]) == ("optimize", optimizer)
    before = settings_sim.stats().total_requests
    events: list[WorkerEvent] = []
    assert Worker(app, lease_s=5.0, poll_s=0.05, on_event=events.append).run(stop_when_idle=True) == 1
    done = app.jobs.get(job.id)
    assert done is not None, events
    assert done.status == "succeeded", done.error
    result = done.result
    assert result is not None
    # Every LM call the run made (the optimizer's own proposals and reflections included) is counted.
    assert result["lm_calls"] == settings_sim.stats().total_requests - before > 0
    assert sum(u["calls"] for u in result["usage"].values()) == result["lm_calls"]
    assert 0.0 <= result["score"] <= 1.0
    assert result["optimization_id"] == job.payload["optimization_id"]
    version = app.programs.version(result["version_id"])
    if result["unchanged"]:  # the optimizer kept the program as it was: the same state, the same version
        assert version.id == job.payload["version_id"]
    else:
        assert (version.status, version.parent_id) == ("optimizing", job.payload["version_id"])
    program = app.programs.build(version)
    outputs = app.run("qa", {"question": settings_sim.task.dicts()[0]["question"]}, version_id=version.id)
    assert isinstance(outputs.outputs["answer"], str)
    assert type(program).__name__ == "Predict"
    run = app.optimizations.get(result["optimization_id"])
    assert (run.status, run.result_version_id, run.space["optimizer"]) == ("succeeded", version.id, optimizer)
    assert done.progress is not None
    assert done.progress["optimizer"] == optimizer
    if optimizer == "ensemble":
        assert len(result["members"]) == 2
        assert result["members"][0] == version.id
    if optimizer in ("bootstrap", "bootstrap_rs"):
        assert any(predictor.demos for _, predictor in program.named_predictors())  # loaded from the version


def test_options_are_checked_at_submission(app: App) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"unknown miprov2 option 'num_trails'; did you mean 'num_trials'\? valid: .*minibatch_size",
    ):
        submit_dspy_optimization(
            app, program="qa", dataset="qa-set", optimizer="miprov2", options={"num_trails": 3}
        )
    with pytest.raises(
        ConfigurationError, match=r"option 'breadth' must be an integer in \[2, 10000\], got 'wide'"
    ):
        submit_dspy_optimization(
            app, program="qa", dataset="qa-set", optimizer="copro", options={"breadth": "wide"}
        )
    with pytest.raises(ConfigurationError, match="unknown optimizer 'mipro'; did you mean 'miprov2'"):
        submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="mipro")
    with pytest.raises(ConfigurationError, match="needs both num_candidates and num_trials"):
        submit_dspy_optimization(
            app, program="qa", dataset="qa-set", optimizer="miprov2", options={"num_trials": 3}
        )
    with pytest.raises(ConfigurationError, match="gepa takes one budget"):
        submit_dspy_optimization(
            app,
            program="qa",
            dataset="qa-set",
            optimizer="gepa",
            options={"auto": "light", "max_metric_calls": 9},
        )
    # What would name code, files, hosts or keys is no option at all.
    for name in ("prompt_model", "log_dir", "teacher_settings", "wandb_api_key", "instruction_proposer"):
        optimizer = "gepa" if name in ("log_dir", "wandb_api_key", "instruction_proposer") else "miprov2"
        with pytest.raises(ConfigurationError, match=f"unknown {optimizer} option '{name}'"):
            submit_dspy_optimization(
                app, program="qa", dataset="qa-set", optimizer=optimizer, options={name: "x"}
            )
    with pytest.raises(
        ConfigurationError, match=r"prompt_model: unknown model 'gpt-9'; valid: .*configured models only"
    ):
        submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="copro", prompt_model="gpt-9")
    with pytest.raises(ConfigurationError, match="unknown metric"):
        submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="copro", metric="accuracy")
    assert app.jobs.list() == []


# -- a hard cap on LM calls ----------------------------------------------------------------------------------


@pytest.fixture
def own_sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    """A simulated server of the test's own: what it counts is this test's requests only (a DSPy
    executor of an earlier test may still be finishing a straggler on the session's server)."""
    with SimServer(latency_scale=0.0) as sim:
        monkeypatch.setenv("DSPEX_LM", "openai/sim-medium")
        monkeypatch.setenv("DSPEX_API_BASE", sim.url)
        monkeypatch.setenv("DSPEX_API_KEY", "sim")
        monkeypatch.setenv("DSPEX_LM_CACHE", "false")
        monkeypatch.setenv("DSPEX_NUM_RETRIES", "0")
        yield sim


@pytest.fixture
def capped_app(own_sim: SimServer, tmp_path: Path) -> Iterator[App]:
    database_url = f"sqlite:///{tmp_path / 'dspex.db'}"
    with App(Settings.load(home=tmp_path / "home", database_url=database_url)) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        _dataset(app, own_sim)
        yield app


# Options whose own budgets would spend well over the cap below.
UNCAPPED: dict[str, dict[str, Any]] = {
    "miprov2": {**SMALL["miprov2"], "num_candidates": 4, "num_trials": 12},
    "gepa": {"max_metric_calls": 400, "reflection_minibatch_size": 2, "num_threads": 2},
    "bootstrap_rs": {"num_candidate_programs": 8, "max_bootstrapped_demos": 2, "num_threads": 2},
}


@pytest.mark.parametrize("optimizer", sorted(UNCAPPED))
def test_max_lm_calls_stops_the_optimizer_and_keeps_the_best_candidate_so_far(
    capped_app: App, own_sim: SimServer, optimizer: str
) -> None:
    app = capped_app
    cap = 40
    job = submit_dspy_optimization(
        app,
        program="qa",
        dataset="qa-set",
        optimizer=optimizer,
        options=UNCAPPED[optimizer],
        max_lm_calls=cap,
    )
    assert job.payload["max_lm_calls"] == cap
    before = own_sim.stats().total_requests
    assert Worker(app, lease_s=5.0, poll_s=0.05).run(stop_when_idle=True) == 1
    sent = own_sim.stats().total_requests - before
    done = app.jobs.get(job.id)
    assert done is not None
    assert done.status == "succeeded", done.error
    result = done.result
    assert result is not None
    # No call starts once the calls made and in flight reach the cap: the server saw at most the cap.
    assert result["lm_calls"] == sent <= cap
    assert result["stopped"].startswith(f"max_lm_calls={cap} reached")
    assert "best candidate so far" in result["stopped"]
    assert result["scored_on"] >= 1
    assert 0.0 <= result["score"] <= 1.0
    assert f"({sent} LM calls made)" in result["stopped"]
    version = app.programs.version(result["version_id"])
    if result["unchanged"]:  # the best so far is the program as it was: the version it started from
        assert version.id == job.payload["version_id"]
    else:
        assert (version.status, version.parent_id) == ("optimizing", job.payload["version_id"])
        assert f"stopped at max_lm_calls={cap}" in (version.note or "")
    assert app.run("qa", {"question": "What is 2 + 2?"}, version_id=version.id).outputs["answer"]
    run = app.optimizations.get(result["optimization_id"])
    assert run.status == "succeeded"
    assert run.budget["max_lm_calls"] == cap
    assert run.budget["lm_calls"] == sent
    assert run.best is not None
    assert run.best["stopped"] == result["stopped"]


def test_max_lm_calls_counts_what_an_interrupted_attempt_spent(capped_app: App, own_sim: SimServer) -> None:
    app = capped_app
    from dspex.optimize.search import OptimizationStopped

    cap, calls = 60, [0]

    def stop_after_20_program_calls() -> None:
        calls[0] += 1
        if calls[0] > 20:
            raise OptimizationStopped("worker released", cancelled=False)

    options = UNCAPPED["bootstrap_rs"]
    before = own_sim.stats().total_requests
    with pytest.raises(OptimizationStopped):
        app.optimize_with(
            "qa", "bootstrap_rs", dataset="qa-set", options=options, max_lm_calls=cap,
            optimization_id="capped", should_stop=stop_after_20_program_calls,
        )  # fmt: skip
    first = own_sim.stats().total_requests - before
    run = app.optimizations.get("capped")
    assert run.status == "running"
    assert run.budget["lm_calls"] == first > 0
    # The next attempt (a worker taking the job over) has only what is left of the cap.
    result = app.optimize_with(
        "qa", "bootstrap_rs", dataset="qa-set", options=options, max_lm_calls=cap, optimization_id="capped"
    )
    total = own_sim.stats().total_requests - before
    assert total <= cap
    assert result.stopped is not None
    assert f"({total} LM calls made)" in result.stopped
    assert app.optimizations.get("capped").budget["lm_calls"] == total


def test_max_lm_calls_below_what_the_first_candidate_needs_fails_the_job_saying_so(
    capped_app: App, own_sim: SimServer
) -> None:
    app = capped_app
    job = submit_dspy_optimization(
        app, program="qa", dataset="qa-set", optimizer="miprov2", options=UNCAPPED["miprov2"], max_lm_calls=3
    )
    before = own_sim.stats().total_requests
    Worker(app, lease_s=5.0, poll_s=0.05).run(stop_when_idle=True)
    assert own_sim.stats().total_requests - before <= 3
    done = app.jobs.get(job.id)
    assert done is not None
    assert done.status == "failed"
    assert done.error is not None
    assert "max_lm_calls=3 reached" in str(done.error)
    assert "raise max_lm_calls" in str(done.error)
    run = app.optimizations.get(job.payload["optimization_id"])
    assert run.status == "failed"
    assert "raise max_lm_calls" in (run.error or "")
    with pytest.raises(ConfigurationError, match="max_lm_calls must be an integer >= 1, got 0"):
        submit_dspy_optimization(app, program="qa", dataset="qa-set", optimizer="copro", max_lm_calls=0)


# -- a killed MIPROv2 worker -------------------------------------------------------------------------------

MIPRO = {
    "num_candidates": 3,
    "num_trials": 6,
    "minibatch_size": 4,
    "minibatch_full_eval_steps": 3,
    "max_bootstrapped_demos": 2,
    "max_labeled_demos": 1,
    "num_threads": 1,
}


def _env(home: Path, database_url: str, sim: SimServer) -> dict[str, str]:
    return {
        **os.environ,
        "DSPEX_HOME": str(home),
        "DSPEX_DATABASE_URL": database_url,
        "DSPEX_LM": "openai/sim-medium",
        "DSPEX_API_BASE": sim.url,
        "DSPEX_API_KEY": "sim",
        "DSPEX_LM_CACHE": "false",
        "DSPEX_NUM_RETRIES": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def _setup(home: Path, database_url: str, sim: SimServer) -> App:
    app = App(Settings.load(home=home, database_url=database_url))
    app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
    _dataset(app, sim, train=10, dev=10)
    return app


def test_killed_miprov2_job_resumes_with_fewer_lm_calls_than_a_fresh_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About 20 ms per LM call, one thread: the run lasts a few seconds, so the kill lands mid-run.
    with SimServer(latency=0.02, latency_scale=0.0, task_size=40) as sim:
        for key, value in _env(tmp_path / "unused", "sqlite://", sim).items():
            if key.startswith(("DSPEX_LM", "DSPEX_API", "DSPEX_NUM")):
                monkeypatch.setenv(key, value)
        # A fresh run, on a database of its own (an empty evaluation cache).
        fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
        with _setup(tmp_path / "fresh", fresh_url, sim) as fresh_app:
            fresh_job = submit_dspy_optimization(
                fresh_app, program="qa", dataset="qa-set", optimizer="miprov2", options=MIPRO
            )
            Worker(fresh_app, lease_s=5.0, poll_s=0.05).run(stop_when_idle=True)
            fresh = fresh_app.jobs.get(fresh_job.id)
            assert fresh is not None
            assert fresh.result is not None, fresh.error
            program_calls = fresh_app.evaluation_cache.count("dspy:")
        assert program_calls > 20

        database_url = f"sqlite:///{tmp_path / 'dspex.db'}"
        home = tmp_path / "home"
        with _setup(home, database_url, sim) as app:
            job = submit_dspy_optimization(
                app, program="qa", dataset="qa-set", optimizer="miprov2", options=MIPRO
            )
            rows = app.evaluation_cache
            before_kill = sim.stats().total_requests
            log = tmp_path / "worker.log"
            with log.open("ab") as out:
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dspex.cli",
                        "worker",
                        "--lease",
                        "2",
                        "--poll",
                        "0.1",
                        "--max-jobs",
                        "1",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_env(home, database_url, sim),
                )
            try:

                def half_done_or_exited() -> bool:
                    return worker.poll() is not None or rows.count("dspy:") >= program_calls // 2

                wait_for(half_done_or_exited, timeout=120, what="half the program calls", every=0.02)
                assert worker.poll() is None, log.read_text()[-3000:]
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=10)
            finally:
                if worker.poll() is None:
                    worker.kill()
                worker.wait(timeout=10)
            killed_at = rows.count("dspy:")
            killed_calls = sim.stats().total_requests - before_kill
            assert program_calls // 2 <= killed_at < program_calls
            taken = app.jobs.get(job.id)
            assert taken is not None
            assert (taken.status, taken.attempts) == ("running", 1)
            assert app.optimizations.get(job.payload["optimization_id"]).status == "running"

            # Another worker takes the job over once the dead one's lease lapses, and finishes it.
            assert Worker(app, lease_s=5.0, poll_s=0.05).run(max_jobs=1) == 1
            done = app.jobs.get(job.id)
            assert done is not None
            assert done.result is not None, done.error
            assert (done.status, done.attempts) == ("succeeded", 2)
            resumed, first = done.result, fresh.result
            assert resumed["cached"] >= killed_at // 2
            assert resumed["lm_calls"] < first["lm_calls"]
            print(f"MIPRO calls: fresh {first['lm_calls']}, killed attempt {killed_calls}, resumed "
                  f"{resumed['lm_calls']} ({resumed['cached']} program calls and {resumed['lm_cached']} "
                  "proposer calls from the store)")  # fmt: skip
            # The proposer's calls (dataset summary, program description, instruction proposals) are
            # kept too: together the two attempts pay what the fresh run paid, plus at most the one
            # call in flight at the kill (one thread).
            assert resumed["lm_cached"] > 0
            assert killed_calls + resumed["lm_calls"] <= first["lm_calls"] + 1
            # The replay walks the same candidates: the same result as the run that was never killed.
            assert resumed["score"] == first["score"]
            assert resumed["candidates"] == first["candidates"]
            assert rows.count("dspy:") == program_calls
            assert app.optimizations.get(resumed["optimization_id"]).status == "succeeded"
            assert app.programs.build(app.programs.version(resumed["version_id"])) is not None


def test_a_capped_job_killed_mid_run_stays_within_its_cap_across_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The MIPROv2 job above makes 51 LM calls; capped at 40, killed after about 20 of them.
    cap = 40
    with SimServer(latency=0.02, latency_scale=0.0, task_size=40) as sim:
        for key, value in _env(tmp_path / "unused", "sqlite://", sim).items():
            if key.startswith(("DSPEX_LM", "DSPEX_API", "DSPEX_NUM")):
                monkeypatch.setenv(key, value)
        database_url = f"sqlite:///{tmp_path / 'dspex.db'}"
        home = tmp_path / "home"
        with _setup(home, database_url, sim) as app:
            job = submit_dspy_optimization(
                app, program="qa", dataset="qa-set", optimizer="miprov2", options=MIPRO, max_lm_calls=cap
            )
            optimization_id = job.payload["optimization_id"]
            log = tmp_path / "worker.log"
            before = sim.stats().total_requests
            with log.open("ab") as out:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "dspex.cli", "worker", "--lease", "2", "--poll", "0.1",
                     "--max-jobs", "1"],
                    stdout=out, stderr=subprocess.STDOUT, env=_env(home, database_url, sim),
                )  # fmt: skip
            try:

                def counted_20_or_exited() -> bool:
                    if worker.poll() is not None:
                        return True
                    try:
                        budget = app.optimizations.get(optimization_id).budget
                    except ConfigurationError:  # the worker has not created the run yet
                        return False
                    return int(budget.get("lm_calls") or 0) >= 20

                wait_for(counted_20_or_exited, timeout=120, what="20 counted LM calls", every=0.02)
                assert worker.poll() is None, log.read_text()[-3000:]
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=10)
            finally:
                if worker.poll() is None:
                    worker.kill()
                worker.wait(timeout=10)
            killed = sim.stats().total_requests - before
            counted = app.optimizations.get(optimization_id).budget["lm_calls"]
            assert counted <= killed <= counted + 1  # one thread: at most one call in flight uncounted

            assert Worker(app, lease_s=5.0, poll_s=0.05).run(max_jobs=1) == 1
            done = app.jobs.get(job.id)
            assert done is not None
            assert done.result is not None, done.error
            assert (done.status, done.attempts) == ("succeeded", 2)
            total = sim.stats().total_requests - before
            assert total <= cap + 1
            assert done.result["stopped"].startswith(f"max_lm_calls={cap} reached")
            assert app.optimizations.get(optimization_id).budget["lm_calls"] <= cap
