"""``WorkerPool``: what the router, pooled runs and pooled evaluations need of a pool, whatever runs it.

Two kinds implement it: :class:`~dspex.pools.pool.Pool` (worker processes on this machine) and
:class:`~dspex.pools.ray_pool.RayPool` (Ray actors, on this machine or a cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dspex.pools.pool import PoolStatus

__all__ = ["WorkerPool"]


class WorkerPool(Protocol):
    """A named set of workers that run JSON tasks (see :meth:`dspex.pools.pool.Pool.submit`)."""

    name: str
    size: int

    def start(self) -> WorkerPool: ...

    def close(self, timeout: float = 10.0) -> None: ...

    def submit(
        self,
        payload: dict[str, Any],
        *,
        worker: int | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Future[dict[str, Any]]: ...

    def status(self) -> PoolStatus: ...
