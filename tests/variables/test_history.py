from __future__ import annotations

import datetime as dt
import itertools
import threading

import pytest
import sqlalchemy as sa

from dspex import ConfigurationError
from dspex.store import HEAD, open_database
from dspex.store.migrate import _ORDER
from dspex.store.variables import VariableChangeRecord, VariableHistoryRepository
from dspex.variables.core import Variable
from dspex.variables.history import ABSENT, VariableChanged, VariableState
from dspex.variables.space import Constraint, Derived, VariableSpace

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _clock() -> dt.datetime:
    """A clock that ticks one second per call (the same across every state built with it)."""
    return next(_TICKS)


_TICKS = (T0 + dt.timedelta(seconds=i) for i in itertools.count())


def _space() -> VariableSpace:
    return VariableSpace(
        [
            Variable.module_type("module"),
            Variable.float("temperature", 0.0, 1.0, default=0.7),
            Variable.choice("hint", ["short", None], active_when={"module": "chain_of_thought"}),
            Variable.composite("lm", [Variable.int("max_tokens", 64, 512, step=64, default=256)]),
        ],
        constraints=[Constraint("cool_hints", lambda c: c.get("hint") is None or c["temperature"] <= 0.5)],
        derived=[Derived("double", lambda c: c["temperature"] * 2, depends_on=["temperature"])],
    )


def test_set_records_changes_and_notifies_observers() -> None:
    state = VariableState(_space(), scope="qa", clock=_clock)
    seen: list[VariableChanged] = []
    unsubscribe = state.on_change(seen.append)
    events = state.set("temperature", 0.2, by="alice", score=0.5)
    assert [(e.name, e.old, e.new, e.by, e.score) for e in events] == [
        ("temperature", 0.7, 0.2, "alice", 0.5),
        ("double", 1.4, 0.4, "alice", 0.5),
    ]
    assert seen == list(events)
    assert events[0].configuration_id == state.configuration.id
    assert state.get("temperature") == 0.2
    assert state.set("temperature", 0.2, by="alice") == ()  # no change, no event
    unsubscribe()
    state.set("temperature", 0.3, by="bob")
    assert len(seen) == 2
    assert [e.by for e in state.history] == ["alice", "alice", "bob", "bob"]
    assert [e.new for e in state.history_of("temperature")] == [0.2, 0.3]


def test_activating_a_conditional_records_absent_values() -> None:
    state = VariableState(_space(), clock=_clock)
    events = state.update({"module": "chain_of_thought", "hint": None, "temperature": 0.4}, by="optimizer")
    hint = next(e for e in events if e.name == "hint")
    assert (hint.old, hint.new) == (ABSENT, None)
    assert hint.to_json()["old_present"] is False
    assert hint.to_json()["new_present"] is True
    events = state.set("module", "predict", by="optimizer")
    assert [(e.name, e.old, e.new) for e in events] == [
        ("module", "chain_of_thought", "predict"),
        ("hint", None, ABSENT),
    ]
    composite = state.set("lm", {"max_tokens": 128}, by="alice")
    assert [(e.name, e.old, e.new) for e in composite] == [("lm", {"max_tokens": 256}, {"max_tokens": 128})]


def test_invalid_changes_change_nothing() -> None:
    state = VariableState(_space())
    before = state.configuration
    with pytest.raises(
        ConfigurationError, match="variable 'hint' is inactive: it is active only when module in"
    ):
        state.set("hint", "short", by="alice")
    with pytest.raises(ConfigurationError, match="violates constraint 'cool_hints'"):
        state.update({"module": "chain_of_thought", "hint": "short"}, by="alice")
    with pytest.raises(ConfigurationError, match="'double' is derived"):
        state.set("double", 3, by="alice")
    with pytest.raises(ConfigurationError, match="unknown variable 'temprature'"):
        state.set("temprature", 3, by="alice")
    with pytest.raises(ConfigurationError, match="by= names who makes the change"):
        state.set("temperature", 0.1, by="")
    assert state.configuration == before
    assert state.history == ()


def test_every_observer_runs_and_the_first_failure_is_raised() -> None:
    state = VariableState(_space())
    seen: list[str] = []

    def broken(event: VariableChanged) -> None:
        raise RuntimeError("observer bug")

    state.on_change(broken)
    state.on_change(lambda e: seen.append(e.name))
    with pytest.raises(RuntimeError, match="observer bug"):
        state.set("temperature", 0.1, by="alice")
    assert seen == ["temperature", "double"]
    assert state.get("temperature") == 0.1  # the change itself stands


def test_concurrent_updates_are_serialised() -> None:
    state = VariableState(VariableSpace([Variable.int("k", 0, 1000)]))
    values = list(range(200))

    def worker(chunk: list[int]) -> None:
        for value in chunk:
            state.set("k", value, by=f"t{chunk[0]}")

    threads = [threading.Thread(target=worker, args=(values[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each event's old value is the previous event's new value: no change was lost or interleaved.
    history = state.history
    assert all(a.new == b.old for a, b in itertools.pairwise(history))


def test_history_is_persisted_and_restored(database_url: str) -> None:
    db = open_database(database_url)
    repo = VariableHistoryRepository(db)
    state = VariableState(_space(), scope="qa", repository=repo, clock=_clock)
    state.update({"module": "chain_of_thought", "hint": None}, by="alice")
    state.set("temperature", 0.4, by="optimizer", score=0.9)
    state.set("hint", "short", by="bob")
    state.set("module", "predict", by="alice")
    VariableState(_space(), scope="other", repository=repo).set("temperature", 0.1, by="carol")

    stored = repo.find("qa")
    assert [(r.variable, r.changed_by) for r in stored] == [(e.name, e.by) for e in state.history]
    assert [r.id for r in stored] == sorted(r.id for r in stored)
    assert [VariableChanged.from_record(r) for r in stored] == list(state.history)
    hint = repo.find("qa", variable="hint")
    assert [(r.old, r.old_present, r.new, r.new_present) for r in hint] == [
        (None, False, None, True),  # a JSON null value is not "absent"
        (None, True, "short", True),
        ("short", True, None, False),
    ]
    assert [r.score for r in repo.find("qa", changed_by="optimizer")] == [0.9, 0.9]
    assert all(r.changed_at.tzinfo is not None for r in stored)
    assert repo.find("qa", since=stored[-1].changed_at) == [
        r for r in stored if r.changed_at >= stored[-1].changed_at
    ]
    assert repo.find("qa", limit=2, offset=1) == stored[1:3]
    assert repo.count("qa") == len(stored)
    assert repo.count("qa", variable="module") == 2
    assert repo.scopes() == ["other", "qa"]

    restored = VariableState.restore(_space(), repo, scope="qa")
    assert restored.configuration == state.configuration
    assert restored.history == state.history
    assert VariableState.restore(_space(), repo, scope="new").configuration == _space().defaults()
    db.dispose()


def test_a_failed_write_leaves_the_state_unchanged(database_url: str) -> None:
    db = open_database(database_url)
    state = VariableState(_space(), scope="qa", repository=VariableHistoryRepository(db))
    with db.write() as connection:
        connection.execute(sa.text("DROP TABLE variable_changes"))
    with pytest.raises(sa.exc.OperationalError if db.dialect == "sqlite" else sa.exc.ProgrammingError):
        state.set("temperature", 0.1, by="alice")
    assert state.get("temperature") == 0.7
    assert state.history == ()
    db.dispose()


def test_records_round_trip_json_values_exactly(database_url: str) -> None:
    db = open_database(database_url)
    repo = VariableHistoryRepository(db)
    record = VariableChangeRecord(
        scope="s", variable="v", old={"nested": [1, 2.5, None]}, new=True, changed_by="me", changed_at=T0
    )
    [stored] = repo.append([record])
    assert stored.id > 0
    assert repo.find("s") == [stored]
    assert repo.append([]) == []
    db.dispose()


def test_migration_0002_follows_0001() -> None:
    # Migrations are append-only: 0002 stays right after 0001 whatever comes later.
    assert _ORDER[:2] == ("0001", "0002")
    assert _ORDER[-1] == HEAD
