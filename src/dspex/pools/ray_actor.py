"""The Ray actor of a :class:`~dspex.pools.ray_pool.RayPool`: a pool worker (:mod:`dspex.pools.worker`)
living in a Ray worker process instead of a child process of ours.

Ray makes it an actor (``ray.remote(RayWorker)``) in :mod:`dspex.pools.ray_pool`, so importing this
module needs no Ray. Messages are the process pool's, as JSON-ready dicts: the constructor takes the
``start`` message (so a restarted actor starts again alike), :meth:`run` a task and returns
``{"result", "rss", "pid"}``. The actor records nothing: the driver writes the run's record.
"""

from __future__ import annotations

import os
import sys
import threading
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
        from dspex.pools.worker import _Worker

        self._worker = _Worker(None)  # no pipe: results go back as the methods' return values
        self._worker.start(start)
        self._busy = 0
        self._lock = threading.Lock()

    def ping(self) -> dict[str, Any]:
        """The actor's heartbeat: its pid, memory and tasks under way."""
        from dspex.pools.worker import rss_bytes

        return {"pid": os.getpid(), "rss": rss_bytes(), "busy": self._busy}

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one task: a run (an outcome, recorded by the driver) or an evaluation's shard."""
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
                result = self._worker.execute(task)
        finally:
            with self._lock:
                self._busy -= 1
        return {"result": result, "rss": rss_bytes(), "pid": os.getpid()}
