"""Fixtures of the chaos suite: a private PostgreSQL cluster the tests may stop and crash, and the REST
service on a real uvicorn.

The machine's shared PostgreSQL (port 5432, used by the storage tests) is never touched: the cluster here
is made by ``initdb`` in a temporary directory (:mod:`dspex.testing.postgres`) once per session, each test
gets a fresh database in it, and the cluster is stopped and deleted at the end. Without PostgreSQL's
server binaries the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspex.testing.postgres import PostgresCluster, unavailable_reason


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this session only, on 127.0.0.1 and a free port; stopped and deleted after."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no private PostgreSQL for the chaos tests: {reason}")
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def chaos_database_url(private_postgres: PostgresCluster) -> str:
    """A fresh, empty database in the private cluster (a running cluster: a previous test may have
    stopped it and failed before starting it again)."""
    if not private_postgres.running:
        private_postgres.start()
    return private_postgres.create_database(f"chaos_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def serve_api() -> Iterator[Callable[..., str]]:
    """``serve_api(app, **create_app_kwargs)``: the REST service over ``app`` on a real uvicorn in a
    thread (127.0.0.1, a free port); returns its base URL. Stopped at teardown."""
    import uvicorn

    from dspex.server import ServiceOptions, create_app

    servers: list[tuple[Any, threading.Thread]] = []

    def start(app: Any, **kwargs: Any) -> str:
        kwargs.setdefault("options", ServiceOptions(events_poll_s=0.05, ping_s=5.0))
        api = create_app(app, **kwargs)
        config = uvicorn.Config(api, host="127.0.0.1", port=0, log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        servers.append((server, thread))
        for _ in range(1000):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
