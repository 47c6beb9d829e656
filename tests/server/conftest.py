"""Fixtures of the REST service tests: a real uvicorn server on 127.0.0.1 over an App, and keys.

The server runs in a thread (``uvicorn.Server``, port 0) and is stopped after the test; clients are
``httpx`` over TCP, so routing, SSE, disconnects and the access log are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from server_support import QA_SPEC

from dspex.runtime.app import App
from dspex.server import ServiceOptions, create_app
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@dataclass
class Live:
    """A running service: its base URL, the App behind it, and a client factory."""

    url: str
    app: App

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


def _answer(inputs: dict[str, Any]) -> str:
    return f"answer to {inputs.get('question', '')}"


@pytest.fixture
def engine() -> ScriptedEngine:
    """The scripted LM behind the service's runs: ``answer`` echoes the question, in 4-character chunks."""
    return ScriptedEngine({"answer": _answer}, chunk_size=4)


@pytest.fixture
def dspex_app(database_url: str, engine: ScriptedEngine) -> Iterator[App]:
    """An App on a fresh database (SQLite, and PostgreSQL when DSPEX_TEST_POSTGRES_URL is set)."""
    with App(Settings(database_url=database_url), lm=engine.lm()) as app:
        yield app


@pytest.fixture
def serve() -> Iterator[Callable[..., Live]]:
    """``serve(app, auth=True, **create_app_kwargs)``: start uvicorn on a free port; stopped at teardown."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: App, *, auth: bool = True, **kwargs: Any) -> Live:
        kwargs.setdefault("options", ServiceOptions(events_poll_s=0.05, ping_s=5.0))
        api = create_app(app, auth=auth, **kwargs)
        config = uvicorn.Config(
            api, host="127.0.0.1", port=0, log_config=None, log_level="info", lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        servers.append((server, thread))
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        return Live(f"http://127.0.0.1:{port}", app)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(dspex_app: App, serve: Callable[..., Live]) -> Live:
    """The service with auth on, over ``dspex_app``."""
    return serve(dspex_app)


@pytest.fixture
def admin_key(dspex_app: App) -> str:
    return dspex_app.keys.create("admin", ["admin"])[1]


@pytest.fixture
def admin(live: Live, admin_key: str) -> Iterator[httpx.Client]:
    """A client with an admin key."""
    with live.client(admin_key) as client:
        yield client


@pytest.fixture
def qa(admin: httpx.Client) -> dict[str, Any]:
    """The program ``qa`` (predict, question -> answer), registered through the API."""
    response = admin.post("/v1/programs", json={"name": "qa", "spec": QA_SPEC, "description": "answers"})
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    return version
