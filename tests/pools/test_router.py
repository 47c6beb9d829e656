"""The router: rules from [routing], code-executing programs to the isolated pool, spill-over, reasons."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspex.errors import ConfigurationError
from dspex.runtime.app import LM_GIVEN_REASON, App
from dspex.runtime.pooled import CALLER_REASON
from dspex.settings import Settings

POOL = {"size": 1, "initializer": "pool_programs:scripted"}


@pytest.fixture
def make_app(tmp_path: Any) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(routing: dict[str, Any] | None = None, **pools: Any) -> App:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'r.db'}",
            pools={"general": POOL, **pools},
            routing=routing or {},
        )
        app = App(settings)
        for name in ("qa", "sleepy", "pot", "chat"):
            app.programs.register(name, f"pool_programs:build_{name}")
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _placement(app: App, execution_id: str) -> dict[str, Any] | None:
    app.flush()
    record = app.executions.get(execution_id)
    assert record is not None
    return record.placement


def test_without_rules_runs_stay_inline_and_unrouted(make_app: Callable[..., App]) -> None:
    app = make_app()
    assert not app.router.active
    assert app.router.decide("sleepy").pool is None
    result = app.run("sleepy", {"question": "q"})
    assert _placement(app, result.execution_id) is None


def test_program_and_module_rules_route_with_their_reason(make_app: Callable[..., App]) -> None:
    app = make_app({"programs": {"sleepy": "general"}, "modules": {"chain_of_thought": "general"}})
    on_pool = app.run("sleepy", {"question": "q"})
    assert _placement(app, on_pool.execution_id) == {
        "target": "pool",
        "pool": "general",
        "attempts": 1,
        "reason": "[routing] programs.sleepy",
        "worker": "general-0",
        "pid": on_pool.outputs["pid"],
    }
    by_module = app.run("qa", {"question": "q"})
    placement = _placement(app, by_module.execution_id)
    assert placement is not None
    assert placement["reason"] == "[routing] modules.chain_of_thought"
    assert placement["pool"] == "general"


def test_code_executing_programs_go_to_the_isolated_pool(make_app: Callable[..., App]) -> None:
    app = make_app(isolated=POOL)
    assert app.router.decide("pot").pool == "isolated"
    assert app.router.decide("pot").reason == "executes code: the isolated pool"
    inline = app.router.decide("qa")
    assert inline.pool is None
    assert inline.reason == "[routing] default"
    import dspy

    from dspex.testing import ScriptedEngine

    with dspy.context(lm=ScriptedEngine().lm()):  # routing applies (no lm=), the run uses this LM
        result = app.run("qa", {"question": "q"})
    assert _placement(app, result.execution_id) == {"target": "inline", "reason": "[routing] default"}


def test_a_saturated_or_unhealthy_pool_spills(make_app: Callable[..., App]) -> None:
    app = make_app({"default": "general", "spill_queue": 1})
    pool = app.pools.get("general")
    holds = pool.setting.concurrency + pool.setting.prefetch - 1  # what its one worker takes at once
    busy = [
        pool.submit({"program": {"name": "sleepy"}, "inputs": {"question": "q", "seconds": 1.0}})
        for _ in range(holds + 2)
    ]
    time.sleep(0.2)
    route = app.router.decide("sleepy")
    assert route.pool is None
    assert "pool 'general' saturated (" in route.reason
    assert route.reason.endswith("spilled to inline")
    result = app.run("sleepy", {"question": "q"})
    placement = _placement(app, result.execution_id)
    assert placement is not None
    assert placement["target"] == "inline"
    assert "saturated" in placement["reason"]
    for future in busy:
        future.result()


def test_routing_targets_must_be_pools(make_app: Callable[..., App]) -> None:
    app = make_app({"programs": {"qa": "gpu"}})
    with pytest.raises(ConfigurationError, match=r"\[routing\] programs.qa = 'gpu': not 'inline' nor a pool"):
        app.run("qa", {"question": "q"})


def test_evaluations_are_placed_by_the_same_rules(make_app: Callable[..., App]) -> None:
    import dspy

    from dspex.optimize import Evaluator
    from dspex.optimize.metrics import exact_match
    from dspex.pools.remote import PooledProgram

    devset = [
        dspy.Example(question=f"q{i}", answer=f"answer to q{i}").with_inputs("question") for i in range(6)
    ]
    app = make_app({"modules": {"chain_of_thought": "general"}})
    placed = app.router.evaluation("qa")
    assert isinstance(placed.program, PooledProgram)
    assert placed.route.placement() == {
        "target": "pool",
        "pool": "general",
        "reason": "[routing] modules.chain_of_thought",
    }
    assert Evaluator(exact_match).run(placed.program, devset).score == 1.0
    assert app.pools.get("general").status().completed >= 1
    inline = app.router.evaluation("sleepy")  # no rule for it: the default, inline
    assert isinstance(inline.program, dspy.Module)
    assert inline.route.placement() == {"target": "inline", "reason": "[routing] default"}
    explicit = app.router.evaluation("sleepy", pool="general")
    assert isinstance(explicit.program, PooledProgram)
    with pytest.raises(ConfigurationError, match="unknown pool 'gpu'"):
        app.router.evaluation("qa", pool="gpu")


def test_session_turns_are_routed_as_runs_are(make_app: Callable[..., App]) -> None:
    import asyncio

    app = make_app({"programs": {"chat": "general"}})
    session = app.sessions.create("chat")
    first = app.sessions.run(session.id, {"question": "one"})
    second = asyncio.run(app.sessions.arun(session.id, {"question": "two"}))
    assert second.outputs["answer"] == "turn 2 after ['one']"
    assert first.outputs["pid"] == second.outputs["pid"] != os.getpid()  # the session's worker
    for result in (first, second):
        placement = _placement(app, result.execution_id)
        assert placement is not None
        assert (placement["target"], placement["pool"]) == ("pool", "general")
        assert placement["reason"] == "[routing] programs.chat"
    record = app.executions.get(second.execution_id)
    assert record is not None
    assert record.session_id == session.id
    named = app.sessions.run(session.id, {"question": "three"}, pool="general")  # the caller's pool wins
    assert (_placement(app, named.execution_id) or {})["reason"] == CALLER_REASON

    inline = make_app({"default": "inline", "modules": {"chain_of_thought": "general"}})
    chat = inline.sessions.create("chat")
    turn = inline.sessions.run(chat.id, {"question": "one"})
    assert turn.outputs["pid"] == os.getpid()
    assert _placement(inline, turn.execution_id) == {"target": "inline", "reason": "[routing] default"}


def test_a_named_pool_and_an_lm_object_say_why_in_the_placement(make_app: Callable[..., App]) -> None:
    from dspex.testing import ScriptedEngine

    app = make_app({"programs": {"qa": "general"}})
    named = app.run("sleepy", {"question": "q"}, pool="general")
    assert (_placement(app, named.execution_id) or {})["reason"] == CALLER_REASON
    lm = ScriptedEngine().lm()
    with_lm = app.run("qa", {"question": "q"}, lm=lm)  # routed to the pool, but an LM object cannot cross
    assert _placement(app, with_lm.execution_id) == {"target": "inline", "reason": LM_GIVEN_REASON}
    bare = make_app()  # no rules: nothing to skip, nothing said
    assert _placement(bare, bare.run("qa", {"question": "q"}, lm=lm).execution_id) is None
