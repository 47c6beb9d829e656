"""The worker process of a pool: pre-warmed, it runs tasks it receives as JSON and answers in JSON.

Protocol (one ``multiprocessing`` pipe, each message one JSON object as bytes; nothing is unpickled):

- pool -> worker: ``{"op": "start", "settings": {...}, "env": {...}, "initializer": ...}`` once, then
  ``{"op": "run", "id": ..., "task": {...}}`` per task, and ``{"op": "stop"}``;
- worker -> pool: ``{"op": "ready", "pid", "rss"}`` or ``{"op": "failed", "error"}`` after start-up,
  ``{"op": "hb", "rss", "busy", "oldest"}`` (``busy``: tasks under way; ``oldest``: ``[id, seconds, part]``
  of the one that started first, for the task timeout; ``part``: a shard's run under way) every ``heartbeat_s`` from a thread of its own (so a long task still
  reports its memory), ``{"op": "event", "id", "event"}`` for each token or step of a streamed run
  (a task with ``"stream": true``), and ``{"op": "done", "id", "result", "rss", "runs"}`` per task (``runs``:
  how many runs it held, for the pool's counts and ``max_tasks``).

The start message's ``concurrency`` (the pool's setting) is how many tasks the worker runs at once,
each on a thread of its own, started in the order they arrive; ``done`` messages come in the order tasks
end. With 1 the worker runs one task at a time on its main thread.

A task's ``traceparent`` (W3C) names the caller's run span: the worker's run joins that trace (the
caller exports its spans, from the outcome). A task names its program by reference: ``{"name", "version_id"}`` (the registry, on the same database;
a version id is a content hash, so each is read once per worker). The run executes
as :meth:`App.run` executes it, with a recorder, under ``dspy.context``; the worker records nothing: the
caller's process writes the record from the outcome it sends back. A task of ``"kind": "predict_batch"``
(an evaluation's shard) runs the program on many examples' inputs on threads and returns predictions;
with ``"trace": true`` each example also returns its DSPy trace as JSON steps by predictor name, and a
parse failure its predictor's name, LM response and partial parse; ``"lms"`` gives the candidate's
sampling settings (numbers only, :func:`~dspex.pools.remote.check_sampling`), applied as
``own_lm.copy(**settings)`` to the context LM and to named predictors.
A task of ``"kind": "runs"`` (a shard of a batch: ``{"runs": [task, ...]}``) executes each run as a
single run task executes, one after the other, and returns ``{"outcomes": [...]}`` in the same order:
one message each way for the whole shard (a batch's, or a group of queued runs the pool coalesced).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dspy  # imported at start-up (and by the forkserver), so tasks never pay for it
import orjson

from dspex._heap import freeze_startup_heap
from dspex.runtime.run import _Run

__all__ = ["main", "rss_bytes"]


_process: Any = None  # this process's psutil handle, made once (building one reads /proc/<pid>/stat)
_statm: tuple[int, int] | None = None  # (pid, descriptor of /proc/<pid>/statm), opened once per process
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory, measured on itself.

    On Linux one ``pread`` of ``/proc/<pid>/statm`` on a descriptor kept open (2 us; psutil opens and
    parses the file on every call, 17 us, and every task reports its RSS); elsewhere psutil.
    """
    global _process, _statm
    if _statm is None:  # a forked child starts with None (_forget_statm): no getpid system call per task
        pid = os.getpid()
        try:
            _statm = (pid, os.open(f"/proc/{pid}/statm", os.O_RDONLY))
        except OSError:  # no procfs (macOS): psutil knows the platform's way
            import psutil

            if _process is None or _process.pid != pid:
                _process = psutil.Process()
            return int(_process.memory_info().rss)
    return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE


def _forget_statm() -> None:
    """In a forked child: the inherited descriptor reads the parent's memory; the child opens its own."""
    global _process, _statm
    if _statm is not None:
        with contextlib.suppress(OSError):
            os.close(_statm[1])
    _process, _statm = None, None


os.register_at_fork(after_in_child=_forget_statm)


class _Calls:
    """A DSPy usage tracker that keeps each LM call's usage as ``[lm, usage]`` (JSON)."""

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        from dspex.jsonable import to_jsonable

        self.entries.append([lm, to_jsonable(dict(usage_entry))])


class _Gate:
    """The runs of a worker with ``concurrency`` above 1, on threads: read from the pool, queued, and
    started in the order they came, as many at once as the limit allows.

    Runs waiting on an LM leave the process's CPU idle, so many run at once. Runs that only compute gain
    nothing from running side by side (the GIL lets one thread run Python at a time) and lose to the
    thread switches. So every ``WINDOW_S`` with runs under way, the process's CPU time over the window
    decides: at ``SATURATED`` of a core or more, one fewer run may start (down to 1); below ``ROOM``,
    with runs waiting to start, one more (up to ``most``).

    The threads take turns (leader and followers): one of them reads the pool's next message; when it
    may start that run at once, it hands the reading to another thread and runs it itself, so no thread
    switch stands between a run's arrival and its start. A thread that ends a run takes the next queued
    one itself when the limit allows: at a limit of 1, queued runs follow each other on one thread.
    """

    WINDOW_S = 0.05
    SATURATED = 0.9
    ROOM = 0.75

    def __init__(
        self,
        most: int,
        run: Callable[[dict[str, Any]], None] | None = None,
        read: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        import collections

        self._clock = time.monotonic
        self._cpu = time.process_time
        self._run = run
        self._read = read  # the pool's next run message, or None when it says stop (or is gone)
        self.most = most
        self.limit = most
        self.running = 0
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.closed = False
        self._cv = threading.Condition()
        self._since, self._cpu_since = self._clock(), self._cpu()
        self._threads: list[threading.Thread] = []
        self._reading = False  # a thread waits on the pool for the next message
        self._idle = 0  # threads waiting on the lock's condition
        self._starting = 0  # threads started that have not taken the lock yet
        self._watching = 0  # of them, those waiting out a window for the limit to grow
        self._held = 0  # callers of enter() waiting for the limit

    def _adjust(self) -> None:  # under the lock
        now = self._clock()
        wall = now - self._since
        if wall < self.WINDOW_S:
            return
        cpu = self._cpu()
        used = (cpu - self._cpu_since) / wall
        self._since, self._cpu_since = now, cpu
        if used >= self.SATURATED and self.limit > 1:
            self.limit -= 1
        elif used < self.ROOM and (self.queue or self._held) and self.limit < self.most:
            self.limit += 1
            self._wake()  # one more may start
            if self._held:
                self._cv.notify()

    def _another(self) -> None:  # under the lock
        """Get another thread going: an idle one, else a new one (at most ``most`` run, one reads)."""
        if self._idle or self._starting:  # one starting looks at the queue first thing
            self._cv.notify()
        elif len(self._threads) < self.most + 1:
            thread = threading.Thread(target=self._loop, args=(True,), name="dspex-run", daemon=True)
            self._threads.append(thread)
            self._starting += 1
            thread.start()

    def _wake(self) -> None:  # under the lock
        """With runs queued, a thread to start the next one if the limit allows, else to watch the limit
        for it (one is enough)."""
        if self.queue and (self.running < self.limit or not self._watching):
            self._another()

    def put(self, message: dict[str, Any]) -> None:
        """Queue a run (a gate without ``read``: its runs come from here)."""
        with self._cv:
            self.queue.append(message)
            self._wake()

    def serve(self) -> None:
        """Serve on this thread too until the pool says stop; return once every run has ended."""
        with self._cv:
            self._threads.append(threading.current_thread())
        self._loop()
        self.close()

    def _start(self, message: dict[str, Any]) -> None:  # under the lock, let go while the run runs
        self.running += 1
        self._wake()  # the next queued run, if the limit lets it start beside this one
        self._cv.release()
        try:
            assert self._run is not None, "a gate without a run function only has enter/leave"
            self._run(message)
        finally:
            self._cv.acquire()
            self.running -= 1
            self._adjust()

    def _loop(self, spawned: bool = False) -> None:
        # The lock is let go only while a thread runs a run or reads: a thread that ends a run takes
        # the next before any other thread can.
        with self._cv:
            if spawned:
                self._starting -= 1
            while True:
                if self.queue and self.running < self.limit:
                    self._start(self.queue.popleft())
                    continue
                if self._read is not None and not self._reading and not self.closed:
                    self._reading = True
                    self._cv.release()
                    try:
                        message = self._read()
                    finally:
                        self._cv.acquire()
                        self._reading = False
                    if message is None:
                        self.closed = True
                        self._cv.notify_all()
                    elif self.queue or self.running >= self.limit:
                        self.queue.append(message)  # this thread reads on; it may have to watch
                        self._wake()
                    else:
                        self._another()  # to read while this one runs
                        self._start(message)
                    continue
                if self.closed and not self.queue:
                    self._cv.notify_all()  # the others, waiting for runs that will not come, end too
                    return
                # Nothing to start: wait for a run, or, held back by the limit, look again every window.
                self._idle += 1
                watching = bool(self.queue) and not self._watching
                self._watching += watching
                try:
                    self._cv.wait(self.WINDOW_S if watching else None)
                finally:
                    self._idle -= 1
                    self._watching -= watching
                self._adjust()

    def enter(self) -> None:
        """Wait on the caller's own thread until the limit lets a run start (a Ray actor's runs come on
        Ray's threads); :meth:`leave` when it ends."""
        with self._cv:
            self._held += 1
            try:
                while self.running >= self.limit:
                    self._cv.wait(self.WINDOW_S)
                    self._adjust()
            finally:
                self._held -= 1
            self.running += 1

    def leave(self) -> None:
        with self._cv:
            self.running -= 1
            self._adjust()
            if self._held:
                self._cv.notify()

    def close(self) -> None:
        """Take no more runs: the threads finish every queued one, then end (joined here)."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join()


class _Worker:
    def __init__(self, conn: Any, route: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.conn = conn
        # Without a pipe (a Ray actor's worker), messages go to ``route``: a streamed run's events to the
        # stream that carries them back (``dspex.pools.ray_actor``).
        self.route = route
        self.lock = threading.Lock()
        self.started: dict[int, float] = {}  # a task under way (its message id) -> when it started here
        self.parts: dict[int, int] = {}  # a shard of runs under way -> the index of the run it is on
        self.concurrency = 1  # tasks run at once (the pool's ``concurrency``, from the start message)
        self.stopping = threading.Event()
        self.app: Any = None
        self.versions: dict[str, Any] = {}
        self.batch_executor: Any = None
        self.lock_batch = threading.Lock()
        self.configurations: dict[str, Any] = {}
        self.batch_threads = 0

    def send(self, message: dict[str, Any]) -> None:
        from dspex.jsonable import dumps

        if self.conn is None:
            if self.route is None:
                raise RuntimeError("a worker without a pipe needs a route for its messages")
            self.route(message)
            return
        data = dumps(message).encode()
        with self.lock:
            self.conn.send_bytes(data)

    def heartbeat(self, every_s: float) -> None:
        while not self.stopping.wait(every_s):
            try:
                self.send(
                    {"op": "hb", "rss": rss_bytes(), "busy": len(self.started), "oldest": self.oldest()}
                )
            except (OSError, EOFError):  # the pool is gone: nothing left to report to
                self.stopping.set()
                os._exit(0)

    def start(self, message: dict[str, Any]) -> float:
        os.environ.update(message.get("env") or {})
        from dspex.modules import ToolRegistry
        from dspex.runtime.app import App
        from dspex.settings import Settings

        settings = Settings(**message["settings"])
        if message.get("initializer"):  # operator configuration ([pools.NAME] initializer), never a request
            ToolRegistry(allow_import_paths=True).resolve(message["initializer"], what="pool initializer")()
        # The caller records the run and exports its spans (the task's traceparent names the run's span).
        # The caller records and exports the run, from the span tree this worker sends back.
        self.app = App(settings, record=False, telemetry=False, trace=settings.trace)
        self.concurrency = max(1, int(message.get("concurrency") or 1))
        return float(message.get("heartbeat_s") or 0.5)

    def program(self, ref: dict[str, Any]) -> tuple[Any, str, str]:
        """The registered program ``ref`` names (the version's shared instance: runs call it, a trial's
        configuration is applied to a copy), its name and version id."""
        name, version_id = str(ref["name"]), ref.get("version_id")
        # A version id is a content hash: what it names never changes, so it is read once.
        version = self.versions.get(version_id) if version_id else None
        if version is None:
            version = self.app.programs.resolve(name, version_id)
            if version_id:
                if len(self.versions) >= 1000:
                    self.versions.clear()
                self.versions[version_id] = version
        return self.app.programs.runnable(version), name, version.id

    def execute(self, task: dict[str, Any]) -> dict[str, Any]:
        from dspex.telemetry.context import continue_trace

        # Inside the caller's run span: the run's trace id, and any instrumentation of the worker's own.
        with continue_trace(task.get("traceparent")):
            return self._execute(task)

    def _run(self, task: dict[str, Any]) -> _Run | dict[str, Any]:
        """The task's run under the caller's execution id, or the outcome of a program that cannot load."""
        try:
            program, name, version_id = self.program(task["program"])
        except Exception as exc:  # an unknown program or version: the caller gets its message
            run = _Run(self.app, type(exc).__name__, task.get("inputs"), None, None, None, None)
            return run.outcome(None, run.failed(exc))
        run = _Run(self.app, program, task.get("inputs"), None, name, version_id, task.get("variables"))
        run.id = task.get("execution_id") or run.id
        return run

    def _execute(self, task: dict[str, Any]) -> dict[str, Any]:
        run = self._run(task)
        if isinstance(run, dict):
            return run
        try:
            run.set_timeout(task.get("timeout"))
            result = run.finish(run.execute_sync)
        except BaseException as shown:  # finish recorded it; the outcome carries it to the caller
            if isinstance(shown, KeyboardInterrupt | SystemExit):
                raise
            return run.outcome(None, shown)
        return run.outcome(result, None)

    def runs(self, task: dict[str, Any], task_id: int | None = None) -> dict[str, Any]:
        """A shard of runs (``"kind": "runs"``): each executed as :meth:`execute` executes one (its own
        execution id, trace and timeout, counted from when it starts here), outcomes in order. The task's
        start (``task_id``, what the heartbeat's ``oldest`` reports) moves to each run as it starts, with
        its index: the pool's ``task_timeout_s`` applies to each run, and names the one under way."""
        outcomes = []
        for part, run in enumerate(task["runs"]):
            if task_id is not None:
                with self.lock:
                    self.started[task_id] = time.monotonic()
                    self.parts[task_id] = part
            outcomes.append(self.execute(run))
        return {"outcomes": outcomes}

    def stream(self, task: dict[str, Any], task_id: int) -> dict[str, Any]:
        """A streamed run (``"stream": true``): each token or step event goes to the pool as an
        ``{"op": "event"}`` message as it happens, then the outcome, as :meth:`execute` returns it."""
        import asyncio

        from dspex.telemetry.context import continue_trace

        with continue_trace(task.get("traceparent")):
            return asyncio.run(self._stream(task, task_id))

    async def _stream(self, task: dict[str, Any], task_id: int) -> dict[str, Any]:
        from dspex.runtime.stream import RunFailed, RunFinished, RunStream, StepEvent, TokenEvent

        run = self._run(task)
        if isinstance(run, dict):
            return run
        try:
            run.set_timeout(task.get("timeout"))
            run._check_size()
            validated = run._validated()
        except Exception as exc:
            return run.outcome(None, run.failed(exc))
        outcome: dict[str, Any] | None = None
        async for event in RunStream(run, validated).events():
            if isinstance(event, TokenEvent):
                data: dict[str, Any] = {"type": "token", "field": event.field, "chunk": event.chunk}
                if event.step is not None:
                    data["step"] = event.step
                self.send({"op": "event", "id": task_id, "event": data})
            elif isinstance(event, StepEvent):
                step = {"type": "step", "kind": event.kind, "data": event.data}
                self.send({"op": "event", "id": task_id, "event": step})
            elif isinstance(event, RunFinished):
                outcome = run.outcome(event.result, None)
            elif isinstance(event, RunFailed):
                outcome = run.outcome(None, event.error)
        if outcome is None:  # events() always ends with RunFinished or RunFailed
            raise RuntimeError("the streamed run ended without a final event")
        return outcome

    def configured(self, version_id: str, program: Any, configuration: dict[str, Any]) -> Any:
        """``program`` with an optimizer trial's variable values applied (built once per trial)."""
        from dspex.jsonable import canonical_hash
        from dspex.variables.binding import apply
        from dspex.variables.spacefile import space_from_document

        key = f"{version_id}:{canonical_hash(configuration)}"
        with self.lock_batch:
            cached = self.configurations.get(key)
        if cached is not None:
            return cached
        # Tools and functions by the operator's names only (app.tools), as the job worker resolves them.
        space, bindings = space_from_document(configuration["space"], functions=self.app.tools)
        values = space.validate(configuration["values"])
        built = apply(program, values, bindings, lms=self.app.space_lms(space))
        with self.lock_batch:
            if len(self.configurations) >= 64:
                self.configurations.clear()
            self.configurations[key] = built
        return built

    def with_state(self, version_id: str, program: Any, state: dict[str, Any]) -> Any:
        """``program`` with a DSPy optimizer's candidate state loaded (its predictors' instructions and
        demos, as ``dump_state`` JSON; built once per candidate). The state carries no LM (the caller
        strips it): each predictor keeps the LM this worker gave it."""
        from dspex.jsonable import canonical_hash

        key = f"{version_id}:state:{canonical_hash(state)}"
        with self.lock_batch:
            cached = self.configurations.get(key)
        if cached is not None:
            return cached
        from dspex.variables._paths import copy_program

        # A copy: ``program`` is the version's shared instance (or a trial's configured copy, cached too).
        program = copy_program(program)
        lms = {name: predictor.lm for name, predictor in program.named_predictors()}
        program.load_state(state)
        for name, predictor in program.named_predictors():
            predictor.lm = lms[name]
        with self.lock_batch:
            if len(self.configurations) >= 64:
                self.configurations.clear()
            self.configurations[key] = program
        return program

    def sampling(self, built: str, program: Any, lm: Any, settings: dict[str, Any]) -> tuple[Any, Any]:
        """``program`` (a copy, built once per settings) whose predictors named in ``settings`` sample with
        ``their_lm.copy(**kwargs)``, and the context LM ``lm.copy(**settings["context"])``: a DSPy
        optimizer's candidate LM settings (:func:`~dspex.pools.remote.check_sampling`: numbers only)
        applied to this worker's own LM."""
        from dspex.jsonable import canonical_hash

        context = lm.copy(**settings["context"]) if settings.get("context") else lm
        predictors = settings.get("predictors") or {}
        if not predictors:
            return program, context
        key = f"{built}:lms:{canonical_hash(predictors)}"
        with self.lock_batch:
            cached = self.configurations.get(key)
        if cached is None:
            from dspex.variables._paths import copy_program

            cached = copy_program(program)
            named = dict(cached.named_predictors())
            unknown = sorted(set(predictors) - set(named))
            if unknown:
                raise ValueError(f"LM settings name predictors {unknown} the program does not have")
            for name, kwargs in predictors.items():
                own = named[name].lm if named[name].lm is not None else lm
                named[name].lm = own.copy(**kwargs)
            with self.lock_batch:
                if len(self.configurations) >= 64:
                    self.configurations.clear()
                self.configurations[key] = cached
        return cached, context

    def predict_batch(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run the program on each example's inputs with ``threads`` threads (an evaluation's shard):
        predictions as JSON, or the error of each example; nothing is recorded."""
        from concurrent.futures import ThreadPoolExecutor

        from dspex.jsonable import to_jsonable
        from dspex.pools.remote import check_sampling, trace_steps

        program, _, version_id = self.program(task["program"])
        if task.get("configuration") is not None:
            program = self.configured(version_id, program, task["configuration"])
        if task.get("state") is not None:
            program = self.with_state(version_id, program, task["state"])
        lm = dspy.settings.lm if dspy.settings.lm is not None else self.app.default_lm(program)
        sampling = check_sampling(task.get("lms"))
        if sampling:
            from dspex.jsonable import canonical_hash

            built = canonical_hash([task.get("configuration"), task.get("state")])  # names ``program``
            program, lm = self.sampling(f"{version_id}:{built}", program, lm, sampling)
        traced = bool(task.get("trace"))
        names = {id(p): n for n, p in program.named_predictors()} if traced else {}

        def one(inputs: dict[str, Any]) -> dict[str, Any]:
            started = time.perf_counter()
            calls = _Calls()  # the example's LM calls, replayed into the evaluation's usage by the caller
            trace: dict[str, Any] = {"trace": []} if traced else {}
            try:
                with dspy.context(lm=lm, disable_history=True, usage_tracker=calls, **trace):
                    prediction = to_jsonable(program(**inputs))
                    steps = trace_steps(dspy.settings.trace, names) if traced else None
            except Exception as exc:  # one example's failure is data for the evaluation, as inline
                return {
                    "error": _error(exc, program if traced else None),
                    "ms": (time.perf_counter() - started) * 1000,
                    "usage": calls.entries,
                }
            value = prediction if isinstance(prediction, dict) else {"value": prediction}
            done: dict[str, Any] = {
                "prediction": value,
                "ms": (time.perf_counter() - started) * 1000,
                "usage": calls.entries,
            }
            if traced:
                done["trace"] = steps
            return done

        examples = list(task["examples"])
        threads = max(1, int(task.get("threads") or 1))
        with self.lock_batch:
            if self.batch_threads != threads:  # kept between shards: starting threads per shard is not free
                if self.batch_executor is not None:
                    self.batch_executor.shutdown(wait=False)
                self.batch_executor = ThreadPoolExecutor(threads, thread_name_prefix="dspex-batch")
                self.batch_threads = threads
            executor = self.batch_executor
        return {"results": list(executor.map(one, examples))}

    def serve(self) -> None:
        """Read tasks until told to stop. With ``concurrency`` 1 each runs here, one after the other; with
        more, they run on threads (:class:`_Gate`), started in the order they arrive, so a run waiting on
        its LM leaves the process to the others (as inline runs on threads do). On ``stop`` the runs under
        way and queued end and answer first."""
        if self.concurrency > 1:
            _Gate(self.concurrency, self.task_or_exit, self.next_run).serve()
            return
        while (message := self.next_run()) is not None:
            self.task(message)

    def next_run(self) -> dict[str, Any] | None:
        """The pool's next run message, or None when it says stop (or is gone); an evaluation's shard
        starts on a thread of its own meanwhile (the next shard, already in the pipe, starts on the
        shared executor while this one's last examples finish, so its threads never drain)."""
        while True:
            try:
                message: dict[str, Any] = orjson.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                return None
            op = message.get("op")
            if op == "stop":
                return None
            if op != "run":
                continue
            if message["task"].get("kind") != "predict_batch":
                return message
            threading.Thread(target=self.batch, args=(message,), name="dspex-shard", daemon=True).start()

    def oldest(self) -> list[Any] | None:
        """``[id, seconds, part]``: the task under way that started first here, and how long it has run
        (the pool's task timeout counts from there, not from when the task was sent: it may have waited
        for the gate); ``part``: in a shard of runs, the index of the run under way (it started then),
        else None. None when no task is under way."""
        with self.lock:
            if not self.started:
                return None
            task_id, started = min(self.started.items(), key=lambda item: item[1])
            part = self.parts.get(task_id)
        return [task_id, time.monotonic() - started, part]

    def task(self, message: dict[str, Any]) -> None:
        """Run one task (a run, a streamed run, a shard of runs) and send its ``done`` message."""
        task = message["task"]
        with self.lock:
            self.started[message["id"]] = time.monotonic()
        try:
            if task.get("kind") == "runs":
                result = self.runs(task, message["id"])
            elif task.get("stream"):
                result = self.stream(task, message["id"])
            else:
                result = self.execute(task)
        finally:
            with self.lock:
                self.started.pop(message["id"], None)
                self.parts.pop(message["id"], None)
        runs = len(task["runs"]) if task.get("kind") == "runs" else 1
        self.send({"op": "done", "id": message["id"], "result": result, "rss": rss_bytes(), "runs": runs})

    def task_or_exit(self, message: dict[str, Any]) -> None:
        """:meth:`task` on a runner thread: a failure to answer (the pool gone, a bug) ends the process, as
        it does on the main thread, so the pool sees the worker die and fails or retries its tasks instead
        of waiting for an answer that never comes."""
        try:
            self.task(message)
        except BaseException:
            traceback.print_exc()
            os._exit(1)

    def batch(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.started[message["id"]] = time.monotonic()
        try:
            result = self.predict_batch(message["task"])
        except Exception as exc:  # the program could not even be built: every example fails alike
            error = {"type": type(exc).__name__, "message": str(exc)}
            result = {"results": [{"error": error, "ms": 0.0} for _ in message["task"]["examples"]]}
        finally:
            with self.lock:
                self.started.pop(message["id"], None)
        self.send({"op": "done", "id": message["id"], "result": result, "rss": rss_bytes()})


def _error(exc: Exception, program: Any) -> dict[str, Any]:
    """An example's error as JSON; for a traced call, a parse failure also names the predictor that
    failed (the first whose signature is the error's, as DSPy's ``bootstrap_trace_data`` finds it), with
    the LM's response and what was parsed, so the caller can raise the same error with its own
    predictor's signature."""
    from dspy.utils.exceptions import AdapterParseError

    from dspex.jsonable import to_jsonable

    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if program is not None and isinstance(exc, AdapterParseError):
        name = next((n for n, p in program.named_predictors() if p.signature == exc.signature), None)
        error["parse"] = {
            "predictor": name,
            "adapter": str(exc.adapter_name),
            "lm_response": to_jsonable(exc.lm_response),
            "parsed_result": to_jsonable(exc.parsed_result),
        }
    return error


def main(conn: Any) -> None:
    """A worker's life: start (settings, environment, initializer), report ready, serve until stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pool owner's to handle
    worker = _Worker(conn)
    try:
        message = orjson.loads(conn.recv_bytes())
        heartbeat_s = worker.start(message)
        freeze_startup_heap()  # DSPy, the settings, the initializer's objects: see dspex._heap
    except BaseException:  # start-up failed: say why, then exit
        worker.send({"op": "failed", "error": traceback.format_exc()})
        return
    worker.send({"op": "ready", "pid": os.getpid(), "rss": rss_bytes()})
    threading.Thread(
        target=worker.heartbeat, args=(heartbeat_s,), name="dspex-heartbeat", daemon=True
    ).start()
    try:
        worker.serve()
    finally:
        worker.stopping.set()
