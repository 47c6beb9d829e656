"""Sessions: history across turns, persistence, worker affinity and rehydration, expiry, ownership."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pool_programs
import pytest

from dspex.errors import ValidationError
from dspex.runtime.app import App
from dspex.runtime.sessions import SessionBusy, SessionNotFound
from dspex.settings import Settings


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    settings = Settings(
        database_url=database_url, pools={"general": {"size": 2, "initializer": "pool_programs:scripted"}}
    )
    with App(settings) as app:
        app.programs.register("chat", "pool_programs:build_chat")
        yield app


def test_a_session_carries_its_history_and_records_its_turns(app: App) -> None:
    session = app.sessions.create("chat", variables={"style": "short"})
    first = app.sessions.run(session.id, {"question": "Where is Paris?"})
    second = app.sessions.run(session.id, {"question": "And its river?"})
    assert first.outputs["answer"] == "turn 1 after []"
    assert second.outputs["answer"] == "turn 2 after ['Where is Paris?']"
    stored = app.sessions.get(session.id)
    assert stored.turns == 2
    assert [t["inputs"] for t in stored.history] == [
        {"question": "Where is Paris?"},
        {"question": "And its river?"},
    ]
    assert stored.metrics["turns"] == 2
    assert stored.metrics["last_execution_id"] == second.execution_id
    app.flush()
    record = app.executions.get(second.execution_id)
    assert record is not None
    assert record.session_id == session.id
    assert record.variables == {"style": "short"}


def test_a_failed_turn_counts_but_leaves_the_history(app: App) -> None:
    session = app.sessions.create("chat")
    app.sessions.run(session.id, {"question": "one"})
    with pytest.raises(ValidationError, match="unknown input"):
        app.sessions.run(session.id, {"question": "two", "typo": 1})
    stored = app.sessions.get(session.id)
    assert stored.turns == 1
    assert stored.metrics["failed"] == 1


def test_on_a_pool_turns_keep_their_worker_and_survive_its_death(app: App) -> None:
    session = app.sessions.create("chat")
    results = [app.sessions.run(session.id, {"question": f"q{i}"}, pool="general") for i in range(3)]
    app.flush()
    placements = [app.executions.get(r.execution_id).placement for r in results]  # type: ignore[union-attr]
    assert len({p["worker"] for p in placements if p}) == 1  # strict affinity: one slot
    os.kill(int(results[-1].outputs["pid"]), signal.SIGKILL)
    time.sleep(0.1)  # dead and idle: the next turn goes to its replacement, no retry needed
    after = app.sessions.run(session.id, {"question": "q3"}, pool="general")
    assert after.outputs["answer"] == "turn 4 after ['q0', 'q1', 'q2']"  # the full history, rehydrated
    assert after.outputs["pid"] != results[-1].outputs["pid"]
    app.flush()
    placement = app.executions.get(after.execution_id).placement  # type: ignore[union-attr]
    assert placement is not None
    assert placement["worker"] == placements[0]["worker"]  # type: ignore[index]


def test_two_calls_on_one_session_never_interleave(app: App) -> None:
    session = app.sessions.create("chat")
    answers: list[str] = []

    def turn(question: str) -> None:
        result = app.sessions.run(session.id, {"question": question, "seconds": 0.2}, pool="general")
        answers.append(result.outputs["answer"])

    threads = [threading.Thread(target=turn, args=(q,)) for q in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.split(" after ")[0] for a in answers) == ["turn 1", "turn 2"]
    assert app.sessions.get(session.id).turns == 2


def test_sessions_expire_and_belong_to_their_owner(app: App) -> None:
    mine = app.sessions.create("chat", owner="key:a")
    with pytest.raises(SessionNotFound, match="unknown session"):
        app.sessions.get(mine.id, owner="key:b")
    assert [s.id for s in app.sessions.list(owner="key:a")] == [mine.id]
    assert app.sessions.list(owner="key:b") == []
    brief = app.sessions.create("chat", ttl_s=0.2)
    time.sleep(0.3)
    with pytest.raises(SessionNotFound, match="expired"):
        app.sessions.run(brief.id, {"question": "q"})
    assert app.sessions.prune() == 1
    app.sessions.delete(mine.id, owner="key:a")
    with pytest.raises(SessionNotFound):
        app.sessions.get(mine.id)


def test_turns_from_two_processes_take_turns(app: App, database_url: str) -> None:
    """Two Apps on one store stand for two server processes: the store's hold serializes their turns."""
    other_settings = Settings(database_url=database_url, session_wait_s=10.0)
    with App(other_settings) as other:
        session = app.sessions.create("chat")
        answers: list[str] = []

        def turn(on: App, question: str) -> None:
            answers.append(
                on.sessions.run(session.id, {"question": question, "seconds": 0.3}).outputs["answer"]
            )

        threads = [threading.Thread(target=turn, args=(a, q)) for a, q in ((app, "a"), (other, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(a.split(" after ")[0] for a in answers) == ["turn 1", "turn 2"]
        assert app.sessions.get(session.id).turns == 2


def test_a_session_held_too_long_is_busy_and_a_dead_holder_lapses(app: App, database_url: str) -> None:
    session = app.sessions.create("chat")
    impatient = Settings(database_url=database_url, session_wait_s=0.1)
    with App(impatient) as other:
        other.sessions.get(session.id)  # opened (and migrated) before the hold's lease starts to run
        held_at = time.monotonic()
        assert app.sessions.repository.hold(session.id, "another-process", lease_s=1.0)
        with pytest.raises(SessionBusy, match="busy with a turn in another process"):
            other.sessions.run(session.id, {"question": "q"})
        assert time.monotonic() - held_at < 1.0, "the machine was too slow to see the hold"
        time.sleep(max(0.0, held_at + 1.05 - time.monotonic()))  # the holder died: its lease lapses
        assert other.sessions.run(session.id, {"question": "q"}).outputs["answer"] == "turn 1 after []"


@pytest.mark.parametrize("call", ["run", "arun"])
def test_a_turn_longer_than_its_lease_keeps_its_session(database_url: str, call: str) -> None:
    """The slow turn's lease (1 s) is renewed while it runs (2.5 s): the other process's turn waits for it
    instead of taking the session when the lease would have lapsed and running beside it."""
    settings = Settings(database_url=database_url, session_lease_s=1.0, session_wait_s=10.0)
    with App(settings) as first, App(settings) as second:
        first.programs.register("gated", "pool_programs:build_gated_chat")
        session = first.sessions.create("gated")
        answers: dict[str, str] = {}

        def slow_turn() -> None:
            inputs = {"question": "slow", "seconds": 2.5}
            if call == "run":
                result = first.sessions.run(session.id, inputs)
            else:
                result = asyncio.run(first.sessions.arun(session.id, inputs))
            answers["slow"] = result.outputs["answer"]

        pool_programs.TURN_STARTED.clear()
        slow = threading.Thread(target=slow_turn)
        slow.start()
        assert pool_programs.TURN_STARTED.wait(10.0)
        answers["next"] = second.sessions.run(session.id, {"question": "next"}).outputs["answer"]
        slow.join()
        assert answers == {"slow": "turn 1 after []", "next": "turn 2 after ['slow']"}
        assert first.sessions.get(session.id).turns == 2


def _a_slow_turn_under_way(app: App, seconds: float) -> tuple[Any, threading.Thread]:
    """A new session of a gated chat program, and a thread whose turn on it has started (``seconds`` long)."""
    app.programs.register("gated", "pool_programs:build_gated_chat")
    session = app.sessions.create("gated")
    pool_programs.TURN_STARTED.clear()
    slow = threading.Thread(
        target=app.sessions.run, args=(session.id, {"question": "slow", "seconds": seconds})
    )
    slow.start()
    assert pool_programs.TURN_STARTED.wait(10.0)
    return session, slow


@pytest.mark.parametrize("call", ["run", "arun"])
def test_a_turn_waits_at_most_session_wait_s_in_its_own_process_too(database_url: str, call: str) -> None:
    """The second turn in the same process gives up after ``session_wait_s`` (a 409 over the API), as
    a turn in another process does; the session is whole after it, and its next turn runs."""
    with App(Settings(database_url=database_url, session_wait_s=0.3)) as app:
        session, slow = _a_slow_turn_under_way(app, 1.5)
        started = time.monotonic()
        turn = (
            functools.partial(app.sessions.run, session.id, {"question": "next"})
            if call == "run"
            else functools.partial(asyncio.run, app.sessions.arun(session.id, {"question": "next"}))
        )
        with pytest.raises(SessionBusy, match=r"busy with a turn in this process for more than 0.3 s"):
            turn()
        waited = time.monotonic() - started
        assert 0.25 < waited < 1.2, waited
        slow.join()
        assert app.sessions.run(session.id, {"question": "then"}).outputs["answer"] == "turn 2 after ['slow']"
        assert app.sessions.get(session.id).turns == 2


def test_a_cancelled_turn_waiting_for_its_session_leaves_it_free(database_url: str) -> None:
    with App(Settings(database_url=database_url, session_wait_s=10.0)) as app:
        session, slow = _a_slow_turn_under_way(app, 0.8)

        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(app.sessions.arun(session.id, {"question": "never"}), 0.2)

        asyncio.run(impatient())
        slow.join()
        time.sleep(0.2)  # the cancelled turn's thread got the session after the slow one: it gives it back
        assert (
            app.sessions.run(
                session.id,
                {"question": "then"},
            ).outputs["answer"]
            == "turn 2 after ['slow']"
        )
        assert app.sessions.get(session.id).turns == 2


def test_an_optional_history_input_gets_the_history_too(app: App) -> None:
    app.programs.register("optional", "pool_programs:build_optional_chat")
    session = app.sessions.create("optional")
    app.sessions.run(session.id, {"question": "one"})
    assert app.sessions.run(session.id, {"question": "two"}).outputs["answer"] == "turn 2 after ['one']"
