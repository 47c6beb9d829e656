"""``PooledProgram``: a registered program version on a pool, for the evaluation engine.

::

    remote = app.pooled("qa", pool="general")                # production version (or version_id=)
    result = Evaluator(exact_match, concurrency=128).run(remote, devset)

The evaluator sends shards of examples (inputs as JSON) to the pool's workers; each worker runs its shard
on ``concurrency / workers`` threads and sends predictions back; metrics run in the caller's process, so
any metric works. Examples run in parallel on every worker: DSPy's per-call CPU, which caps one process,
is spread over the cores.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.jsonable import canonical_hash

if TYPE_CHECKING:
    from dspex.pools.base import WorkerPool

__all__ = ["PooledProgram"]


@dataclass(frozen=True)
class PooledProgram:
    """Program ``name`` at ``version_id`` on ``pool`` (see the module docstring)."""

    pool: WorkerPool
    name: str
    version_id: str
    # {"space": a space document, "values": a configuration's JSON}: the worker applies it to its copy
    configuration: dict[str, Any] | None = None
    # a DSPy optimizer's candidate: its ``dump_state()`` JSON without LMs, loaded into the worker's copy
    state: dict[str, Any] | None = None

    @property
    def workers(self) -> int:
        return self.pool.size

    @property
    def fingerprint(self) -> str:
        """The evaluation cache's configuration id: the version is a content hash of the program."""
        configured = f":{canonical_hash(self.configuration)}" if self.configuration is not None else ""
        stated = f":state:{canonical_hash(self.state)}" if self.state is not None else ""
        return f"pooled:{self.name}@{self.version_id}{configured}{stated}"

    def predict_batch(self, inputs: list[dict[str, Any]], threads: int) -> Future[dict[str, Any]]:
        """Queue a shard; the future's ``["outcome"]["results"]`` has one ``{"prediction"}`` or
        ``{"error"}`` per input, in order."""
        return self.pool.submit(
            {
                "kind": "predict_batch",
                "program": {"name": self.name, "version_id": self.version_id},
                "examples": inputs,
                "threads": threads,
                "configuration": self.configuration,
                "state": self.state,
            }
        )
