"""Worker pools: named sets of pre-warmed worker processes with memory, task and time limits.

::

    # dspex.toml
    [pools.general]             # exists by default: one worker per core
    size = 2
    max_rss_mb = 1024           # a worker over it is recycled; a task that takes it over fails (memory_limit)
    max_tasks = 1000            # recycle after this many tasks
    task_timeout_s = 120        # a task over it has its worker killed and replaced (task_timeout)
    initializer = "myapp.workers:setup"   # called once per worker at start-up (dspy.configure is fine there)

    app.run("qa", {"question": "?"}, pool="general")           # recorded as inline runs are, plus placement
    app.pools.status()                                         # workers, pids, RSS, tasks, replacements

Programs cross to a worker by reference (a registered name and version), inputs and outputs as JSON;
the worker records nothing, the caller's process writes the run's record. See :mod:`dspex.pools.pool`.
While pools run, their status is published under the home directory for ``dspex pools status``
(:mod:`dspex.pools.published`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, did_you_mean
from dspex.settings import PoolSetting, Settings

if TYPE_CHECKING:
    from dspex.pools.base import WorkerPool
    from dspex.pools.pool import PoolStatus
    from dspex.pools.published import Publisher

__all__ = ["DEFAULT_POOL", "Pools"]

DEFAULT_POOL = "general"


class Pools:
    """The pools an App's settings declare (plus ``general``), each started on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pools: dict[str, WorkerPool] = {}
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted({DEFAULT_POOL, *self.settings.pools}))

    def setting(self, name: str) -> PoolSetting:
        if name not in self.names:
            raise ConfigurationError(
                did_you_mean(name, self.names, what="pool") + " (pools are [pools.NAME] in dspex.toml)"
            )
        return self.settings.pools.get(name) or PoolSetting.model_validate({})

    def get(self, name: str) -> WorkerPool:
        """Pool ``name``, started (its workers ready) on first use: processes, or Ray actors when its
        ``backend`` is ``"ray"`` (:mod:`dspex.pools.ray_pool`)."""
        pool = self._pools.get(name)  # a started pool: no lock, no settings to read
        if pool is not None:
            return pool
        from dspex.pools.pool import Pool

        setting = self.setting(name)
        factory: Callable[[str, PoolSetting, Settings], WorkerPool] = Pool
        if setting.backend == "ray":
            from dspex.pools.ray_pool import RayPool

            factory = RayPool
        with self._lock:
            pool = self._pools.get(name)
            if pool is not None:
                return pool
            pool = factory(name, setting, self.settings).start()
            self._pools[name] = pool
            publisher = self._publisher
            if publisher is None:
                from dspex.pools.published import Publisher

                publisher = self._publisher = Publisher(self.settings.home, self._published)
        publisher.start()  # publishes now, and from then on every PUBLISH_S
        return pool

    def _published(self) -> list[dict[str, Any]]:
        return [status.to_json() for status in self.status()]

    def running(self, name: str) -> bool:
        """Whether pool ``name`` has started: :meth:`get` then returns at once."""
        return name in self._pools

    def started(self) -> list[WorkerPool]:
        with self._lock:
            return list(self._pools.values())

    def status(self) -> list[PoolStatus]:
        """The status of every pool that has started."""
        return [pool.status() for pool in self.started()]

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
        for pool in pools:
            pool.close()
