"""Evaluations on a pool: shards of examples on the workers, scored here, as the inline engine scores."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import dspy
import pytest

from dspex.optimize import Evaluator
from dspex.optimize.metrics import exact_match
from dspex.optimize.result import EarlyStop
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture
def app(tmp_path: object) -> Iterator[App]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/e.db",
        pools={"general": {"size": 2, "initializer": "pool_programs:scripted"}},
    )
    with App(settings) as app:
        app.programs.register("qa", "pool_programs:build_qa")
        app.programs.register("sleepy", "pool_programs:build_sleepy")
        yield app


def _devset(n: int) -> list[dspy.Example]:
    # Even examples expect what the scripted LM answers, odd ones do not: the score is 0.5.
    return [
        dspy.Example(question=f"q{i}", answer=f"answer to q{i}" if i % 2 == 0 else "wrong").with_inputs(
            "question"
        )
        for i in range(n)
    ]


def test_a_pool_evaluation_scores_as_the_inline_one(app: App) -> None:
    devset = _devset(40)
    on_pool = Evaluator(exact_match, concurrency=8, cache=False).run(app.pooled("qa", pool="general"), devset)
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    inline = Evaluator(exact_match, concurrency=8, cache=False).run(
        app.programs.load("qa"), devset, lm=engine.lm(cache=False)
    )
    assert on_pool.score == inline.score == 0.5
    assert [r.prediction for r in on_pool.records] == [r.prediction for r in inline.records]
    assert [r.score for r in on_pool.records] == [r.score for r in inline.records]
    status = app.pools.get("general").status()
    assert status.completed >= 2  # shards, on both workers


def test_early_stop_leaves_the_queued_shards(app: App) -> None:
    devset = [dspy.Example(question=f"q{i}", answer="wrong").with_inputs("question") for i in range(200)]
    result = Evaluator(
        exact_match, concurrency=2, cache=False, early_stop=EarlyStop(stop_if_cannot_reach=0.9)
    ).run(app.pooled("qa", pool="general"), devset)
    assert result.stopped_early
    assert len(result.records) < 200


def test_a_shard_whose_worker_dies_is_sent_again(app: App) -> None:
    devset = [
        dspy.Example(question=f"q{i}", seconds=0.05, answer="slept 0.05").with_inputs("question", "seconds")
        for i in range(16)
    ]
    pool = app.pools.get("general")

    def kill_one() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = [w for w in pool.status().workers if w.state == "busy" and w.pid]
            if busy:
                os.kill(int(busy[0].pid or 0), signal.SIGKILL)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one)
    killer.start()
    result = Evaluator(exact_match, concurrency=4, cache=False).run(
        app.pooled("sleepy", pool="general"), devset
    )
    killer.join()
    assert result.score == 1.0
    assert len(result.records) == 16
    assert pool.status().replaced == {"died": 1}
