"""Streamed runs on a worker pool: the worker streams the tokens, the caller's process records the run."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspex.errors import ValidationError
from dspex.runtime.app import App
from dspex.runtime.stream import RunFailed, RunFinished, RunStarted, RunStream, StreamEvent, TokenEvent
from dspex.server import ServiceOptions, create_app
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    settings = Settings(
        database_url=database_url, pools={"general": {"size": 2, "initializer": "pool_programs:scripted"}}
    )
    with App(settings) as app:
        app.programs.register("qa", "pool_programs:build_qa")
        app.programs.register("sleepy", "pool_programs:build_sleepy")
        yield app


async def _events(stream: RunStream) -> list[StreamEvent]:
    return [event async for event in stream.events()]


def _tokens(events: list[StreamEvent], field: str) -> list[str]:
    return [e.chunk for e in events if isinstance(e, TokenEvent) and e.field == field]


async def test_a_stream_on_a_pool_sends_the_tokens_an_inline_stream_sends(app: App) -> None:
    pooled = await _events(await RunStream.open(app, "qa", {"question": "Where is Paris?"}, pool="general"))
    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    inline = await _events(
        await RunStream.open(app, "qa", {"question": "Where is Paris?"}, lm=engine.lm(cache=False))
    )
    assert isinstance(pooled[0], RunStarted)
    assert isinstance(pooled[-1], RunFinished)
    assert isinstance(inline[-1], RunFinished)
    answer = _tokens(pooled, "answer")
    assert len(answer) > 1  # chunks as the worker's LM wrote them, not one piece at the end
    assert answer == _tokens(inline, "answer")
    assert _tokens(pooled, "reasoning") == _tokens(inline, "reasoning")
    assert pooled[-1].result.outputs == inline[-1].result.outputs
    assert pooled[-1].result.outputs["answer"] == "answer to Where is Paris?"

    app.flush()
    on_pool = app.executions.get(pooled[0].execution_id)
    here = app.executions.get(inline[0].execution_id)
    assert on_pool is not None
    assert here is not None
    assert on_pool.status == here.status == "succeeded"
    assert on_pool.outputs == here.outputs
    assert on_pool.total_tokens == here.total_tokens > 0
    assert on_pool.placement is not None
    assert on_pool.placement["pool"] == "general"
    assert on_pool.placement["pid"] != os.getpid()
    assert on_pool.trace is not None
    assert here.trace is not None

    def shape(trace: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(s["kind"], s["name"], s["parent"]) for s in trace["spans"]]

    assert shape(on_pool.trace) == shape(here.trace)
    assert any(kind == "lm" for kind, _, _ in shape(on_pool.trace))


async def test_bad_inputs_are_refused_before_the_stream_starts(app: App) -> None:
    with pytest.raises(ValidationError) as raised:
        await RunStream.open(app, "qa", {"q": "x"}, pool="general")
    assert raised.value.execution_id is not None
    app.flush()
    record = app.executions.get(raised.value.execution_id)
    assert record is not None
    assert record.status == "failed"


async def test_a_stream_whose_worker_dies_ends_failed_with_worker_lost(app: App) -> None:
    stream = await RunStream.open(app, "sleepy", {"question": "?", "seconds": 30}, pool="general")
    events = stream.events()
    started = await anext(events)
    assert isinstance(started, RunStarted)
    end = asyncio.ensure_future(anext(events))
    pool = app.pools.get("general")
    for _ in range(200):  # until a worker has the task
        busy = [w for w in pool.status().workers if w.state == "busy"]
        if busy:
            break
        await asyncio.sleep(0.02)
    assert busy
    assert busy[0].pid is not None
    os.kill(busy[0].pid, signal.SIGKILL)
    failed = await asyncio.wait_for(end, 20)
    assert isinstance(failed, RunFailed)
    assert getattr(failed.error, "code", None) == "worker_lost"
    await events.aclose()
    app.flush()
    record = app.executions.get(started.execution_id)
    assert record is not None
    assert record.status == "failed"
    assert record.error is not None
    assert record.error["code"] == "worker_lost"


async def test_closing_a_stream_on_a_pool_records_it_cancelled(app: App) -> None:
    stream = await RunStream.open(app, "sleepy", {"question": "?", "seconds": 1.0}, pool="general")
    events = stream.events()
    started = await anext(events)
    assert isinstance(started, RunStarted)
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await events.aclose()
    app.flush()
    record = app.executions.get(started.execution_id)
    assert record is not None
    assert record.status == "cancelled"
    # The pool goes on: the next run succeeds.
    assert app.run("sleepy", {"question": "again"}, pool="general").outputs["answer"] == "slept 0.0"


async def test_the_service_on_a_pool_streams_from_its_workers(app: App) -> None:
    runner, admin = app.keys.create("ci", ["runs:execute"])[1], app.keys.create("ops", ["admin"])[1]
    api = create_app(app, options=ServiceOptions(pool="general"))
    transport = httpx.ASGITransport(app=api)
    headers = {"Authorization": f"Bearer {runner}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://dspex.test") as client:
        response = await client.post(
            "/v1/programs/qa/runs/stream", json={"inputs": {"question": "streamed?"}}, headers=headers
        )
        assert response.status_code == 200, response.text
        events = _sse(response.text)
        assert events[0][0] == "start"
        assert events[-1][0] == "result"
        chunks = [data["chunk"] for kind, data in events if kind == "token" and data["field"] == "answer"]
        assert "".join(chunks) == "answer to streamed?"
        execution = await client.get(
            f"/v1/executions/{events[-1][1]['execution_id']}", headers={"Authorization": f"Bearer {admin}"}
        )
    assert execution.status_code == 200, execution.text
    assert execution.json()["placement"]["pool"] == "general"
    assert execution.json()["status"] == "succeeded"


def _sse(text: str) -> list[tuple[str, Any]]:
    import json

    events = []
    for block in text.strip().split("\n\n"):
        kind, data = "message", None
        for line in block.splitlines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
        if data is not None:
            events.append((kind, data))
    return events
