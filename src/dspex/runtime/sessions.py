"""Sessions: state carried across runs of one program (conversation history, variables, metrics).

::

    session = app.sessions.create("chat", variables={"temperature": 0.2})
    app.sessions.run(session.id, {"question": "Where is Paris?"})
    app.sessions.run(session.id, {"question": "And its river?"}, pool="general")   # sees turn one
    app.sessions.get(session.id).history                # [{"inputs", "outputs", "execution_id"}, ...]

- **History.** A program that takes a ``dspy.History`` input (a ``forward`` parameter annotated
  ``dspy.History`` or ``dspy.History | None``, or a signature input field of such a type) gets the
  session's turns as that input,
  each turn one message ``{**inputs, **outputs}``, as DSPy's conversation tutorial builds it.
- **Persistence.** After each turn the session (history, metrics, expiry) is saved in the store before
  the call returns, on top of the state the turn read (a turn saved by someone else meanwhile is a
  ``SessionConflict``). The state lives in the store, not in a worker: a turn on a pool carries it to
  the worker, so when the session's worker dies, the next turn runs on its replacement with the full
  history.
- **Affinity.** On a pool, every turn of a session goes to one worker slot (chosen when the session first
  runs there). Turns of one session never interleave, in one process or several: a turn holds the session
  in the store (``busy_by``/``busy_until``, a lease of ``session_lease_s`` that a dead process's turn lets
  lapse) and the next waits up to ``session_wait_s`` (then :class:`SessionBusy`). A live turn renews its
  lease every ``session_lease_s / 3`` (one thread per App renews every turn it holds), so a turn longer
  than the lease keeps its session; only a process that stopped renewing loses it.
- **Expiry.** A session idle for ``ttl_s`` (default ``settings.session_ttl_s``) is gone: reading or running
  it is a :class:`SessionNotFound`; :meth:`Sessions.prune` deletes expired rows.
- **Ownership.** ``owner`` is recorded at creation; :meth:`Sessions.get` with an ``owner`` treats other
  owners' sessions as not found (the API passes the caller's key; admins pass None).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
import typing
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError
from dspex.runtime.pooled import PooledRun
from dspex.runtime.run import Durability, RunResult, _Run, check_durability
from dspex.store.executions import current_runner

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.programs import ProgramVersion
    from dspex.store.sessions import SessionRecord, SessionRepository

__all__ = ["SessionBusy", "SessionNotFound", "Sessions"]

logger = logging.getLogger("dspex.sessions")

HOLD_POLL_S = 0.05  # how often a turn looks again at a session another process holds


class SessionNotFound(ConfigurationError):
    """No such session for this caller, or it expired."""

    code = "session_not_found"


class SessionBusy(ConfigurationError):
    """The session's previous turn (in this process or another) did not end within ``session_wait_s``."""

    code = "session_busy"


def history_field(program: Any) -> str | None:
    """The input of ``program`` that takes a ``dspy.History`` (``dspy.History``, or a union holding it
    such as ``dspy.History | None``), or None."""
    from dspex.modules._interface import ForwardParameters, input_interface

    interface = input_interface(program)
    if isinstance(interface, ForwardParameters):
        for parameter in interface.parameters:
            if _takes_history(parameter.annotation):
                return parameter.name
        return None
    if interface is not None:
        for name, field in interface.input_fields.items():
            if _takes_history(field.annotation):
                return str(name)
    return None


def _takes_history(annotation: Any) -> bool:
    import dspy

    return annotation is dspy.History or any(arg is dspy.History for arg in typing.get_args(annotation))


class _Leases:
    """Renews the store leases of the turns this process holds, from one thread, every ``lease_s / 3``.

    The thread starts with the first held turn and ends once none is held. A renewal the store refuses
    (the lease lapsed and another process took the session: this process was stalled longer than the
    lease) is logged and dropped: the turn goes on, and its save is refused if the other turn saved first
    (``SessionConflict``). A renewal that fails (the database is unreachable) is logged and tried again
    at the next period.
    """

    def __init__(self, repository: SessionRepository, holder: str, lease_s: float) -> None:
        self.repository = repository
        self.holder = holder
        self.lease_s = lease_s
        self.period = lease_s / 3
        self._held: collections.Counter[str] = collections.Counter()  # session -> turns held (one usually)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self.renewals = 0  # renewals the store accepted (for tests and diagnostics)

    @contextlib.contextmanager
    def held(self, session_id: str) -> Iterator[None]:
        """Renew ``session_id``'s lease while the block runs (the caller holds it already)."""
        with self._cv:
            self._held[session_id] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, name="dspex-session-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cv:
                self._held[session_id] -= 1
                if self._held[session_id] <= 0:
                    del self._held[session_id]
                self._cv.notify_all()

    def _renew(self) -> None:
        next_at: dict[str, float] = {}
        while True:
            with self._cv:
                if not self._held:
                    self._thread = None
                    return
                now = time.monotonic()
                for session_id in self._held:
                    next_at.setdefault(session_id, now + self.period)
                for session_id in list(next_at):
                    if session_id not in self._held:
                        del next_at[session_id]
                due = [sid for sid, at in next_at.items() if at <= now]
                if not due:
                    self._cv.wait(max(0.0, min(next_at.values()) - now))
                    continue
            for session_id in due:
                next_at[session_id] = time.monotonic() + self.period
                try:
                    kept = self.repository.hold(session_id, self.holder, self.lease_s)
                except Exception as exc:  # the database is unreachable: the next period tries again
                    logger.warning("renewing the lease of session %s failed: %s", session_id, exc)
                    continue
                if kept:
                    self.renewals += 1
                    continue
                logger.warning(
                    "session %s: its turn outlived its lease and another process took the session; the "
                    "turn's save will be refused if that turn saves first",
                    session_id,
                )
                with self._cv:
                    self._held.pop(session_id, None)
                next_at.pop(session_id, None)


class Sessions:
    """The sessions of an App's store (see the module docstring)."""

    def __init__(self, app: App, repository: SessionRepository) -> None:
        self.app = app
        self.repository = repository
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._pins: dict[tuple[str, str], int] = {}  # (pool, session) -> worker slot
        self._next_slot = itertools.count()
        self._history_fields: dict[str, str | None] = {}  # version id -> its history input
        self._holder = f"{current_runner()}:{uuid.uuid4().hex[:8]}"  # this process, in busy_by
        self._leases = _Leases(repository, self._holder, app.settings.session_lease_s)

    # -- the records ---------------------------------------------------------------------------------
    def create(
        self,
        program: str,
        *,
        variables: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
        owner: str = "local",
    ) -> SessionRecord:
        """A new session of registered program ``program`` (checked to exist)."""
        self.app.programs.get(program)
        ttl = ttl_s if ttl_s is not None else self.app.settings.session_ttl_s
        if ttl <= 0:
            raise ConfigurationError(f"a session's ttl_s is a number of seconds > 0, got {ttl}")
        return self.repository.create(program, owner=owner, ttl_s=ttl, variables=variables)

    def get(self, session_id: str, *, owner: str | None = None) -> SessionRecord:
        """The session; :class:`SessionNotFound` when unknown, expired, or ``owner``'s it is not."""
        record = self.repository.get(session_id)
        if record is None or (owner is not None and record.owner != owner):
            raise SessionNotFound(f"unknown session {session_id!r}")
        if record.expired():
            raise SessionNotFound(
                f"session {session_id!r} expired at {record.expires_at.isoformat()} "
                f"(idle for more than {record.ttl_s:g} s); start a new one"
            )
        return record

    def list(self, *, owner: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Live sessions, most recently used first (``owner``'s only when given)."""
        return [r for r in self.repository.find(owner=owner, limit=limit) if not r.expired()]

    def delete(self, session_id: str, *, owner: str | None = None) -> None:
        self.get(session_id, owner=owner)
        self.repository.delete(session_id)
        with self._locks_guard:
            self._locks.pop(session_id, None)
        for key in [k for k in self._pins if k[1] == session_id]:
            self._pins.pop(key, None)

    def prune(self) -> int:
        """Delete expired sessions; returns how many."""
        return self.repository.prune()

    # -- turns -----------------------------------------------------------------------------------------
    def _lock(self, session_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(session_id, threading.Lock())

    def _busy(self, session_id: str, where: str) -> SessionBusy:
        return SessionBusy(
            f"session {session_id!r} is busy with a turn {where} for more than "
            f"{self.app.settings.session_wait_s:g} s (session_wait_s); try again"
        )

    def _enter(self, session_id: str) -> threading.Lock:
        """Wait for the session's previous turn, in this process (its lock) then in any (the store's
        hold), ``session_wait_s`` in all; returns the lock, held with the session (:meth:`_leave`)."""
        settings = self.app.settings
        deadline = time.monotonic() + settings.session_wait_s
        lock = self._lock(session_id)
        if not lock.acquire(timeout=settings.session_wait_s):  # this process's turns queue here
            raise self._busy(session_id, "in this process")
        try:
            while not self.repository.hold(session_id, self._holder, settings.session_lease_s):
                if time.monotonic() >= deadline:
                    raise self._busy(session_id, "in another process")
                time.sleep(HOLD_POLL_S)
        except BaseException:
            lock.release()
            raise
        return lock

    async def _aenter(self, session_id: str) -> threading.Lock:
        """:meth:`_enter` on a thread. A caller cancelled while it waits leaves the thread waiting: the
        thread then gives the session back as soon as it gets it, so no turn is left holding it."""
        guard = threading.Lock()
        abandoned = False
        entered: threading.Lock | None = None

        def enter() -> threading.Lock:
            nonlocal entered
            lock = self._enter(session_id)
            with guard:
                if not abandoned:
                    entered = lock
                    return lock
            self._leave(session_id, lock)
            return lock

        try:
            return await asyncio.to_thread(enter)
        except asyncio.CancelledError:
            with guard:
                abandoned = True
                lock = entered
            if lock is not None:  # the thread had it already: give it back here
                self._leave(session_id, lock)
            raise

    def _leave(self, session_id: str, lock: threading.Lock) -> None:
        try:
            self.repository.release(session_id, self._holder)
        finally:
            lock.release()

    @contextlib.contextmanager
    def _turn_held(self, session_id: str) -> Iterator[None]:
        lock = self._enter(session_id)
        try:
            with self._leases.held(session_id):
                yield
        finally:
            self._leave(session_id, lock)

    def _slot(self, pool: str, session_id: str) -> int:
        key = (pool, session_id)
        slot = self._pins.get(key)
        if slot is None:
            slot = self._pins[key] = next(self._next_slot) % self.app.pools.get(pool).size
        return slot

    def _inputs(
        self, record: SessionRecord, version: ProgramVersion, inputs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The turn's inputs, with the history as the program's ``dspy.History`` input when it has one."""
        if version.id not in self._history_fields:  # read once per version (ids are content hashes)
            self._history_fields[version.id] = history_field(self.app.programs.build(version))
        name = self._history_fields[version.id]
        given = dict(inputs)
        if name is not None and name not in given:
            given[name] = {"messages": [{**turn["inputs"], **turn["outputs"]} for turn in record.history]}
        return given

    def _turn(
        self,
        session_id: str,
        inputs: Mapping[str, Any],
        owner: str | None,
        pool: str | None,
        idempotent: bool,
        durability: Durability | None,
    ) -> tuple[SessionRecord, Any]:
        """Read the session and prepare its run (inline ``_Run`` or a ``PooledRun``)."""
        app = self.app
        record = self.get(session_id, owner=owner)
        mode = check_durability(durability) or app.settings.durability
        version = app._cache.version(record.program, None)
        version_id = version.id
        given = self._inputs(record, version, inputs)
        reason = None
        if pool is None and app.router.active:  # a turn is routed as app.run routes a run
            route = app.router.decide(record.program, version_id)
            pool, reason = route.pool, route.reason
        if pool is not None:  # the worker builds the program: none is copied here
            pooled = PooledRun(
                app,
                pool,
                record.program,
                given,
                lm=None,
                version_id=version_id,
                variables=record.variables,
                durability=mode,
                idempotent=idempotent,
                session_id=session_id,
                worker=self._slot(pool, session_id),
                reason=reason,
            )
            return record, pooled
        program = app.programs.build(version)
        placement = {"target": "inline", "reason": reason} if reason else None
        run = _Run(app, program, given, None, record.program, version_id, record.variables, mode, placement)
        run.base["session_id"] = session_id
        return record, run

    def _save(
        self, record: SessionRecord, inputs: Mapping[str, Any], result: RunResult | None, ms: float
    ) -> None:
        metrics = dict(record.metrics)
        metrics["duration_ms"] = float(metrics.get("duration_ms", 0.0)) + ms
        if result is None:
            metrics["failed"] = int(metrics.get("failed", 0)) + 1
            self.repository.save_turn(record, None, metrics)
            return
        tokens = sum(int(u.get("total_tokens") or 0) for u in result.usage.values())
        metrics["turns"] = record.turns + 1
        metrics["total_tokens"] = int(metrics.get("total_tokens", 0)) + tokens
        metrics["cost_usd"] = float(metrics.get("cost_usd") or 0.0) + float(result.cost_usd or 0.0)
        metrics["last_execution_id"] = result.execution_id
        turn = {"inputs": dict(inputs), "outputs": result.outputs, "execution_id": result.execution_id}
        self.repository.save_turn(record, turn, metrics)

    def _save_failure(
        self, record: SessionRecord, inputs: Mapping[str, Any], t0: float, exc: BaseException
    ) -> None:
        """Count a failed turn; if even that cannot be saved, say so on the turn's own error."""
        try:
            self._save(record, inputs, None, (time.perf_counter() - t0) * 1000)
        except Exception as save_error:
            exc.add_note(f"(the session's failure count was not saved: {save_error})")

    def run(
        self,
        session_id: str,
        inputs: Mapping[str, Any],
        *,
        owner: str | None = None,
        pool: str | None = None,
        idempotent: bool = False,
        durability: Durability | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run the session's next turn (on ``pool``, else where ``[routing]`` puts the session's program,
        else inline); saved in the store before it returns.
        ``timeout`` is the turn's deadline, as for :meth:`App.run`."""
        with self._turn_held(session_id):
            record, prepared = self._turn(session_id, inputs, owner, pool, idempotent, durability)
            prepared.set_timeout(timeout)
            t0 = time.perf_counter()
            try:
                if isinstance(prepared, PooledRun):
                    result = prepared.execute()
                else:
                    result = prepared.finish(prepared.execute_sync)
            except BaseException as exc:
                self._save_failure(record, inputs, t0, exc)
                raise
            self._save(record, inputs, result, (time.perf_counter() - t0) * 1000)
            return result

    async def arun(
        self,
        session_id: str,
        inputs: Mapping[str, Any],
        *,
        owner: str | None = None,
        pool: str | None = None,
        idempotent: bool = False,
        durability: Durability | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Async :meth:`run`: the turn waits for the session's previous one without blocking the loop."""
        lock = await self._aenter(session_id)
        try:
            with self._leases.held(session_id):
                record, prepared = await asyncio.to_thread(
                    self._turn, session_id, inputs, owner, pool, idempotent, durability
                )
                prepared.set_timeout(timeout)
                t0 = time.perf_counter()
                try:
                    if isinstance(prepared, PooledRun):
                        result = await prepared.aexecute()
                    else:
                        result = await prepared.afinish()
                except BaseException as exc:
                    await asyncio.to_thread(self._save_failure, record, inputs, t0, exc)
                    raise
                ms = (time.perf_counter() - t0) * 1000
                await asyncio.to_thread(self._save, record, inputs, result, ms)
                return result
        finally:
            await asyncio.to_thread(self._leave, session_id, lock)
