"""The worker's gate: its runs start in the order they came, as many at once as its CPU allows (threads
here, no processes)."""

from __future__ import annotations

import threading
import time
from typing import Any

from dspex.pools.worker import _Gate


class _Clocks:
    """A wall clock and a CPU clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def _gate(most: int, run: Any = None) -> tuple[_Gate, _Clocks]:
    clocks = _Clocks()
    gate = _Gate(most, run or (lambda message: None))
    gate._clock = lambda: clocks.wall
    gate._cpu = lambda: clocks.cpu
    gate._since, gate._cpu_since = 0.0, 0.0
    return gate, clocks


def _adjust(gate: _Gate) -> None:
    with gate._cv:
        gate._adjust()


def test_runs_that_keep_the_cpu_busy_bring_the_limit_down_to_one() -> None:
    gate, clocks = _gate(4)
    gate.running = 4
    for expected in (3, 2, 1, 1):
        clocks.spend(wall=0.06, cpu=0.06)  # a whole core: the GIL is the bottleneck
        _adjust(gate)
        assert gate.limit == expected


def test_a_cpu_with_room_raises_the_limit_only_while_runs_wait_to_start() -> None:
    gate, clocks = _gate(4)
    gate.limit = gate.running = 1
    clocks.spend(wall=0.06, cpu=0.01)  # runs waiting on their LM, none queued: no need for more
    _adjust(gate)
    assert gate.limit == 1
    gate.queue.append({"id": 1})
    clocks.spend(wall=0.01, cpu=0.0)  # within one window: nothing changes yet
    _adjust(gate)
    assert gate.limit == 1
    clocks.spend(wall=0.06, cpu=0.01)
    _adjust(gate)
    assert gate.limit == 2


def test_runs_start_in_order_and_no_more_than_the_limit_run_at_once() -> None:
    lock = threading.Lock()
    started: list[int] = []
    now = most = 0

    def run(message: dict[str, Any]) -> None:  # waits, as on an LM: the CPU stays idle, the limit stays
        nonlocal now, most
        with lock:
            started.append(message["id"])
            now += 1
            most = max(most, now)
        time.sleep(0.2)
        with lock:
            now -= 1

    gate = _Gate(3, run)
    for i in range(9):
        gate.put({"id": i})
    gate.close()  # every queued run ends first
    assert started == list(range(9))
    assert most == 3


def test_at_a_limit_of_one_runs_follow_each_other_on_one_thread() -> None:
    threads: list[int] = []
    gate, _ = _gate(4, lambda message: threads.append(threading.get_ident()))
    gate.limit = 1
    with gate._cv:  # all queued before a thread may take one
        for i in range(20):
            gate.put({"id": i})
    gate.close()
    assert len(threads) == 20
    assert len(set(threads)) == 1


def test_a_run_held_back_by_the_limit_starts_beside_a_long_one_once_the_cpu_has_room() -> None:
    release = threading.Event()
    started: dict[int, threading.Event] = {i: threading.Event() for i in range(3)}

    def run(message: dict[str, Any]) -> None:
        started[message["id"]].set()
        if message["id"] == 1:  # a long run, waiting on its LM
            release.wait(10)

    gate, clocks = _gate(4, run)
    gate.limit = 2
    gate.put({"id": 0})
    gate.put({"id": 1})
    assert started[0].wait(5)
    assert started[1].wait(5)
    for _ in range(500):  # run 0 over: its runner waits for the next run
        with gate._cv:
            if gate.running == 1:
                break
        time.sleep(0.01)
    gate.limit = 1  # as after a window of saturated CPU
    gate.put({"id": 2})  # held back: one run under way, a limit of 1
    assert not started[2].wait(0.2)
    clocks.spend(wall=0.06, cpu=0.0)  # the next window: the CPU has room, a run waits
    assert started[2].wait(5)
    assert not release.is_set()  # it started beside the long one
    release.set()
    gate.close()
    assert gate.limit == 2


def test_callers_on_their_own_threads_wait_for_the_limit() -> None:
    # A Ray actor's runs come on Ray's threads: enter() holds one back while the limit is reached.
    gate, _ = _gate(2)
    gate.limit = 1
    gate.enter()
    entered = threading.Event()

    def second() -> None:
        gate.enter()
        entered.set()
        gate.leave()

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.2)
    gate.leave()
    assert entered.wait(5)
    thread.join(5)
    assert gate.running == 0
