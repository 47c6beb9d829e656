"""The Ray actor of a :class:`~dspex.pools.ray_pool.RayPool`: a pool worker (:mod:`dspex.pools.worker`)
living in a Ray worker process instead of a child process of ours.

Ray makes it an actor (``ray.remote(RayWorker)``) in :mod:`dspex.pools.ray_pool`, so importing this
module needs no Ray. Messages are the process pool's, as JSON-ready dicts: the constructor takes the
``start`` message (so a restarted actor starts again alike), :meth:`run` a task and returns
``{"result", "rss", "pid", "runs"}`` (``runs``: the runs it held, many for a shard of runs). The actor records nothing: the driver writes the run's record.

A streamed run (``"stream": true``) goes to :meth:`stream`, a Ray streaming generator
(``num_returns="streaming"``): it yields each token or step event as the JSON text of the process
worker's ``{"op": "event"}`` message, as it happens, then ``{"op": "done", "result", "rss", "pid"}``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["RayWorker"]


class RayWorker:
    """One pool worker as a Ray actor (threaded: tasks and pings run side by side)."""

    def __init__(self, start: dict[str, Any]) -> None:
        # The driver's import path, for programs and initializers registered by import path; an entry
        # that does not exist on this machine is skipped.
        for entry in start.get("sys_path") or []:
            if entry not in sys.path and os.path.isdir(entry):
                sys.path.append(entry)
        from dspex.pools.worker import _Gate, _Worker

        self._busy = 0
        self._lock = threading.Lock()
        self._streams: dict[int, queue.SimpleQueue[str | None]] = {}  # a streamed run's id -> its messages
        self._ids = itertools.count(1)
        # No pipe: results go back as the methods' return values, a stream's events through _route.
        self._worker = _Worker(None, route=self._route)
        self._worker.start(start)
        # Ray runs up to ``concurrency`` calls at once on its threads; the gate holds back CPU-bound
        # ones while the actor's CPU is saturated (see dspex.pools.worker._Gate).
        self._gate = _Gate(self._worker.concurrency)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """A run, once the gate lets it start: counted from then for the pool's task timeout (ping)."""
        self._gate.enter()
        run_id, worker = next(self._ids), self._worker
        with worker.lock:  # the worker's own record of its tasks' starts (_Worker.oldest)
            worker.started[run_id] = time.monotonic()
        try:
            yield
        finally:
            with worker.lock:
                worker.started.pop(run_id, None)
            self._gate.leave()

    def ping(self) -> dict[str, Any]:
        """The actor's heartbeat: its pid, memory and tasks under way."""
        from dspex.pools.worker import rss_bytes

        oldest = self._worker.oldest()
        return {
            "pid": os.getpid(),
            "rss": rss_bytes(),
            "busy": self._busy,
            "oldest_s": None if oldest is None else oldest[1],
        }

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one task: a run (an outcome, recorded by the driver), a shard of runs (``"kind": "runs"``,
        counted as that many tasks: ``"runs"``) or an evaluation's shard."""
        from dspex.pools.worker import rss_bytes

        with self._lock:
            self._busy += 1
        try:
            if task.get("kind") == "predict_batch":
                try:
                    result = self._worker.predict_batch(task)
                except Exception as exc:  # the program could not be built: every example fails alike
                    error = {"type": type(exc).__name__, "message": str(exc)}
                    result = {"results": [{"error": error, "ms": 0.0} for _ in task["examples"]]}
            else:
                with self._running():
                    if task.get("kind") == "runs":  # a shard of runs: each its own outcome, as alone
                        result = self._worker.runs(task)
                    else:
                        result = self._worker.execute(task)
        finally:
            with self._lock:
                self._busy -= 1
        count = len(task["runs"]) if task.get("kind") == "runs" else 1
        return {"result": result, "rss": rss_bytes(), "pid": os.getpid(), "runs": count}

    def stream(self, task: dict[str, Any]) -> Iterator[str]:
        """Run a streamed task (a Ray streaming generator): each event's message as JSON text, as the
        worker emits it, then the ``done`` message with the outcome (see the module docstring)."""
        from dspex.jsonable import dumps
        from dspex.pools.worker import rss_bytes

        task_id = next(self._ids)
        messages: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        outcome: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def work() -> None:  # the worker's stream runs its own event loop: on a thread, so we can yield
            try:
                with self._running():
                    outcome.append(self._worker.stream(task, task_id))
            except BaseException as exc:  # handed to the generator, which raises it to the driver
                failure.append(exc)
            finally:
                messages.put(None)

        with self._lock:
            self._busy += 1
            self._streams[task_id] = messages
        try:
            thread = threading.Thread(target=work, name=f"dspex-stream-{task_id}", daemon=True)
            thread.start()
            while (message := messages.get()) is not None:
                yield message
            thread.join()
            if failure:
                raise failure[0]
            yield dumps({"op": "done", "result": outcome[0], "rss": rss_bytes(), "pid": os.getpid()})
        finally:
            with self._lock:
                self._busy -= 1
                self._streams.pop(task_id, None)

    def _route(self, message: dict[str, Any]) -> None:
        """A message of the worker's (a streamed run's event) to the stream of the task it belongs to."""
        from dspex.jsonable import dumps

        with self._lock:
            messages = self._streams.get(message.get("id", -1))
        if messages is None:
            raise RuntimeError(f"a worker message for no stream under way: {message.get('op')!r}")
        messages.put(dumps(message))
