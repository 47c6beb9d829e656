"""The two driver-side rules of DSPy optimizer runs on a pool: ``max_lm_calls`` reserves a call per
example sent to the workers (``CallCap.reserve``/``release``), and only sampling numbers of copies of the
run's task LM cross to a worker (``lm_sampling``)."""

from __future__ import annotations

import threading

import dspy
import pytest

from dspex.optimize._dspy_candidates import Tracker
from dspex.optimize._dspy_lm import CallCap, CapReached, Stop
from dspex.optimize._dspy_pool import lm_sampling
from dspex.optimize.cache import MemoryCache
from dspex.telemetry.usage import UsageTotals
from dspex.testing import ScriptedEngine


def _cap(limit: int) -> tuple[CallCap, UsageTotals]:
    usage = UsageTotals()
    return CallCap(limit, usage, spent=0, save=None), usage


def test_reserve_grants_what_is_left_and_a_reservation_holds_its_call() -> None:
    cap, usage = _cap(5)
    assert cap.reserve(3) == 3
    assert cap.reserve(10) == 2  # only what is left
    with pytest.raises(Stop) as stopped:
        cap.reserve(1)
    assert isinstance(stopped.value.stopped, CapReached)
    with pytest.raises(Stop):  # an LM call here counts the workers' reserved calls too
        cap.on_lm_start("call-1", None, {})
    # Two examples come back, one LM call each: counted by usage, then released.
    usage.add_usage("scripted/qa", {})
    usage.add_usage("scripted/qa", {})
    cap.release(2)
    with pytest.raises(Stop):  # 2 made + 3 still reserved
        cap.reserve(1)
    cap.release(3)  # lost: a dead worker made no call
    assert cap.reserve(5) == 3


def test_drain_waits_for_the_examples_in_flight_on_the_workers() -> None:
    cap, usage = _cap(4)
    cap.reserve(2)
    back = threading.Event()

    def worker_returns() -> None:
        back.wait(5)
        usage.add_usage("scripted/qa", {})
        cap.release(2)

    thread = threading.Thread(target=worker_returns)
    thread.start()
    back.set()
    cap.drain(timeout=5)
    thread.join(5)
    assert cap.total() == 1
    assert cap.reserve(4) == 3


def test_a_closed_cap_starts_no_call_and_the_calls_in_flight_still_count() -> None:
    # DSPy's executors leave their threads running when a run stops: a call one of them starts after
    # the attempt ended must not be spent (a job's next attempt has read the count by then).
    cap, usage = _cap(10)
    cap.on_lm_start("in-flight", None, {})
    cap.close()
    with pytest.raises(Stop) as stopped:
        cap.on_lm_start("straggler", None, {})
    assert isinstance(stopped.value.stopped, CapReached)
    assert "attempt has ended" in str(stopped.value.stopped)
    with pytest.raises(Stop, match="attempt has ended"):
        cap.reserve(1)
    usage.add_usage("scripted/qa", {})
    cap.on_lm_end("in-flight", None)
    cap.drain(timeout=5)
    assert cap.total() == 1


def test_only_sampling_numbers_of_a_copy_of_the_task_lm_cross() -> None:
    engine = ScriptedEngine({"answer": "a"})
    task = engine.lm(cache=False, temperature=0.0)
    assert lm_sampling(task, task) == {}
    assert lm_sampling(task.copy(rollout_id=3, temperature=1.0), task) == {
        "rollout_id": 3,
        "temperature": 1.0,
    }
    assert lm_sampling(task.copy(top_p=0.9, max_tokens=64, n=2), task) == {
        "top_p": 0.9,
        "max_tokens": 64,
        "n": 2,
    }
    refused = [
        task.copy(stop=["\n"]),  # not a sampling number
        task.copy(temperature="1.0"),  # not a number
        task.copy(temperature=float("inf")),
        task.copy(model="scripted/other"),  # another model
        engine.lm("other", cache=False),  # another LM altogether
        ScriptedEngine({"answer": "b"}).lm(cache=False, temperature=0.0),  # the same name, another engine
        None,
    ]
    for lm in refused:
        assert lm_sampling(lm, task) is None, lm


def test_the_settings_of_a_call_name_its_predictors_lms_and_the_context_lm() -> None:
    task = ScriptedEngine({"answer": "a"}).lm(cache=False)
    tracker = Tracker("simba", MemoryCache(), UsageTotals(), None, None)
    tracker.task_lm = task
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=task):
        assert tracker.sampling(program) == {}
        program.predict.lm = task.copy(rollout_id=1, temperature=1.0)
        assert tracker.sampling(program) == {"predictors": {"predict": {"rollout_id": 1, "temperature": 1.0}}}
    with dspy.context(lm=task.copy(temperature=0.7)):  # BootstrapFewShot's later rounds
        program.predict.lm = None
        assert tracker.sampling(program) == {"context": {"temperature": 0.7}}
        program.predict.lm = task.copy(logit_bias={"1": 5})  # not a sampling number
        assert tracker.sampling(program) is None  # that call runs in the driver
