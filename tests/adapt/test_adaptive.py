"""Adaptive programs through the App on SQLite and PostgreSQL: runs record their arm and why, state
survives a restart, delayed feedback reaches the right arm, guardrails retire a failing arm, and bad
input is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from adapt_support import QA_SPEC, document, is_four, lms

from dspex.adapt import PolicyConfig, Reward
from dspex.errors import ConfigurationError, LMError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store.adapt import UnknownAdaptive

RIGHT = {"model": "scripted/right", "temperature": 0.0}
WRONG = {"model": "scripted/wrong", "temperature": 0.0}
BROKEN = {"model": "scripted/broken", "temperature": 0.0}


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    with App(Settings(database_url=database_url)) as dspex_app:
        dspex_app.programs.register("qa", QA_SPEC)
        yield dspex_app


def test_runs_record_the_arm_that_served_them_and_why(app: App) -> None:
    adaptive = app.adapt(
        "qa-live", "qa", space=document(), arms=[RIGHT, WRONG], metric=is_four, lms=lms(),
        policy=PolicyConfig(seed=1),
    )  # fmt: skip
    results = [adaptive.serve({"question": "2 + 2?"}) for _ in range(40)]
    app.flush()
    for result, decision in results:
        record = app.executions.get(result.execution_id)
        assert record is not None
        assert record.program == "qa"
        assert record.adaptation is not None
        assert record.adaptation["arm"] == decision.arm
        assert record.adaptation["reason"] == decision.reason in ("exploit", "explore", "guardrail")
        assert record.adaptation["adaptive"] == "qa-live"
        assert record.variables == adaptive.arms[decision.arm].configuration
    status = adaptive.status()
    assert status["runs"] == 40
    by_model = {arm["configuration"]["model"]: arm for arm in status["arms"]}
    assert by_model["scripted/right"]["best"] is True
    assert by_model["scripted/right"]["posterior_mean"] > by_model["scripted/wrong"]["posterior_mean"]
    assert sum(arm["share"] for arm in status["arms"]) == pytest.approx(1.0)
    assert status["reward_over_time"]
    assert status["reward_over_time"][-1]["mean_reward"] > 0.5


def test_state_survives_a_restart(database_url: str) -> None:
    with App(Settings(database_url=database_url)) as first:
        first.programs.register("qa", QA_SPEC)
        adaptive = first.adapt(
            "qa-live", "qa", space=document(), arms=[RIGHT, WRONG], metric=is_four, lms=lms(),
            reward=Reward(quality=1.0), policy=PolicyConfig(seed=2),
        )  # fmt: skip
        for _ in range(30):
            adaptive.run({"question": "2 + 2?"})
        before = {arm: adaptive.state.view(arm) for arm in adaptive.arms}
    with App(Settings(database_url=database_url)) as second:
        reopened = second.adapt.get("qa-live", metric=is_four, lms=lms())
        after = {arm: reopened.state.view(arm) for arm in reopened.arms}
        assert {a: v.served for a, v in after.items()} == {a: v.served for a, v in before.items()}
        for arm, view in after.items():
            assert view.mean == pytest.approx(before[arm].mean)
        # It goes on learning from where it was, with the arms it had.
        reopened.run({"question": "2 + 2?"})
        assert sum(v.served for v in (reopened.state.view(a) for a in reopened.arms)) == 31
        assert [r.name for r in second.adapt.list()] == ["qa-live"]


def test_delayed_feedback_is_applied_to_the_arm_that_served_the_run(app: App) -> None:
    adaptive = app.adapt(
        "qa-fb", "qa", space=document(), arms=[RIGHT, WRONG], lms=lms(),
        reward=Reward(quality=1.0), policy=PolicyConfig(seed=3, explore_ceiling=1.0),
    )  # fmt: skip
    served = [adaptive.serve({"question": "2 + 2?"}) for _ in range(30)]
    arms = {d.arm for _, d in served}
    assert len(arms) == 2  # both arms were tried
    right = next(a for a, r in adaptive.arms.items() if r.configuration["model"] == "scripted/right")
    # No reward yet: the quality comes later, as feedback.
    assert all(adaptive.state.view(a).rewarded == 0 for a in adaptive.arms)
    for result, decision in served:
        app.feedback(result.execution_id, score=1.0 if decision.arm == right else 0.0)
    app.feedback(served[0][0].execution_id, score=0.5)  # a second rating of a run: the first counts
    adaptive.sync()
    for arm in adaptive.arms:
        view = adaptive.state.view(arm)
        assert view.rewarded == sum(1 for _, d in served if d.arm == arm)
        assert view.mean_reward_all == (1.0 if arm == right else 0.0)
    # Another process ingesting the same feedback adds nothing: one reward per run.
    with App(Settings(database_url=app.settings.database_url), record=False) as other:
        twin = other.adapt.get("qa-fb", lms=lms())
        twin.sync()
        assert sum(twin.state.view(a).rewarded for a in twin.arms) == 30
    rewards = adaptive.repository.events("qa-fb", kinds=("reward",))
    assert len(rewards) == 30
    by_execution = {r.execution_id: d.arm for r, d in served}
    assert all(event.arm == by_execution[event.execution_id] for event in rewards)


def test_a_guardrail_retires_an_arm_that_fails(app: App) -> None:
    # Both arms earn nothing, so the bandit alone would keep splitting traffic between them: the
    # guardrail, not the posterior, must take the failing one out.
    adaptive = app.adapt(
        "qa-guard", "qa", space=document(), arms=[WRONG, BROKEN], metric=is_four, lms=lms(),
        policy=PolicyConfig(seed=4, guardrail_min_runs=4, explore_ceiling=1.0, max_error_rate=0.5),
    )  # fmt: skip
    broken = next(a for a, r in adaptive.arms.items() if r.configuration["model"] == "scripted/broken")
    failed: list[str] = []
    for _ in range(60):
        try:
            adaptive.run({"question": "2 + 2?"})
        except LMError as exc:
            failed.append(str(exc.execution_id))
        if adaptive.arms[broken].status == "retired":
            break
    assert adaptive.arms[broken].status == "retired"
    assert "error rate 100%" in (adaptive.arms[broken].retired_reason or "")
    assert len(failed) >= 4
    # Retired: never served again, and the last active arm is never retired.
    decisions = [adaptive.serve({"question": "2 + 2?"})[1] for _ in range(10)]
    assert all(d.arm != broken and d.reason == "guardrail" for d in decisions)
    assert adaptive.retire(decisions[0].arm) is False
    assert [e.arm for e in adaptive.repository.events("qa-guard", kinds=("retire",))] == [broken]
    app.flush()
    for execution_id in failed:  # the failed runs' records name the arm too
        record = app.executions.get(execution_id)
        assert record is not None
        assert record.status == "failed"
        assert record.adaptation is not None
        assert record.adaptation["arm"] == broken


def test_freeze_stop_and_new_arms(app: App) -> None:
    adaptive = app.adapt("qa-ops", "qa", space=document(), arms=[RIGHT], metric=is_four, lms=lms())
    added = app.adapt("qa-ops", arms=[WRONG, RIGHT]).arms
    assert len(added) == 2
    wrong = next(a for a, r in adaptive.arms.items() if r.configuration["model"] == "scripted/wrong")
    assert adaptive.freeze(wrong[:6]) == wrong
    assert {adaptive.serve({"question": "q"})[1].reason for _ in range(5)} == {"frozen"}
    adaptive.unfreeze()
    adaptive.stop()
    with pytest.raises(ConfigurationError, match="is stopped"):
        adaptive.run({"question": "q"})
    adaptive.resume()
    adaptive.run({"question": "q"})


def test_bad_input_is_refused_by_name(app: App) -> None:
    with pytest.raises(ConfigurationError, match="unknown variable 'modle'; did you mean 'model'"):
        app.adapt("qa-bad", "qa", space=document(), arms=[{"modle": "scripted/right"}], lms=lms())
    with pytest.raises(ConfigurationError, match="needs arms"):
        app.adapt("qa-bad", "qa", space=document(), lms=lms())
    with pytest.raises(ConfigurationError, match="variable 'model': 'openai/gpt-9' is not one of"):
        app.adapt("qa-bad", "qa", space=document(), arms=[{"model": "openai/gpt-9"}], lms=lms())
    with pytest.raises(UnknownAdaptive, match="no adaptive program 'qa-bad'"):
        app.adapt.get("qa-bad")  # nothing half-made was stored
    with pytest.raises(ConfigurationError, match="unknown reward metric 'nope'"):
        app.adapt("qa-m", "qa", space=document(), arms=[RIGHT], metric="nope", lms=lms())
    app.adapt("qa-ok", "qa", space=document(), arms=[RIGHT], lms=lms())
    with pytest.raises(ConfigurationError, match="are fixed"):
        app.adapt("qa-ok", space=document())
    with pytest.raises(ConfigurationError, match="an adaptive program's name"):
        app.adapt("no spaces", "qa", space=document(), arms=[RIGHT])


def test_two_processes_share_one_policy(app: App) -> None:
    adaptive = app.adapt(
        "qa-shared", "qa", space=document(), arms=[RIGHT, WRONG], metric=is_four, lms=lms(),
        policy=PolicyConfig(seed=5),
    )  # fmt: skip
    worker = Path(__file__).with_name("adapt_worker.py")
    process = subprocess.Popen(
        [sys.executable, str(worker), app.settings.resolved_database_url, "qa-shared", "40"],
        stdout=subprocess.PIPE,
        text=True,
    )
    mine: dict[str, int] = {}
    for _ in range(40):  # at the same time as the other process
        _, decision = adaptive.serve({"question": "2 + 2?"})
        mine[decision.arm] = mine.get(decision.arm, 0) + 1
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    theirs = json.loads(out.strip().splitlines()[-1])
    adaptive.sync()
    # Nobody's observations were lost: each process's state counts both processes' runs.
    expected = {arm: mine.get(arm, 0) + theirs["served"].get(arm, 0) for arm in adaptive.arms}
    assert sum(expected.values()) == 80
    assert {arm: adaptive.state.view(arm).served for arm in adaptive.arms} == expected
    counts = adaptive.repository.serve_counts("qa-shared")
    assert {arm: sum(by.values()) for arm, by in counts.items()} == expected
    # The other process saw at least its own runs and whatever of ours was in the log by then.
    assert sum(theirs["seen"].values()) >= 40
    right = next(a for a, r in adaptive.arms.items() if r.configuration["model"] == "scripted/right")
    assert adaptive.state.best(list(adaptive.arms)) == right


def test_every_arm_degraded_queues_a_reoptimization_whose_best_becomes_an_arm(app: App) -> None:
    from dspex.adapt import Reoptimize

    adaptive = app.adapt(
        "qa-reopt", "qa", space=document(), arms=[WRONG, {**WRONG, "temperature": 0.5}], metric=is_four,
        lms=lms(), reoptimize=Reoptimize(below=0.5, min_rewards=5, min_score=0.0, n_trials=2, examples=10, add=1),
    )  # fmt: skip
    for _ in range(16):
        adaptive.run({"question": "2 + 2?"})
    app.flush()
    adaptive.sync()
    submitted = adaptive.repository.events("qa-reopt", kinds=("reoptimize",))
    job_ids = [e.detail["job_id"] for e in submitted if e.detail and "job_id" in e.detail]
    assert len(job_ids) == 1
    job = app.jobs.get(job_ids[0])
    assert job is not None
    assert (job.kind, job.status, job.payload["program"]) == ("optimize", "queued", "qa")
    assert job.payload["space"] == document()
    assert job.payload["dataset"].startswith("adapt-qa-reopt@")
    examples = app.datasets.examples(app.datasets.resolve("adapt-qa-reopt"))
    assert examples
    assert {e.toDict()["answer"] for e in examples} == {"5"}  # recent traffic, outputs as labels
    adaptive.sync()  # still degraded, but a job is pending: no second one
    assert len(adaptive.repository.events("qa-reopt", kinds=("reoptimize",))) == len(submitted)
    # A worker finishes the job: its best configuration becomes an arm at the next catch-up.
    claimed = app.jobs.claim("w-1", kinds=["optimize"])
    assert claimed is not None
    assert app.jobs.complete(claimed.id, "w-1", result={"best": {"configuration": RIGHT}, "pareto": []})
    adaptive.sync()
    added = [a for a in adaptive.arms.values() if a.source == "reoptimization"]
    assert [a.configuration["model"] for a in added] == ["scripted/right"]
    adopted = adaptive.repository.events("qa-reopt", kinds=("reoptimized",))
    assert adopted[-1].detail is not None
    assert adopted[-1].detail["added"] == [added[0].arm]


def test_bad_inputs_are_not_held_against_an_arm(app: App) -> None:
    from dspex.errors import ValidationError

    adaptive = app.adapt("qa-in", "qa", space=document(), arms=[RIGHT, WRONG], metric=is_four, lms=lms())
    with pytest.raises(ValidationError):
        adaptive.run({"query": "2 + 2?"})
    assert all(adaptive.state.view(arm).served == 0 for arm in adaptive.arms)
