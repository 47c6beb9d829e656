"""The worker's gate: how many of its tasks run at once, from how busy its CPU is (no processes here)."""

from __future__ import annotations

import threading

from dspex.pools.worker import _Gate


class _Clocks:
    """A wall clock and a CPU clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def _gate(most: int) -> tuple[_Gate, _Clocks]:
    clocks = _Clocks()
    gate = _Gate(most)
    gate._clock = lambda: clocks.wall
    gate._cpu = lambda: clocks.cpu
    gate._since, gate._cpu_since = 0.0, 0.0
    return gate, clocks


def test_runs_that_keep_the_cpu_busy_bring_the_limit_down_to_one() -> None:
    gate, clocks = _gate(4)
    for _ in range(4):
        gate.enter()
    for expected in (3, 2, 1, 1):
        clocks.spend(wall=0.06, cpu=0.06)  # a whole core: the GIL is the bottleneck
        gate.leave()
        assert gate.limit == expected
    assert gate.running == 0


def test_runs_that_wait_keep_the_limit_and_a_freed_cpu_raises_it_while_runs_wait_to_start() -> None:
    gate, clocks = _gate(4)
    gate.enter()
    clocks.spend(wall=0.06, cpu=0.01)  # a run waiting on its LM: the CPU has room, nothing waits
    gate.leave()
    assert gate.limit == 4
    gate.limit = 1
    gate.enter()
    started = threading.Event()

    def second() -> None:  # waits to start: the limit is 1 and one run is under way
        gate.enter()
        started.set()
        gate.leave()

    thread = threading.Thread(target=second)
    thread.start()
    for _ in range(200):
        with gate._cv:
            if gate.waiting:
                break
        started.wait(0.01)
    assert not started.is_set()
    clocks.spend(wall=0.06, cpu=0.01)  # the CPU has room and a run waits: one more may start
    assert started.wait(5)
    thread.join(5)
    assert gate.limit == 2
    gate.leave()
    assert gate.running == 0


def test_a_gate_of_one_never_runs_two_at_once() -> None:
    gate, clocks = _gate(1)
    gate.enter()
    clocks.spend(wall=1.0, cpu=0.0)
    gate.leave()
    assert gate.limit == 1
