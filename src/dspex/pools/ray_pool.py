"""``RayPool``: a pool whose workers are Ray actors, with the process pool's interface, records and health.

::

    # dspex.toml
    [pools.cluster]
    backend = "ray"        # the ray extra: pip install 'dspex[ray]'
    size = 8               # actors
    actor_cpus = 1.0       # CPUs Ray reserves for each
    task_timeout_s = 120   # a task over it has its actor killed (Ray restarts it); the task fails

    app.run("qa", {"question": "?"}, pool="cluster")                 # recorded by this process
    Evaluator(exact_match, concurrency=64).run(app.pooled("qa", pool="cluster"), devset)

The cluster is ``DSPEX_RAY_ADDRESS`` (``ray_address``) when set, else the one this process already joined
(``ray.init`` by the caller), else a local one started here (and stopped by :meth:`RayPool.close`).

Why Ray actors rather than Ray tasks: a worker must stay warm (DSPy imported, the program version built
and cached, the initializer run once), exactly as a process pool's worker; an actor is that, placed by
Ray on any node. Each actor is a :class:`~dspex.pools.ray_actor.RayWorker` built from the same start
message as a process worker (settings, the pool's ``env``, ``initializer``); programs reach it by
reference (name and version id, read from the shared store), tasks and results are JSON-ready dicts, and
the driver writes every record (with SQLite the store is on the driver's machine; with PostgreSQL any
machine could, but one writer keeps the recording path the process pool's).

Health: Ray restarts an actor that dies (``max_restarts=-1``): the tasks it ran fail with
``WorkerError(code="worker_lost")``, except an evaluation's shards (predicting has no side effects),
which go back to the queue and run again on whichever actor is free (up to ``SHARD_ATTEMPTS``); each
death is counted in ``status().replaced["died"]``. A ping every ``heartbeat_s`` gives each actor's pid,
memory and liveness; a task past ``task_timeout_s`` has its actor killed (``replaced["task_timeout"]``),
and so has an actor silent for ``hung_after_s`` (``replaced["hung"]``; its tasks fail with ``worker_lost``).

Recycling, as the process pool's: each actor measures its own RSS (with every result and ping). An actor
over ``max_rss_mb`` (or close enough that its last task's growth would take it over), past ``max_tasks``
tasks or older than ``ttl_s`` takes no new task, finishes the ones it holds, and is then killed between
tasks; Ray restarts it from the same start message and its new process's first ping counts the recycle
in ``status().replaced`` (``max_rss``, ``max_tasks``, ``ttl``): the pool never shrinks silently. A task that
takes its actor over ``kill_rss_mb`` (default 1.5 x ``max_rss_mb``, seen by a ping) has the actor killed
and fails with ``memory_limit``.

Shards of runs (``"kind": "runs"``, :class:`~dspex.runtime.pooled.PooledShard`, used by ``App.run_many`` and
batches): one task to one actor, each run executed there as alone; the actor's answer says how many runs it
held, and the pool counts each of them (``completed``, ``max_tasks``). A shard's runs are not sent again by
the pool when its actor dies: they fail with ``worker_lost`` and the driver sends the idempotent ones again.

Streamed runs: the actor's :meth:`~dspex.pools.ray_actor.RayWorker.stream` is a Ray streaming generator;
a thread of the pool reads it and hands each event to the task's ``on_event`` before its outcome, as a
process pool's slot does, so a stream on Ray yields the same events and leaves the same record.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson

from dspex.errors import ConfigurationError, WorkerError
from dspex.pools.pool import _MB, PoolStatus, WorkerState, _secrets_revealed, recycle_reason, worker_status
from dspex.settings import PoolSetting, Settings

__all__ = ["SHARD_ATTEMPTS", "RayPool", "import_ray"]

logger = logging.getLogger("dspex.pools.ray")

SHARD_ATTEMPTS = 4  # an evaluation shard is run again on actor death up to this many times in all
START_TIMEOUT_S = 120.0


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigurationError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            f"a pool with backend = 'ray' needs the ray extra: pip install 'dspex[ray]' ({exc})"
        ) from None
    return ray


@dataclass(eq=False)
class _Task:
    payload: dict[str, Any]
    future: Future[dict[str, Any]]
    worker: int | None
    on_event: Callable[[dict[str, Any]], None] | None = None  # a streamed run's token and step events
    attempts: int = 0
    sent: float = 0.0


@dataclass(eq=False)
class _Actor:
    index: int
    name: str
    handle: Any = None
    pid: int | None = None
    state: WorkerState = "starting"
    rss: int | None = None
    rss_before: int | None = None  # after the task before the last: the last task's growth is rss - this
    tasks: int = 0
    draining: str | None = None  # a recycle reason: finish the tasks it holds, take no more, then go
    started: float = 0.0
    last_heartbeat: float | None = None
    oldest_since: float | None = None  # when its oldest run under way started, as its last ping said
    pinging: bool = False
    killed_for: str | None = None  # why the monitor killed the actor (task_timeout), for its failed tasks
    pending: collections.deque[_Task] = field(default_factory=collections.deque)
    inflight: list[_Task] = field(default_factory=list)


class RayPool:
    """A pool of Ray actors; see the module docstring. Thread-safe."""

    def __init__(self, name: str, setting: PoolSetting, settings: Settings) -> None:
        self.name = name
        self.setting = setting
        self.size = setting.size or (os.cpu_count() or 1)
        self.kill_rss_mb = setting.kill_rss_mb or (
            int(setting.max_rss_mb * 1.5) if setting.max_rss_mb is not None else None
        )
        self._settings = settings
        self._ray: Any = None
        self._owns_ray = False
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._actors = [_Actor(i, f"{name}-{i}") for i in range(self.size)]
        self._closed = False
        self._started = False
        self._stop = threading.Event()
        self.completed = 0
        self.failed = 0
        self.replaced: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> RayPool:
        """Join (or start) the cluster and start every actor, waiting until each is ready; an actor that
        cannot start is a ``ConfigurationError`` with its error (and the pool is closed)."""
        if self._started:
            return self
        self._started = True
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            address = self._settings.ray_address
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        start = {
            "op": "start",
            "settings": _secrets_revealed(self._settings.model_dump()),
            "env": dict(self.setting.env),
            "initializer": self.setting.initializer,
            "heartbeat_s": self.setting.heartbeat_s,
            "concurrency": self.setting.concurrency,
            "sys_path": [entry for entry in sys.path if entry],
        }
        actor_class = ray.remote(_actor_class())
        try:
            for actor in self._actors:
                actor.handle = actor_class.options(
                    name=None,
                    num_cpus=self.setting.actor_cpus,
                    # The tasks it runs at once (the pool's concurrency), and a ping.
                    max_concurrency=self.setting.concurrency + 1,
                    max_restarts=-1,  # Ray restarts a dead actor with the same start message
                    max_task_retries=0,  # its task fails: we decide what runs again
                ).remote(start)
            pings = [actor.handle.ping.remote() for actor in self._actors]
            for actor, ping in zip(self._actors, pings, strict=True):
                self._alive(actor, ray.get(ping, timeout=START_TIMEOUT_S))
        except Exception as exc:
            self.close()
            hint = ""
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                cpus = self.size * self.setting.actor_cpus
                hint = (
                    f" (not ready after {START_TIMEOUT_S:.0f} s: the pool asks Ray for {cpus:g} CPUs, size x "
                    f"actor_cpus; the cluster has {ray.cluster_resources().get('CPU', 0):g} in all: lower "
                    "actor_cpus or size, or add nodes)"
                )
            raise ConfigurationError(f"pool {self.name!r}: a Ray actor could not start: {exc}{hint}") from exc
        self._monitor_thread = threading.Thread(target=self._monitor, name=f"{self.name}-ray", daemon=True)
        self._monitor_thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, fail the queued ones, kill the actors (and stop a cluster started here)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = list(self._pending) + [t for a in self._actors for t in (*a.pending, *a.inflight)]
            self._pending.clear()
            for actor in self._actors:
                actor.pending.clear()
                actor.inflight.clear()
        self._stop.set()
        for task in queued:
            if not task.future.done():
                task.future.set_exception(WorkerError(f"pool {self.name!r} closed before the task ran"))
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            if actor.handle is not None:
                with contextlib.suppress(Exception):  # already gone: nothing to kill
                    ray.kill(actor.handle, no_restart=True)
            actor.state = "dead"
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayPool:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def actor(self, index: int) -> Any:
        """Actor ``index``'s Ray handle (for operators' tools and tests: ``ray.kill(pool.actor(0))``)."""
        return self._actors[index].handle

    # -- tasks -----------------------------------------------------------------------------------------
    def submit(
        self,
        payload: dict[str, Any],
        *,
        worker: int | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Future[dict[str, Any]]:
        """As :meth:`dspex.pools.pool.Pool.submit`: ``{"outcome", "worker", "pid"}`` or a WorkerError; a
        task with ``"stream": true`` sends its events to ``on_event`` (on a thread of the pool's) first."""
        if worker is not None and not 0 <= worker < self.size:
            raise ConfigurationError(f"pool {self.name!r} has workers 0..{self.size - 1}, not {worker}")
        task = _Task(payload, Future(), worker, on_event)
        task.future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"pool {self.name!r} is closed")
            (self._actors[worker].pending if worker is not None else self._pending).append(task)
        self._dispatch()
        return task.future

    def status(self) -> PoolStatus:
        now = time.monotonic()
        with self._lock:
            workers = tuple(worker_status(a, now) for a in self._actors)
            queued = len(self._pending) + sum(len(a.pending) for a in self._actors)
        return PoolStatus(
            name=self.name,
            size=self.size,
            workers=workers,
            queued=queued,
            completed=self.completed,
            failed=self.failed,
            replaced=dict(self.replaced),
            healthy=not self._closed and all(w.state in ("idle", "busy") for w in workers),
            last_error=self.last_error,
        )

    # -- dispatch --------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Send queued tasks to actors with room (pinned tasks to their actor), least loaded first."""
        sends: list[tuple[_Actor, _Task]] = []
        # What an actor holds at once: the tasks it runs and the next ones, queued in Ray for it.
        holds = self.setting.concurrency + self.setting.prefetch - 1
        with self._lock:
            if self._closed:
                return
            # starting: until its new process answers a ping; draining: to be recycled once idle
            ready = [a for a in self._actors if a.state not in ("dead", "starting") and a.draining is None]
            for actor in ready:  # its own tasks first
                while len(actor.inflight) < holds and actor.pending:
                    sends.append((actor, self._send_to(actor, actor.pending.popleft())))
            while self._pending:  # then the shared queue, one task at a time to the least loaded actor
                free = [a for a in ready if len(a.inflight) < holds]
                if not free:
                    break
                actor = min(free, key=lambda a: len(a.inflight))
                sends.append((actor, self._send_to(actor, self._pending.popleft())))
        for actor, task in sends:
            if task.payload.get("stream"):
                stream = actor.handle.stream.options(num_returns="streaming").remote(task.payload)
                threading.Thread(
                    target=self._read_stream,
                    args=(actor, task, stream),
                    name=f"{actor.name}-stream",
                    daemon=True,
                ).start()
                continue
            ref = actor.handle.run.remote(task.payload)
            ref.future().add_done_callback(lambda done, a=actor, t=task: self._finished(a, t, done))

    @staticmethod
    def _send_to(actor: _Actor, task: _Task) -> _Task:
        """Count ``task`` in ``actor``'s (under the pool's lock); the caller sends it."""
        task.attempts += 1
        task.sent = time.monotonic()
        actor.inflight.append(task)
        actor.state = "busy"
        return task

    def _finished(self, actor: _Actor, task: _Task, done: Future[Any]) -> None:
        try:
            answer = done.result()
        except BaseException as exc:  # the actor died (or was killed), or Ray could not run the task
            self._lost(actor, task, exc)
        else:
            self._succeeded(actor, task, answer)
        self._dispatch()

    def _read_stream(self, actor: _Actor, task: _Task, stream: Any) -> None:
        """A streamed task's messages, read as the actor yields them: events to ``on_event``, then the
        outcome (a consumer's failure is logged and the run goes on, as on a process pool)."""
        answer: dict[str, Any] | None = None
        try:
            for ref in stream:
                message = orjson.loads(self._ray.get(ref))
                if message["op"] == "done":
                    answer = message
                elif task.on_event is not None:
                    try:
                        task.on_event(message["event"])
                    except Exception:
                        logger.exception(
                            "pool %r: the consumer of a streamed task's events failed", self.name
                        )
            if answer is None:
                raise RuntimeError(f"actor {actor.name}'s stream ended without the run's outcome")
        except BaseException as exc:  # the actor died (or was killed), or the stream failed
            self._lost(actor, task, exc)
        else:
            self._succeeded(actor, task, answer)
        self._dispatch()

    def _succeeded(self, actor: _Actor, task: _Task, answer: dict[str, Any]) -> None:
        recycle = False
        with self._lock:
            if task in actor.inflight:
                actor.inflight.remove(task)
            runs = int(answer.get("runs", 1))  # a shard of runs counts each of them, as on a process pool
            actor.tasks += runs
            actor.rss, actor.pid, actor.last_heartbeat = answer["rss"], answer["pid"], time.monotonic()
            actor.state = "busy" if actor.inflight else "idle"
            self.completed += runs
            if actor.draining is None:
                actor.draining = self._recycle_reason(actor)
            recycle = self._recycle_now(actor)
        if not task.future.done():
            task.future.set_result({"outcome": answer["result"], "worker": actor.name, "pid": answer["pid"]})
        if recycle:
            self._kill(actor)

    # -- recycling -------------------------------------------------------------------------------------
    def _recycle_reason(self, actor: _Actor) -> str | None:
        """Why the actor should be recycled once its tasks are done (or None), as the process pool decides
        (:func:`~dspex.pools.pool.recycle_reason`). Called under the lock."""
        return recycle_reason(self.setting, actor)

    def _recycle_now(self, actor: _Actor) -> bool:
        """Whether a draining actor holds no task any more: then it is marked for killing (its new process's
        ping counts the recycle under its reason). Called under the lock."""
        if actor.draining is None or actor.inflight or actor.killed_for is not None or self._closed:
            return False
        if actor.state in ("dead", "starting"):
            return False
        actor.killed_for, actor.state = actor.draining, "stopping"
        return True

    def _kill(self, actor: _Actor) -> None:
        """Kill the actor's process; Ray starts it again from its start message (``max_restarts=-1``). On a
        thread of its own: ``ray.kill`` called from a result's callback (Ray's thread) never returns."""

        def kill() -> None:
            with contextlib.suppress(Exception):  # gone already: Ray restarts it all the same
                self._ray.kill(actor.handle, no_restart=False)

        threading.Thread(target=kill, name=f"{actor.name}-recycle", daemon=True).start()

    def _lost(self, actor: _Actor, task: _Task, exc: BaseException) -> None:
        """A task whose actor died: a shard goes back to the queue, a run fails with ``worker_lost``. The
        actor takes no task until a ping answers from its new process (which counts the replacement)."""
        ray = self._ray
        died = isinstance(exc, ray.exceptions.RayActorError)  # dead, restarting or unreachable
        with self._lock:
            if task in actor.inflight:
                actor.inflight.remove(task)
            reason = actor.killed_for or "died"
            if died and actor.state != "dead":
                actor.state = "starting"
            again = (
                died
                and task.payload.get("kind") == "predict_batch"
                and task.attempts < SHARD_ATTEMPTS
                and not self._closed
            )
            if again:
                self._pending.appendleft(task)
            else:
                self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        if again or task.future.done():
            return
        failure = functools.partial(WorkerError, worker=actor.name, pid=actor.pid)  # the actor that had it
        if not died:  # Ray could not run the task at all (a bug, or a cluster problem): say what it said
            task.future.set_exception(
                failure(
                    f"actor {actor.name} of pool {self.name!r} could not run the task: {exc}", code="error"
                )
            )
        elif reason == "memory_limit":
            task.future.set_exception(
                failure(
                    f"the task took actor {actor.name} over the pool's memory limit of {self.kill_rss_mb} MB "
                    "(kill_rss_mb); the actor was killed and restarted",
                    code="memory_limit",
                )
            )
        elif reason == "task_timeout":
            task.future.set_exception(
                failure(
                    f"the task ran over the pool's task_timeout_s of {self.setting.task_timeout_s} s; "
                    f"actor {actor.name} was killed and restarted",
                    code="task_timeout",
                )
            )
        else:
            task.future.set_exception(
                failure(f"actor {actor.name} of pool {self.name!r} was lost during the task: {exc}")
            )

    # -- health ----------------------------------------------------------------------------------------
    def _alive(self, actor: _Actor, ping: dict[str, Any]) -> None:
        with self._lock:
            if actor.pid != ping["pid"] and actor.pid is not None:  # a new process: Ray restarted it
                self.replaced[actor.killed_for or "died"] += 1
                actor.killed_for, actor.started = None, time.monotonic()
                actor.tasks, actor.rss_before, actor.draining = 0, None, None
            elif actor.killed_for is not None:  # the answer of the process being killed: not alive for long
                actor.last_heartbeat = time.monotonic()
                return
            actor.pid, actor.rss, actor.last_heartbeat = ping["pid"], ping["rss"], time.monotonic()
            oldest = ping.get("oldest_s")
            actor.oldest_since = None if oldest is None else actor.last_heartbeat - oldest
            if not actor.started:
                actor.started = time.monotonic()
            if actor.state in ("starting", "dead", "stopping"):
                actor.state = "busy" if actor.inflight else "idle"
        self._dispatch()

    def _ping_done(self, actor: _Actor, done: Future[Any]) -> None:
        actor.pinging = False
        try:
            ping = done.result()
        except BaseException:  # dead or restarting: its tasks' own failures say so; it is pinged again
            with self._lock:
                if actor.state != "dead":
                    actor.state = "starting"
            return
        self._alive(actor, ping)

    def _monitor(self) -> None:
        """Ping each actor every ``heartbeat_s``; kill one whose task is over ``task_timeout_s``, or that
        answered nothing for ``hung_after_s`` (Ray restarts it)."""
        every = self.setting.heartbeat_s
        while not self._stop.wait(every):
            now = time.monotonic()
            for actor in self._actors:
                if not actor.pinging and actor.handle is not None:
                    actor.pinging = True
                    ref = actor.handle.ping.remote()
                    ref.future().add_done_callback(lambda done, a=actor: self._ping_done(a, done))
                timeout, limit = self.setting.task_timeout_s, self.kill_rss_mb
                with self._lock:  # decided once per death: the verdict is cleared by its new process's ping
                    # Over the timeout: the oldest task sent, and the oldest run the actor says it has
                    # under way (a task may wait in the actor, behind its concurrency or its CPU gate).
                    since = actor.oldest_since
                    late = (
                        timeout is not None
                        and since is not None
                        and now - since >= timeout
                        and any(now - t.sent >= timeout for t in actor.inflight[:1])
                    )
                    silent = now - (actor.last_heartbeat or actor.started)
                    hung = actor.state in ("idle", "busy") and silent > self.setting.hung_after_s
                    big = bool(actor.inflight) and limit is not None and (actor.rss or 0) > limit * _MB
                    kill = (late or hung or big) and actor.killed_for is None and actor.state != "starting"
                    if kill:
                        actor.killed_for = "task_timeout" if late else "memory_limit" if big else "hung"
                    elif not actor.inflight and actor.state == "idle" and actor.draining is None:
                        actor.draining = self._recycle_reason(actor)  # too old, or grown while idle
                    kill = kill or self._recycle_now(actor)
                if kill:
                    self._kill(actor)  # its tasks (if any) fail; Ray restarts it


def _actor_class() -> type:
    from dspex.pools.ray_actor import RayWorker

    return RayWorker
