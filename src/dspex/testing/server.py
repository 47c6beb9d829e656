"""A simulated OpenAI-compatible LM server, reached through DSPy's real HTTP client path.

It serves ``POST /v1/chat/completions`` (JSON or SSE streaming), ``GET /v1/models`` and ``GET /health``
for the models of :mod:`dspex.testing.simtask`, answering DSPy-formatted requests in the request's
adapter format with answers that are right or wrong per the model's quality profile. Knobs inject
latency, 429s with ``Retry-After``, 500s, timeouts and malformed output, per model too (a model that is
down, its own error rate); they can change at runtime (``POST /sim/config``, :meth:`SimServer.configure`)
and ``GET /sim/stats`` counts what happened::

    with SimServer(rate_limit_rate=0.1, retry_after=0.2) as sim:
        with dspy.context(lm=sim.lm("sim-medium", num_retries=3)):
            dspy.ChainOfThought("question -> answer")(question="What is the capital of Peru?")
        print(sim.stats().statuses)             # {200: 1} or {429: 1, 200: 1}

A server stopped with :meth:`SimServer.stop` starts again on the same port (:meth:`SimServer.start`, or
:meth:`SimServer.restart`), so clients holding its URL see an LM server that was killed and came back.

The app itself is built by :mod:`dspex.testing.simapp`. Starlette and uvicorn are imported when a server
is built, never when this module is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError
from dspex.testing.simtask import SimTask

if TYPE_CHECKING:
    from starlette.applications import Starlette

from dspex.testing.simapp import ModelStats, RequestRecord, SimConfig, SimStats, State, create_app

__all__ = ["ModelStats", "RequestRecord", "SimConfig", "SimServer", "SimStats", "create_app", "serve"]

# -- running it ----------------------------------------------------------------------------------


def _uvicorn_server(
    app: Starlette,
    state: State,
    host: str,
    port: int,
    *,
    quiet: bool,
    on_ready: Callable[[], None] | None = None,
) -> Any:
    """A uvicorn server that reports readiness and wakes hanging requests before it drains."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                if on_ready is not None:
                    on_ready()

        async def shutdown(self, sockets: Any = None) -> None:
            state.wake()
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=not quiet,
        log_level="warning" if quiet else "info",
        timeout_graceful_shutdown=2,
        # A quiet server must not reconfigure the host process's logging (tests, notebooks).
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
    )
    return _Server(config)


class SimServer:
    """A simulated OpenAI-compatible server on 127.0.0.1, in a background thread.

    Knobs are a :class:`SimConfig` or keyword arguments; ``port=0`` picks a free port, which the server
    keeps when it is stopped and started again (its state, knobs and counters are kept too)::

        with SimServer(latency_scale=0, fail_first=[429], retry_after=0.2) as sim:
            lm = sim.lm("sim-small", num_retries=2)        # dspy.LM("openai/sim-small", api_base=sim.url)
            sim.configure(error_rate=0.5)
            sim.stats().statuses
            sim.restart(downtime=1.0)                      # connections refused for a second, same URL
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        **knobs: Any,
    ) -> None:
        self._state = State((config or SimConfig()).replace(**knobs))
        self.host = host
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._error: BaseException | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> SimServer:
        """Start serving; returns once the server accepts connections.

        After :meth:`stop`, it starts again on the port it had, so a client's base URL stays valid.
        """
        if self._thread is not None:
            raise ConfigurationError("this SimServer is already running; stop() it first or make a new one")
        ready = threading.Event()
        app = create_app(_state=self._state)
        port = self.port if self.port is not None else self._requested_port
        self._error = None
        self._server = _uvicorn_server(app, self._state, self.host, port, quiet=True, on_ready=ready.set)

        def run() -> None:
            try:
                asyncio.run(self._server.serve())
            except BaseException as exc:  # uvicorn exits with SystemExit when it cannot bind
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="dspex-sim-lm", daemon=True)
        self._thread.start()
        if not ready.wait(self._startup_timeout) or not self._server.started:
            self.stop()
            where = f"{self.host}:{port}"
            raise ConfigurationError(
                f"the simulated LM server did not start on {where} ({self._error!r}); is the port free?"
            )
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread (hanging requests are woken first)."""
        if self._thread is None:
            return
        self._state.wake()
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - uvicorn cancels tasks after its grace period
            raise ConfigurationError(f"the simulated LM server did not stop within {timeout:g} s")
        self._thread = None

    def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds (connections refused), start again on the same port.

        Requests in flight when it stops end as :meth:`stop` ends them (hanging ones get their 504).
        """
        self.stop()
        if downtime > 0:
            time.sleep(downtime)  # the outage itself: nothing to wait on
        self.start()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- use -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self.port is None:
            raise ConfigurationError("the simulated LM server is not running; use `with SimServer() as sim:`")
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible API base, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base_url}/v1"

    @property
    def config(self) -> SimConfig:
        return self._state.config

    @property
    def task(self) -> SimTask:
        """The task whose gold answers the server knows."""
        return self._state.task

    def lm(self, model: str = "sim-medium", **kwargs: Any) -> Any:
        """A real ``dspy.LM`` pointed at this server (uncached unless ``cache=True``).

        Example: ``sim.lm("sim-large", temperature=0.7, num_retries=0)``.
        """
        import dspy

        kwargs.setdefault("cache", False)
        return dspy.LM(f"openai/{model}", api_base=self.url, api_key="sim-key", **kwargs)

    def configure(self, **knobs: Any) -> SimConfig:
        """Change knobs while running (see :class:`SimConfig`); returns the new config."""
        return self._state.configure(**knobs)

    def reset(self) -> None:
        """Zero the counters and the request log, re-arm ``fail_first`` and the error draws."""
        self._state.reset()

    def stats(self) -> SimStats:
        return self._state.stats()

    def requests(self) -> list[RequestRecord]:
        """The last (up to 1000) chat-completion requests, oldest first."""
        with self._state.lock:
            return list(self._state.log)

    @contextlib.contextmanager
    def knobs(self, **knobs: Any) -> Iterator[SimConfig]:
        """Change knobs for a ``with`` block, then restore the previous config."""
        before = self.config
        try:
            yield self.configure(**knobs)
        finally:
            self.configure(**{f.name: getattr(before, f.name) for f in fields(before)})


def serve(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run a simulated server in the foreground until interrupted (Ctrl-C); used by ``dspex sim-lm serve``.

    ``on_ready`` gets the API base URL once the server accepts connections.
    """
    state = State(config or SimConfig())
    app = create_app(_state=state)
    server: Any = None

    def ready() -> None:
        if on_ready is not None and server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            on_ready(f"http://{host}:{bound}/v1")

    server = _uvicorn_server(app, state, host, port, quiet=False, on_ready=ready)
    server.run()
