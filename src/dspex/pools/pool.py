"""``Pool``: a named set of pre-warmed worker processes that run tasks sent as JSON.

Each worker sits in a *slot* served by one thread of the pool's owner. The slot's thread hands the
worker one task at a time, watches its heartbeats (which carry the worker's own RSS, measured by psutil
in the worker), and replaces the process when it must:

- a worker whose RSS goes over ``max_rss_mb`` while running a task is killed, and the task fails with
  ``WorkerError(code="memory_limit")``; over it between tasks, or past ``max_tasks`` or ``ttl_s``, it is
  stopped gracefully and replaced (a *recycle*);
- a task running past ``task_timeout_s`` has its worker killed; the task fails with ``task_timeout``;
- a worker that dies, or is silent for ``hung_after_s``, is replaced; its task fails with
  ``worker_lost`` (retryable: the caller may run it again elsewhere).

With ``concurrency = 1``, runs waiting in the shared queue go to a worker in groups of up to
``coalesce`` (each worker takes at most its share of the queue): one ``"kind": "runs"`` message each way
for the group, whose answer is handed to each run's future. A worker replaced during a group fails each
of its runs, the one under way (the heartbeat's ``part``) with the cause's code, the others ``worker_lost``.

The pool never shrinks silently: every slot always gets a new process, and :meth:`Pool.status` counts
each replacement with its reason. Why not ``concurrent.futures.ProcessPoolExecutor`` or loky: both hide
which process runs a task (sessions need a task to go to one chosen worker), pickle tasks and results
(ours are JSON), and replace a dead worker by breaking the whole executor (the stdlib) or without saying
which task died (loky); neither measures a worker's memory or recycles it between tasks.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from dspex.errors import ConfigurationError, WorkerError
from dspex.jsonable import dumps
from dspex.settings import PoolSetting, Settings

__all__ = ["Pool", "PoolStatus", "WorkerStatus", "recycle_reason", "worker_status"]

logger = logging.getLogger("dspex.pools")

WorkerState = Literal["starting", "idle", "busy", "stopping", "dead"]
START_TIMEOUT_S = 120.0  # a worker that is not ready by then (imports, initializer) is a failed start
_MB = 1024 * 1024
MONITOR_S = 0.05  # how often the monitor looks at busy workers (timeouts, hangs, memory)


def _secrets_revealed(value: Any) -> Any:
    """Settings as plain JSON values, secrets included: a worker needs the keys its owner has."""
    from pathlib import PurePath

    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _secrets_revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_secrets_revealed(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker slot as :meth:`Pool.status` sees it."""

    name: str
    pid: int | None
    state: WorkerState
    rss_mb: float | None
    tasks: int  # done by the current process
    age_s: float
    heartbeat_age_s: float | None


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool's workers, queue and history of replacements."""

    name: str
    size: int
    workers: tuple[WorkerStatus, ...]
    queued: int
    completed: int
    failed: int
    replaced: dict[str, int]  # reason -> count (died, memory_limit, task_timeout, hung, max_tasks, ttl...)
    healthy: bool
    last_error: str | None
    coalesced: int = 0  # runs sent to a worker in a group of queued runs (``coalesce``)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "queued": self.queued,
            "completed": self.completed,
            "failed": self.failed,
            "replaced": dict(self.replaced),
            "healthy": self.healthy,
            "last_error": self.last_error,
            "coalesced": self.coalesced,
            "workers": [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "state": w.state,
                    "rss_mb": w.rss_mb,
                    "tasks": w.tasks,
                    "age_s": round(w.age_s, 3),
                    "heartbeat_age_s": None if w.heartbeat_age_s is None else round(w.heartbeat_age_s, 3),
                }
                for w in self.workers
            ],
        }
        return data


def worker_status(worker: Any, now: float) -> WorkerStatus:
    """The status of one worker of a pool: a process pool's slot, a Ray pool's actor (the same fields)."""
    return WorkerStatus(
        name=worker.name,
        pid=worker.pid,
        state=worker.state,
        rss_mb=round(worker.rss / _MB, 1) if worker.rss is not None else None,
        tasks=worker.tasks,
        age_s=now - worker.started if worker.started else 0.0,
        heartbeat_age_s=now - worker.last_heartbeat if worker.last_heartbeat is not None else None,
    )


def recycle_reason(setting: PoolSetting, worker: Any) -> str | None:
    """Why a worker (a process pool's slot, a Ray pool's actor: ``tasks``, ``started``, ``rss``,
    ``rss_before``) should be replaced once its tasks are done, or None: too many tasks, too old, or too
    big: over ``max_rss_mb``, or close enough that its last task's growth would take it over. Updates
    ``rss_before`` (the reading the next growth counts from)."""
    if setting.max_tasks is not None and worker.tasks >= setting.max_tasks:
        return "max_tasks"
    if setting.ttl_s is not None and worker.started and time.monotonic() - worker.started > setting.ttl_s:
        return "ttl"
    if setting.max_rss_mb is not None and worker.rss is not None:
        growth = max(0, worker.rss - worker.rss_before) if worker.rss_before is not None else 0
        worker.rss_before = worker.rss
        if worker.rss + growth > setting.max_rss_mb * _MB:
            return "max_rss"
    return None


_task_ids = itertools.count(1)  # next() on a count is atomic under the GIL


@dataclass(eq=False)
class _Task:
    payload: dict[str, Any]
    future: Future[dict[str, Any]]
    worker: int | None = None  # pinned to this slot
    on_event: Callable[[dict[str, Any]], None] | None = None  # a streamed run's token and step events
    id: int = field(default_factory=lambda: next(_task_ids))
    own_thread: bool = False  # an evaluation's shard: its worker starts it on arrival, on a thread of its own
    group: list[_Task] = field(default_factory=list)  # queued runs sent with this one, as one message

    def coalescible(self) -> bool:
        """A plain run from the shared queue: it may go to a worker in a group (``coalesce``)."""
        return (
            self.worker is None
            and self.on_event is None
            and not self.own_thread
            and "kind" not in self.payload
            and not self.payload.get("stream")
        )


@dataclass(eq=False)
class _Slot:
    index: int
    name: str
    pending: collections.deque[_Task] = field(default_factory=collections.deque)  # for this worker only
    process: Any = None
    conn: Any = None
    pid: int | None = None
    state: WorkerState = "starting"
    rss: int | None = None
    rss_before: int | None = None  # after the task before the last: the last task's growth is rss - this
    tasks: int = 0
    # (task id, start, part) of its oldest task under way, as it says (part: a shard's run under way)
    oldest: tuple[int, float, int | None] | None = None
    verdict: _Replace | None = None  # why the monitor killed the worker, for its slot thread
    started: float = 0.0
    last_heartbeat: float | None = None
    thread: threading.Thread | None = None
    # While the slot's thread waits for its worker with room for more tasks, a task queued for it wakes it
    # through this pipe (one byte per wait), so the task goes to the worker at once.
    wake: tuple[int, int] | None = None
    reading: bool = False  # its thread waits on the worker and on ``wake`` (under the pool's lock)
    load: int = 0  # tasks sent to its worker and not yet answered (the monitor watches it while any)
    shards: int = 0  # of them, evaluation shards (each runs its examples on threads of its own)
    room: bool = False  # its worker can take more tasks (ready, not draining, below its holding)
    woken: bool = False  # a byte is in ``wake`` (under the pool's lock)
    draining: str | None = None  # a recycle reason: finish what was sent, then replace the worker
    # The worker's pipe is used by one thread at a time: the slot's own thread (``held``) or a caller that
    # borrowed the idle worker to run its task itself (``lent``, see :meth:`Pool.call`). ``io`` is held
    # exactly while one of them is true; both change under the pool's lock, so taking ``io`` there never waits.
    io: threading.Lock = field(default_factory=threading.Lock)
    held: bool = False
    lent: bool = False
    broken: _Replace | None = None  # a borrower saw the worker die: its thread replaces it


class _Replace(Exception):
    """The slot's process must go: ``reason`` is counted, ``task_code`` fails the task it ran (if any)."""

    def __init__(
        self,
        reason: str,
        task_code: str | None,
        message: str,
        task_id: int | None = None,
        part: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.task_code = task_code
        self.message = message
        self.task_id = task_id  # the task it is about (a timeout's), if one
        self.part = part  # in a group of runs, the one under way then (its index), if known


class Pool:
    """A pool of worker processes; see the module docstring. Thread-safe. ::

    pool = Pool("general", PoolSetting(size=2), settings).start()
    future = pool.submit({"program": {"name": "qa"}, "inputs": {"question": "?"}})
    future.result()["outcome"]          # the run's outcome as the worker reports it (JSON)
    pool.close()
    """

    def __init__(self, name: str, setting: PoolSetting, settings: Settings) -> None:
        self.name = name
        self.setting = setting
        self.size = setting.size or (os.cpu_count() or 1)
        # The hard limit: a task that takes its worker over it is killed (memory_limit).
        self.kill_rss_mb = setting.kill_rss_mb or (
            int(setting.max_rss_mb * 1.5) if setting.max_rss_mb is not None else None
        )
        self._settings = settings
        self._ctx: Any = multiprocessing.get_context(setting.start_method)
        if setting.start_method == "forkserver":
            # Workers fork from a server that imported DSPy and dspex once: a replacement starts in
            # milliseconds instead of paying the imports again. The server then freezes that heap
            # (dspex.pools._forkserver): workers inherit it frozen, and freeze their own start-up cheaply.
            self._ctx.set_forkserver_preload(["dspex.pools.worker", "dspex.pools._forkserver"])
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # slot threads wait here for tasks
        self._turn = itertools.count()  # which idle worker call() tries first (spreads tasks over them)
        self._pending: collections.deque[_Task] = collections.deque()
        self._slots = [_Slot(i, f"{name}-{i}") for i in range(self.size)]
        self._closed = False
        self._started = False
        self.completed = 0
        self.failed = 0
        self.coalesced = 0  # runs sent in groups (coalesce)
        self.replaced: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> Pool:
        """Start every worker and wait until each is ready; a worker that cannot start is a
        ``ConfigurationError`` with its traceback (and the pool is closed)."""
        if self._started:
            return self
        self._started = True
        try:
            for slot in self._slots:
                slot.wake = os.pipe()
                self._spawn(slot)
        except BaseException:
            self.close()
            raise
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._serve, args=(slot,), name=slot.name, daemon=True)
            slot.thread.start()
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"{self.name}-monitor", daemon=True
        )
        self._monitor_thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, fail the queued ones, stop the workers (killing those that do not stop)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            queued = list(self._pending) + [t for s in self._slots for t in s.pending]
            self._pending.clear()
            for slot in self._slots:
                slot.pending.clear()
            self._cv.notify_all()
        for task in queued:
            # A queued task's future is pending (or cancelled: skipped), a requeued one's running.
            if task.future.running() or task.future.set_running_or_notify_cancel():
                task.future.set_exception(WorkerError(f"pool {self.name!r} closed before the task ran"))
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(timeout)
            # A caller running its task on the worker (call()) finishes it first, as a task sent does.
            borrowed = slot.io.acquire(timeout=timeout)
            try:
                self._stop(slot, graceful=True)
            finally:
                if borrowed:
                    slot.io.release()
            if slot.wake is not None and (slot.thread is None or not slot.thread.is_alive()):
                for fd in slot.wake:
                    os.close(fd)
                slot.wake = None

    def __enter__(self) -> Pool:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- tasks -----------------------------------------------------------------------------------------
    def submit(
        self,
        payload: dict[str, Any],
        *,
        worker: int | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Future[dict[str, Any]]:
        """Queue a task (a JSON object the worker understands); ``worker`` pins it to one slot.

        The future's result is ``{"outcome": ..., "worker": name, "pid": pid}``; it fails with
        :class:`~dspex.errors.WorkerError` when the worker could not finish it. ``on_event`` receives the
        events a streamed run's worker sends before its outcome (on the pool's thread: hand them on, do
        not block).
        """
        if worker is not None and not 0 <= worker < self.size:
            raise ConfigurationError(f"pool {self.name!r} has workers 0..{self.size - 1}, not {worker}")
        task = _Task(payload, Future(), worker, on_event, own_thread=payload.get("kind") == "predict_batch")
        with self._cv:
            if self._closed:
                raise ConfigurationError(f"pool {self.name!r} is closed")
            if worker is not None:  # only that slot's thread may take it, so wake them all
                self._slots[worker].pending.append(task)
                self._cv.notify_all()
                slots = [self._slots[worker]]
            else:
                self._pending.append(task)
                if any(slot.lent for slot in self._slots):
                    self._cv.notify_all()  # the thread of a lent worker cannot take it: wake them all
                else:
                    self._cv.notify()
                slots = self._slots
            wake = self._reader(slots, task)
        self._wake(wake)
        return task.future

    def _reader(self, slots: Iterable[_Slot], task: _Task) -> _Slot | None:
        """The least loaded of ``slots`` whose thread waits on its worker, is not woken yet and has room
        for ``task``, marked woken (under the lock): the one to wake (:meth:`_wake`) to take it."""
        waiting = [slot for slot in slots if slot.reading and not slot.woken and self._room_for(slot, task)]
        wake = min(waiting, key=lambda slot: slot.load) if waiting else None
        if wake is not None:
            wake.woken = True
        return wake

    @staticmethod
    def _wake(slot: _Slot | None) -> None:
        """Wake the thread of a slot :meth:`_reader` chose (outside the lock)."""
        if slot is not None and slot.wake is not None:
            # A pool closed meanwhile has closed the pipe, and failed the queued tasks' futures already.
            with contextlib.suppress(OSError):
                os.write(slot.wake[1], b"\0")

    def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run a task from the calling thread and wait for its answer: what ``submit(payload).result()``
        returns, with one thread hand-off less each way.

        With ``concurrency = 1`` and a worker idle, the caller borrows it: it sends the task down the
        worker's pipe and reads the answer itself while the slot's thread stands aside, which saves a
        wake-up of that thread per task, both ways. A worker that dies meanwhile fails the task as a
        submitted one would (``worker_lost``, ``task_timeout``, ``memory_limit``) and its slot's thread
        replaces it; recycling happens between tasks as usual. Otherwise (every worker busy, tasks
        queued already, or workers that run many tasks at once) it is ``submit(payload).result()``: a
        saturated pool queues its tasks, and its slot threads keep each worker's next task in its pipe.
        A borrowed worker is never waited for, so queued tasks and callers are served in order."""
        lend = self.setting.concurrency == 1 and payload.get("kind") != "predict_batch"
        while True:
            slot = self._lend() if lend else None
            if slot is None:
                return self.submit(payload).result()
            answer = self._call_on(slot, payload)
            if answer is not None:
                return answer
            # The worker was gone before it got the task: it never started, so it goes to another one.

    def _lendable(self, slot: _Slot) -> bool:  # under the lock
        return (
            not slot.lent
            and not slot.held
            and slot.state == "idle"
            and slot.process is not None
            and slot.draining is None
            and slot.broken is None
            and not slot.pending
        )

    def _lend(self) -> _Slot | None:
        """An idle worker for :meth:`call`, or None: every worker is busy, or tasks are queued (then the
        task joins the queue, whose slot threads keep each worker's next task in its pipe)."""
        with self._cv:
            if self._closed:
                raise ConfigurationError(f"pool {self.name!r} is closed")
            if self._pending or (slot := self._idle()) is None:
                return None
            return self._lend_to(slot)

    def _idle(self) -> _Slot | None:  # under the lock
        first = next(self._turn)
        for k in range(self.size):
            slot = self._slots[(first + k) % self.size]
            if self._lendable(slot):
                return slot
        return None

    def _lend_to(self, slot: _Slot) -> _Slot:  # under the lock, ``slot`` lendable
        slot.io.acquire()  # free: neither its thread nor a borrower holds it
        slot.lent, slot.state = True, "busy"
        slot.room = False  # the other slots' threads take queued tasks instead of leaving them to it (_fair)
        return slot

    def _call_on(self, slot: _Slot, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Run ``payload`` on the borrowed ``slot``'s worker; None if the worker was gone before it got it."""
        conn, process = slot.conn, slot.process
        task_id = next(_task_ids)
        try:
            conn.send_bytes(dumps({"op": "run", "id": task_id, "task": payload}).encode())
        except (OSError, EOFError):
            self._give_back(slot, _Replace("died", "worker_lost", self._death(slot)))
            return None
        try:
            while True:  # heartbeats may come first: each says the worker lives, and its RSS
                message: dict[str, Any] = orjson.loads(conn.recv_bytes())
                self._note(slot, message)
                if message.get("op") == "done" and message.get("id") == task_id:
                    break
        except (EOFError, OSError):
            process.join(1.0)
            replace = slot.verdict or _Replace("died", "worker_lost", self._death(slot))
            name, pid = slot.name, slot.pid  # before the slot gets its replacement
            self._give_back(slot, replace, failed=1)
            raise WorkerError(
                replace.message, code=replace.task_code or "worker_lost", worker=name, pid=pid
            ) from None
        except BaseException as exc:  # the pipe's state is unknown now: the worker is replaced
            self._give_back(slot, _Replace("error", None, f"{type(exc).__name__}: {exc}"))
            raise
        answer = {"outcome": message["result"], "worker": slot.name, "pid": slot.pid}
        self._give_back(slot, None, completed=message.get("runs", 1))
        return answer

    def _give_back(
        self, slot: _Slot, broken: _Replace | None, *, completed: int = 0, failed: int = 0
    ) -> None:
        """End a borrowing: the worker is free again, or its thread must recycle or replace it first."""
        with self._cv:
            slot.tasks += completed
            self.completed += completed
            self.failed += failed
            slot.lent, slot.state = False, "idle"
            if broken is not None:
                slot.broken = broken
            elif slot.draining is None:
                slot.draining = self._recycle_reason(slot)
            slot.io.release()
            if slot.broken is not None or slot.draining is not None or self._pending or slot.pending:
                self._cv.notify_all()  # its thread has work: replace or recycle it, or take queued tasks

    def status(self) -> PoolStatus:
        now = time.monotonic()
        workers = tuple(worker_status(s, now) for s in self._slots)
        with self._cv:
            queued = len(self._pending) + sum(len(s.pending) for s in self._slots)
        healthy = not self._closed and all(w.state in ("idle", "busy") for w in workers)
        return PoolStatus(
            name=self.name,
            size=self.size,
            workers=workers,
            queued=queued,
            completed=self.completed,
            failed=self.failed,
            replaced=dict(self.replaced),
            healthy=healthy,
            last_error=self.last_error,
            coalesced=self.coalesced,
        )

    # -- one slot ----------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        from dspex.pools import worker as worker_module

        slot.state = "starting"
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=worker_module.main, args=(child,), name=slot.name, daemon=True)
        process.start()
        child.close()
        slot.process, slot.conn, slot.pid = process, parent, process.pid
        slot.tasks, slot.rss, slot.rss_before, slot.verdict = 0, None, None, None
        slot.oldest = None
        slot.started, slot.last_heartbeat = time.monotonic(), None
        start = {
            "op": "start",
            "settings": _secrets_revealed(self._settings.model_dump()),
            # The worker sees this process's environment as it is now (a forkserver holds the one it
            # started with), then the pool's own variables.
            "env": {**os.environ, **self.setting.env},
            "initializer": self.setting.initializer,
            "heartbeat_s": self.setting.heartbeat_s,
            "concurrency": self.setting.concurrency,
        }
        try:
            parent.send_bytes(dumps(start).encode())
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if parent.poll(0.05):
                    message = orjson.loads(parent.recv_bytes())
                    if message["op"] == "ready":
                        slot.rss = slot.rss_before = message["rss"]
                        slot.last_heartbeat, slot.state = time.monotonic(), "idle"
                        return
                    if message["op"] == "failed":
                        raise ConfigurationError(
                            f"pool {self.name!r}: worker {slot.name} could not start:\n{message['error']}"
                        )
                elif not process.is_alive():
                    raise ConfigurationError(
                        f"pool {self.name!r}: worker {slot.name} exited with code {process.exitcode} "
                        "while starting (see its stderr above)"
                    )
                elif time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"pool {self.name!r}: worker {slot.name} was not ready after {START_TIMEOUT_S:.0f} s"
                    )
        except (EOFError, OSError) as exc:
            self._stop(slot, graceful=False)
            raise ConfigurationError(
                f"pool {self.name!r}: worker {slot.name} closed its pipe while starting "
                f"(exit code {process.exitcode})"
            ) from exc
        except BaseException:
            self._stop(slot, graceful=False)
            raise

    def _stop(self, slot: _Slot, *, graceful: bool) -> None:
        process, conn = slot.process, slot.conn
        slot.process = slot.conn = None
        slot.state = "dead"
        if process is None:
            return
        if graceful and process.is_alive():
            slot.state = "stopping"
            with contextlib.suppress(OSError, EOFError):  # already gone: joined (or killed) below
                conn.send_bytes(b'{"op":"stop"}')
            process.join(5.0)
        if process.is_alive():
            process.kill()
        process.join(5.0)
        conn.close()
        slot.state = "dead"

    def _replace(self, slot: _Slot, reason: str, *, graceful: bool) -> None:
        """Put a new process in the slot, retrying a failing start (the pool never shrinks silently)."""
        self._stop(slot, graceful=graceful)
        self.replaced[reason] += 1
        delay = 0.1
        while not self._closed:
            try:
                self._spawn(slot)
                return
            except ConfigurationError as exc:
                self.last_error = str(exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _take(self, slot: _Slot, wait: bool) -> _Task | None:
        """The slot's next task (its pinned ones first); waits up to one heartbeat period if ``wait``,
        letting go of the worker meanwhile (a caller may borrow it, :meth:`call`). Returns with the
        worker held (``slot.held``) unless a caller has it."""
        with self._cv:
            if slot.lent:  # the caller that has it wakes this thread when it gives it back with work here
                self._cv.wait(self.setting.heartbeat_s)
            elif wait and not (slot.pending or self._pending or self._closed or slot.broken or slot.draining):
                self._let_go(slot)
                self._cv.wait(self.setting.heartbeat_s)
            if slot.lent:
                return None
            if not slot.held:
                slot.io.acquire()  # free: taken and given back under this lock
                slot.held = True
            queue = self._queue_for(slot)
            if queue is None:
                return None
            task = queue.popleft()
            slot.load += 1  # what other slots' threads see (_fair) at once; track() counts it again once sent
            slot.shards += task.own_thread
            # Taking it may have made another slot the fair one for what is left: a slot whose thread
            # waits on its worker was woken for one task only, and may have found the queue unfair to it
            # (this slot held fewer then). Without this, a worker could idle with tasks queued until its
            # next message (an evaluation's second shard went out ~140 ms late).
            other = (
                self._reader((s for s in self._slots if s is not slot), queue[0])
                if queue is self._pending and queue
                else None
            )
        self._wake(other)
        return task

    def _let_go(self, slot: _Slot) -> None:
        """The slot's thread lets go of its worker (under the lock): a caller may borrow it meanwhile."""
        if slot.held:
            slot.held = False
            slot.io.release()

    def _queue_for(self, slot: _Slot) -> collections.deque[_Task] | None:
        """The queue whose next task ``slot`` may take now (under the lock): its pinned ones first, then the
        shared queue if no other worker holds fewer tasks; None if neither."""
        if slot.lent or slot.broken is not None or slot.draining is not None:
            return None  # a caller has the worker, or it must be replaced or recycled first
        if slot.pending and self._room_for(slot, slot.pending[0]):
            return slot.pending
        if self._pending and self._fair(slot) and self._room_for(slot, self._pending[0]):
            return self._pending
        return None

    def _room_for(self, slot: _Slot, task: _Task) -> bool:
        """An evaluation's shard runs many examples at once on its own threads: a worker holds at most
        ``prefetch`` of them (the one it runs and the next), as it held any task before concurrency."""
        return not task.own_thread or slot.shards < self.setting.prefetch

    def _fair(self, slot: _Slot) -> bool:
        """Whether ``slot`` may take a task of the shared queue: no other worker that can take one holds
        fewer tasks, so tasks spread over the workers instead of filling the first one that asks."""
        return not any(
            other.room and other.load < slot.load and other.state in ("idle", "busy")
            for other in self._slots
            if other is not slot
        )

    def _coalesce(self, lead: _Task, most: int) -> list[_Task]:
        """Runs queued behind ``lead`` to send with it as one message (``coalesce``): the plain runs at the
        head of the shared queue, at most ``most`` and at most this worker's share of the queue, so the
        other workers still find runs to take."""
        group: list[_Task] = []
        with self._cv:
            share = min(most, len(self._pending) // self.size)
            while len(group) < share and self._pending and self._pending[0].coalescible():
                task = self._pending.popleft()
                if task.future.running() or task.future.set_running_or_notify_cancel():
                    group.append(task)  # else it was cancelled while queued: it never runs
        return group

    def _answer(self, slot: _Slot, task: _Task, result: Any) -> None:
        """Hand a task's answer to its future, and a group's to each of its runs' futures."""
        if not task.group:
            task.future.set_result({"outcome": result, "worker": slot.name, "pid": slot.pid})
            return
        members = [task, *task.group]
        outcomes = result.get("outcomes") if isinstance(result, dict) else None
        if not isinstance(outcomes, list) or len(outcomes) != len(members):
            broken = WorkerError(
                f"pool {self.name!r}: worker {slot.name} answered a group of {len(members)} runs with "
                f"{len(outcomes) if isinstance(outcomes, list) else 'no'} outcomes",
                code="error",
                worker=slot.name,
                pid=slot.pid,
            )
            for member in members:
                member.future.set_exception(broken)
            return
        for member, outcome in zip(members, outcomes, strict=True):
            member.future.set_result({"outcome": outcome, "worker": slot.name, "pid": slot.pid})

    def _requeue(self, tasks: list[_Task]) -> None:
        """Tasks sent to a worker that never started them go back to the front of their queue (a group's
        runs each in its place)."""
        tasks = [member for task in tasks for member in (task, *task.group)]
        for task in tasks:
            task.group = []
        with self._cv:
            for task in reversed(tasks):
                queue = self._slots[task.worker].pending if task.worker is not None else self._pending
                queue.appendleft(task)
            self._cv.notify_all()

    def _begun(self, inflight: collections.deque[_Task]) -> list[_Task]:
        """The tasks the worker may have started, oldest first: it starts tasks in the order they were
        sent, ``concurrency`` at a time (an evaluation's shard at once, on a thread of its own), and every
        answer it sent before dying has been read."""
        begun: list[_Task] = []
        runs = 0
        for task in inflight:
            if not task.own_thread:
                if runs == self.setting.concurrency:
                    continue
                runs += 1
            begun.append(task)
        return begun

    def _serve(self, slot: _Slot) -> None:
        """Feed the slot's worker up to ``concurrency + prefetch - 1`` tasks at a time: those it runs at
        once and the next ones, waiting in its pipe, so the worker never idles on this process. Replace
        it when it must; then the tasks it may have started fail, and the others go back to the queue."""
        try:
            self._serve_slot(slot)
        finally:
            with self._cv:
                self._let_go(slot)

    def _serve_slot(self, slot: _Slot) -> None:
        inflight: collections.deque[_Task] = collections.deque()
        holds = self.setting.concurrency + self.setting.prefetch - 1
        coalesce = self.setting.coalesce if self.setting.concurrency == 1 else 1

        def track() -> None:  # what other slots' threads see of this one (_fair)
            slot.load = len(inflight)
            slot.shards = sum(1 for task in inflight if task.own_thread)
            slot.room = (
                slot.draining is None and slot.process is not None and slot.load < holds and not slot.lent
            )

        while True:
            track()
            try:
                if slot.process is None:
                    if self._closed:
                        return
                    self._hold(slot)
                    self._replace(slot, "start_failed", graceful=False)
                    continue
                while slot.draining is None and len(inflight) < holds and not self._closed:
                    task = self._take(slot, wait=not inflight)
                    if task is None:
                        break
                    # A requeued task (sent to a worker that died before starting it) is running already.
                    if not task.future.running() and not task.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued
                    payload = task.payload
                    if coalesce > 1 and task.coalescible():
                        task.group = self._coalesce(task, coalesce - 1)
                        if task.group:
                            self.coalesced += 1 + len(task.group)
                            payload = {
                                "kind": "runs",
                                "runs": [task.payload, *(t.payload for t in task.group)],
                            }
                    try:
                        self._send(slot, {"op": "run", "id": task.id, "task": payload})
                    except _Replace:
                        self._requeue([task])  # the worker was gone before it got the task: run it elsewhere
                        raise
                    inflight.append(task)
                    track()
                if not inflight:
                    if self._closed:
                        return
                    if not slot.held:
                        continue  # a caller has the worker (call()): it gives it back, then this thread may
                    if slot.broken is not None:  # the worker died under a caller's task
                        broken, slot.broken = slot.broken, None
                        raise broken
                    if slot.draining is not None:
                        self._replace(slot, slot.draining, graceful=True)
                        slot.draining = None
                        continue
                    while self._receive(slot, 0) is not None:
                        pass
                    self._watch(slot)
                    slot.draining = self._recycle_reason(slot)
                    continue
                slot.state = "busy"
                if slot.draining is None and len(inflight) < holds and not self._woken_by_task(slot):
                    continue  # a task came for the worker, which has room for it: send it first
                message = self._read(slot)  # blocks: the monitor thread kills a worker that must go
                op = message.get("op")
                if op == "event":
                    self._event(inflight, message)
                    continue
                done = message.get("id") if op == "done" else None
                task = next((t for t in inflight if t.id == done), None) if done is not None else None
                if task is not None:  # tasks run side by side finish in any order
                    inflight.remove(task)
                    track()
                    runs = message.get("runs", 1)  # a shard of runs counts each of them
                    slot.tasks += runs
                    self.completed += runs
                    self._answer(slot, task, message["result"])
                    slot.state = "busy" if inflight else "idle"
                    slot.draining = slot.draining or self._recycle_reason(slot)
            except _Replace as replace:
                self._hold(slot)
                if inflight:
                    begun = self._begun(inflight)
                    unstarted = [task for task in inflight if task not in begun]
                    inflight.clear()
                    track()
                    self._fail_begun(slot, begun, replace)
                    self._requeue(unstarted)
                slot.draining = None
                if not self._closed:
                    self._replace(slot, replace.reason, graceful=False)
                else:
                    self._stop(slot, graceful=False)
            except Exception as exc:  # a bug here must not leave the slot without a thread: say it, go on
                logger.exception("pool %r: slot %s failed; its worker is replaced", self.name, slot.name)
                self.last_error = f"{type(exc).__name__}: {exc}"
                for task in inflight:
                    for member in (task, *task.group):
                        if not member.future.done():
                            self.failed += 1
                            member.future.set_exception(WorkerError(f"pool {self.name!r} failed: {exc}"))
                inflight.clear()
                slot.draining = None
                self._hold(slot)
                track()
                if self._closed:
                    self._stop(slot, graceful=False)
                    return
                self._replace(slot, "error", graceful=False)

    def _hold(self, slot: _Slot) -> None:
        """The slot's thread takes its worker back (to replace it), waiting for a caller that has it."""
        with self._cv:
            while slot.lent:
                self._cv.wait(self.setting.heartbeat_s)
            if not slot.held:
                slot.io.acquire()
                slot.held = True

    def _fail_begun(self, slot: _Slot, begun: list[_Task], replace: _Replace) -> None:
        """Fail the tasks a replaced worker may have started. A task timeout is the task the worker said
        had run longest (the others were lost with the worker); memory cannot be told apart between tasks
        run side by side, so each of them fails with ``memory_limit``. In a group of runs, the run under
        way (as the worker last said, else the first) takes the cause; the group's others were lost with
        the worker (``worker_lost``: those done had not answered yet, and the rest may have started)."""
        late = next((t for t in begun if t.id == replace.task_id), begun[0] if begun else None)
        for task in begun:
            code, message = replace.task_code or "worker_lost", replace.message
            if replace.reason == "task_timeout" and task is not late:
                code = "worker_lost"
                message = f"worker {slot.name} was killed for another task's timeout (task_timeout_s) during the task"
            elif replace.reason == "memory_limit" and len(begun) > 1:
                message += f" (it ran {len(begun)} tasks at once; with concurrency = 1 each task's memory is its own)"
            members = [task, *task.group]
            cause = (
                replace.part
                if task is late and replace.part is not None and replace.part < len(members)
                else 0
            )
            for index, member in enumerate(members):
                self.failed += 1
                if index == cause:
                    error = WorkerError(message, code=code, worker=slot.name, pid=slot.pid)
                else:
                    error = WorkerError(
                        f"worker {slot.name} of pool {self.name!r} was replaced ({replace.reason}) during the "
                        f"group of {len(members)} queued runs this run was sent in (coalesce); its answer was lost",
                        worker=slot.name,
                        pid=slot.pid,
                    )
                member.future.set_exception(error)

    def _event(self, inflight: collections.deque[_Task], message: dict[str, Any]) -> None:
        """Hand a streamed run's event to its task's ``on_event``; a consumer's failure is logged, and
        the run goes on (its outcome still ends the record)."""
        task = next((t for t in inflight if t.id == message.get("id")), None)
        if task is None or task.on_event is None:
            return
        try:
            task.on_event(message["event"])
        except Exception:
            logger.exception("pool %r: the consumer of task %s's events failed", self.name, task.id)

    def _send(self, slot: _Slot, message: dict[str, Any]) -> None:
        try:
            slot.conn.send_bytes(dumps(message).encode())
        except (OSError, EOFError):
            raise _Replace("died", "worker_lost", self._death(slot)) from None

    def _woken_by_task(self, slot: _Slot) -> bool:
        """Wait until the worker has a message (True) or a task is queued for it (False)."""
        from multiprocessing.connection import wait

        assert slot.wake is not None
        with self._cv:
            if self._queue_for(slot) is not None:
                return False
            slot.reading = True
        try:
            ready = wait([slot.conn, slot.wake[0]])
        finally:
            with self._cv:
                slot.reading = False
                if slot.woken:
                    os.read(slot.wake[0], 64)
                    slot.woken = False
        return slot.conn in ready

    def _read(self, slot: _Slot) -> dict[str, Any]:
        """The worker's next message, waiting for it; its death (or the monitor's kill) is a _Replace."""
        try:
            message: dict[str, Any] = orjson.loads(slot.conn.recv_bytes())
        except (EOFError, OSError):
            slot.process.join(1.0)
            raise slot.verdict or _Replace("died", "worker_lost", self._death(slot)) from None
        self._note(slot, message)
        return message

    def _monitor(self) -> None:
        """Every ``MONITOR_S``: kill the worker of a busy slot that is over its task timeout, silent for
        ``hung_after_s`` or over ``kill_rss_mb``; its slot thread, reading, sees the pipe close and the
        verdict. (Slot threads block on reads instead of polling: one select less per message.)"""
        period = min(MONITOR_S, self.setting.heartbeat_s)
        while not self._closed:
            time.sleep(period)
            for slot in self._slots:
                process = slot.process
                if not (slot.load or slot.lent) or process is None or slot.verdict is not None:
                    continue
                verdict = self._verdict(slot)
                if verdict is not None:
                    slot.verdict = verdict
                    with contextlib.suppress(OSError, ValueError):  # exited meanwhile: EOF says so
                        process.kill()

    def _verdict(self, slot: _Slot) -> _Replace | None:
        now = time.monotonic()
        timeout = self.setting.task_timeout_s
        oldest = slot.oldest  # as the worker last said: a task may wait in it before it starts
        if timeout is not None and oldest is not None and now - oldest[1] >= timeout:
            return _Replace(
                "task_timeout",
                "task_timeout",
                f"the task ran over the pool's task_timeout_s of {timeout} s; worker {slot.name} was replaced",
                task_id=oldest[0],
                part=oldest[2],
            )
        silent = now - (slot.last_heartbeat or slot.started)
        if silent > self.setting.hung_after_s:
            return _Replace(
                "hung",
                "worker_lost",
                f"worker {slot.name} (pid {slot.pid}) sent no heartbeat for {silent:.1f} s",
            )
        limit = self.kill_rss_mb
        if limit is not None and slot.rss is not None and slot.rss > limit * _MB:
            return _Replace(
                "memory_limit",
                "memory_limit",
                f"the task took worker {slot.name} to {slot.rss / _MB:.0f} MB, over the pool's memory limit of "
                f"{limit} MB (kill_rss_mb); the worker was replaced",
                part=oldest[2] if oldest is not None else None,
            )
        return None

    def _receive(self, slot: _Slot, timeout: float) -> dict[str, Any] | None:
        """One message from the worker, or None after ``timeout``; heartbeats are applied here."""
        try:
            if not slot.conn.poll(timeout):
                return None
            message: dict[str, Any] = orjson.loads(slot.conn.recv_bytes())
        except (EOFError, OSError):
            slot.process.join(1.0)
            raise _Replace("died", "worker_lost", self._death(slot)) from None
        self._note(slot, message)
        return message

    @staticmethod
    def _note(slot: _Slot, message: dict[str, Any]) -> None:
        """What any message of the worker says of it: alive now, its RSS, its oldest task under way."""
        if "rss" in message:
            slot.rss = message["rss"]
        slot.last_heartbeat = now = time.monotonic()
        if message.get("op") == "hb":
            oldest = message.get("oldest")
            slot.oldest = (
                (oldest[0], now - oldest[1], oldest[2] if len(oldest) > 2 else None) if oldest else None
            )
        elif slot.oldest is not None and message.get("id") == slot.oldest[0] and message.get("op") == "done":
            slot.oldest = None  # until the next heartbeat says which task is the oldest now

    def _death(self, slot: _Slot) -> str:
        code = slot.process.exitcode if slot.process is not None else None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"worker {slot.name} (pid {slot.pid}) of pool {self.name!r} died ({how}) during the task"

    def _watch(self, slot: _Slot) -> None:
        """Raise :class:`_Replace` when an idle slot's worker is dead or hung."""
        if not slot.process.is_alive():
            raise _Replace("died", "worker_lost", self._death(slot))
        silent = time.monotonic() - (slot.last_heartbeat or slot.started)
        if silent > self.setting.hung_after_s:
            raise _Replace(
                "hung",
                "worker_lost",
                f"worker {slot.name} (pid {slot.pid}) sent no heartbeat for {silent:.1f} s",
            )

    def _recycle_reason(self, slot: _Slot) -> str | None:
        return recycle_reason(self.setting, slot)
