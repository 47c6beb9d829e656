"""Runs placed on a worker pool: the worker executes, this process records.

The record is the one an inline run leaves (the worker's span tree, usage, cost and terminal status),
plus ``placement``: ``{"target": "pool", "pool", "worker", "pid", "attempts", "reason"}`` (``reason``:
the router's, or ``CALLER_REASON`` when the caller named the pool; ``worker`` and ``pid`` once a worker
had the run: a run refused before any worker took it has neither). A worker lost mid-run
leaves the run ``failed`` with code ``worker_lost``; an ``idempotent`` run is then tried once more, on
whichever worker is free next (a new process, since the lost one is gone), under the same record.

A :class:`PooledShard` sends many runs of one program to one worker as one task (a batch's shard): one
message each way for all of them instead of one per run, and no thread hand-off per run. Each run keeps
its own record, as above.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, WorkerError
from dspex.runtime.run import Durability, RunResult, _Run

if TYPE_CHECKING:
    from dspex.pools.base import WorkerPool
    from dspex.runtime.app import App

MAX_ATTEMPTS_IDEMPOTENT = 2
CALLER_REASON = "pool named by the caller (pool=, --pool, serve --pool)"  # the placement's reason then


def check_crossing(pool: str, program: Any, lm: Any) -> None:
    """Refuse what cannot cross to a pool's worker: a program object, an LM object."""
    if not isinstance(program, str):
        raise ConfigurationError(
            f"a {type(program).__name__} object cannot cross to pool {pool!r}: programs run on a pool by "
            "reference; register it (app.programs.register(name, 'pkg.module:factory')) and run it by name"
        )
    if lm is not None:
        raise ConfigurationError(
            f"lm= cannot cross to pool {pool!r}: its workers use their own LM (the pool's initializer, "
            "else the settings' lm); leave lm= out, or run inline"
        )


class PooledRun:
    """One run of a registered program on a pool (see the module docstring)."""

    def __init__(
        self,
        app: App,
        pool: str,
        name: Any,
        inputs: Mapping[str, Any] | None,
        *,
        lm: Any,
        version_id: str | None,
        variables: Mapping[str, Any] | None,
        durability: Durability,
        idempotent: bool,
        session_id: str | None = None,
        worker: int | None = None,
        reason: str | None = None,
    ) -> None:
        check_crossing(pool, name, lm)
        self.pool: WorkerPool = app.pools.get(pool)
        version = app._cache.version(name, version_id)
        self.name: str = name
        self.version_id: str = version.id
        self.placement: dict[str, Any] = {
            "target": "pool",
            "pool": pool,
            "attempts": 0,
            "reason": reason if reason is not None else CALLER_REASON,
        }
        self.run = _Run(app, name, inputs, None, name, version.id, variables, durability, self.placement)
        self.run.base["session_id"] = session_id
        self.idempotent = idempotent
        self.worker = worker  # a session's turns all go to its worker slot
        self.task: dict[str, Any] = {
            "program": {"name": name, "version_id": version.id},
            "inputs": self.run.inputs,
            "variables": dict(variables) if variables else None,
            "execution_id": self.run.id,
        }
        if self.run.trace is not None:  # the worker's run joins the caller's trace, under the run's span
            self.task["traceparent"] = self.run.trace.context.traceparent

    def set_timeout(self, timeout: float | None) -> None:
        """The run's deadline; the worker gets what is left of it when the task is sent."""
        self.run.set_timeout(timeout)

    def _ready(self) -> None:
        """Before each attempt: the input size limit, what is left of the deadline, the count."""
        self.run._check_size()
        if self.run.deadline is not None:
            self.task["timeout"] = max(0.001, self.run.deadline - time.monotonic())
        self.placement["attempts"] += 1

    def _submit(self, on_event: Callable[[dict[str, Any]], None] | None = None) -> Future[dict[str, Any]]:
        self._ready()
        return self.pool.submit(self.task, worker=self.worker, on_event=on_event)

    def _call(self) -> dict[str, Any]:
        """The attempt's answer, waited for in this thread: a process pool lets this thread run the task on
        an idle worker itself (:meth:`~dspex.pools.pool.Pool.call`); a session's turn goes to its worker."""
        # Only a process pool has call(); looked up, not imported: dspex.pools.pool stays out of App's import.
        call: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self.pool, "call", None)
        if self.worker is None and call is not None:
            self._ready()
            return call(self.task)
        return self._submit().result()

    def submit_stream(self, on_event: Callable[[dict[str, Any]], None]) -> Future[dict[str, Any]]:
        """Send the run as a streamed task: the worker streams it (:class:`~dspex.runtime.stream.RunStream`)
        and ``on_event`` gets each token and step event as JSON, on the pool's thread, before the future's
        answer. A streamed run is not tried again when its worker dies: its consumer has seen tokens."""
        self.task["stream"] = True
        return self._submit(on_event)

    def _again(self, exc: BaseException) -> bool:
        return (
            self.idempotent
            and isinstance(exc, WorkerError)
            and exc.code == "worker_lost"
            and self.placement["attempts"] < MAX_ATTEMPTS_IDEMPOTENT
        )

    def failed(self, exc: BaseException) -> BaseException:
        """Record the run's failure, naming the worker that had it when one had it."""
        if isinstance(exc, WorkerError) and exc.worker is not None:
            self.placement.update(worker=exc.worker, pid=exc.pid)
        return self.run.failed(exc)

    def _adopt(self, answer: dict[str, Any], *, worker_duration: bool = False) -> RunResult:
        self.placement.update(worker=answer["worker"], pid=answer["pid"])
        return self.run.adopt(answer["outcome"], worker_duration=worker_duration)

    def execute(self) -> RunResult:
        """Run on the pool, waiting in this thread."""
        try:
            while True:
                try:
                    answer = self._call()
                except BaseException as exc:
                    if self._again(exc):
                        continue
                    raise self.failed(exc) from exc
                return self._adopt(answer)
        finally:
            self.run.settle()

    async def aexecute(self) -> RunResult:
        """Run on the pool, awaiting the worker without blocking the event loop."""
        try:
            while True:
                future = None
                try:
                    future = self._submit()
                    answer = await asyncio.wrap_future(future)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) and future is not None:
                        future.cancel()  # queued: it never runs; running: its answer is dropped
                    if self._again(exc):
                        continue
                    raise self.failed(exc) from exc
                return self._adopt(answer)
        finally:
            await self.run.asettle()


class PooledShard:
    """Runs of registered programs sent to one worker of a pool (a process or a Ray actor) as one task
    (``"kind": "runs"``).

    Each run is a :class:`PooledRun` and leaves the record it would leave alone, except its duration: the
    worker's measure of the run, since the run waited behind the shard's earlier ones. The worker sends
    the outcomes together, so a worker lost mid-shard fails every run of it (``worker_lost``); the
    idempotent ones are sent once more, as a shard of their own. A run's ``timeout`` counts from when
    the worker starts it. Results come back in the runs' order: a :class:`RunResult`, or the exception
    the run would have raised (already recorded).
    """

    def __init__(self, runs: list[PooledRun]) -> None:
        if not runs:
            raise ConfigurationError("a shard holds at least one run")
        self.runs = runs
        self.pool = runs[0].pool
        self.results: list[RunResult | BaseException | None] = [None] * len(runs)

    def _ready(self, todo: list[int]) -> list[int]:
        """The runs that can go (timeouts set); a run over the input size limit fails here."""
        ready = []
        for i in todo:
            run = self.runs[i]
            try:
                run.run._check_size()
            except Exception as exc:
                self.results[i] = run.run.failed(exc)
                continue
            if run.run.deadline is not None:
                run.task["timeout"] = max(0.001, run.run.deadline - time.monotonic())
            run.placement["attempts"] += 1
            ready.append(i)
        return ready

    def _submit(self, todo: list[int]) -> Future[dict[str, Any]]:
        return self.pool.submit({"kind": "runs", "runs": [self.runs[i].task for i in todo]})

    def _lost(self, todo: list[int], exc: BaseException) -> list[int]:
        """The shard failed as a whole: record each run's failure, except those to send again."""
        again = []
        for i in todo:
            run = self.runs[i]
            if isinstance(exc, Exception) and run._again(exc):
                again.append(i)
            else:
                self.results[i] = run.failed(exc)
        return again

    def _adopt(self, todo: list[int], answer: dict[str, Any]) -> None:
        outcomes = answer["outcome"].get("outcomes") if isinstance(answer.get("outcome"), dict) else None
        if not isinstance(outcomes, list) or len(outcomes) != len(todo):
            broken = WorkerError(
                f"pool {self.pool.name!r}: worker {answer.get('worker')} answered a shard of {len(todo)} runs "
                f"with {len(outcomes) if isinstance(outcomes, list) else 'no'} outcomes"
            )
            for i in todo:
                self.results[i] = self.runs[i].run.failed(broken)
            return
        for i, outcome in zip(todo, outcomes, strict=True):
            try:
                self.results[i] = self.runs[i]._adopt(
                    {"outcome": outcome, "worker": answer["worker"], "pid": answer["pid"]},
                    worker_duration=True,
                )
            except Exception as exc:  # the run's own failure, recorded by adopt: its result
                self.results[i] = exc

    def _finished(self) -> list[RunResult | BaseException]:
        results = [r for r in self.results if r is not None]
        assert len(results) == len(self.runs), "every run of a shard ends with a result or its error"
        return results

    def execute(self) -> list[RunResult | BaseException]:
        """Run the shard on the pool, waiting in this thread."""
        todo = list(range(len(self.runs)))
        try:
            while todo := self._ready(todo):
                try:
                    answer = self._submit(todo).result()
                except BaseException as exc:
                    todo = self._lost(todo, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._adopt(todo, answer)
                break
        finally:
            self.runs[0].run.settle()  # one wait covers every record of the shard
        return self._finished()

    async def aexecute(self) -> list[RunResult | BaseException]:
        """Run the shard on the pool, awaiting the worker without blocking the event loop."""
        todo = list(range(len(self.runs)))
        try:
            while todo := self._ready(todo):
                future = None
                try:
                    future = self._submit(todo)
                    answer = await asyncio.wrap_future(future)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) and future is not None:
                        future.cancel()  # queued: it never runs; running: its answer is dropped
                    todo = self._lost(todo, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._adopt(todo, answer)
                break
        finally:
            await self.runs[0].run.asettle()
        return self._finished()
