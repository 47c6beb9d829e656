"""The program-level result cache: per-program TTL and durability policies, and a per-process memo.

A registered program with a cache TTL (``App.set_cache``) answers a run whose version, variables and
inputs equal an earlier successful run's with that run's outputs, without running DSPy, recorded as a
cache hit. The entries live in the database (every process shares them); each process memoises what it
read for up to ``MEMO_FRESH_S`` seconds and re-reads a program's policy at most every
``POLICY_REFRESH_S`` seconds.

It also memoises how a run by name resolves its program version (:meth:`ProgramCache.version`), for the
same ``POLICY_REFRESH_S``. While the database cannot be reached (down, restarting: see
:func:`~dspex.store._engine.database_unavailable`) both memos are served stale rather than failing the
run (stale-if-error): a stored version never changes, so only *which* version is production, and a
program's cache TTL and durability, may be out of date, and only for as long as the outage lasts (the
database is asked again every ``POLICY_REFRESH_S``; the first stale answer and the recovery are logged,
logger ``dspex.runtime``). The exception is a production version memoised before this process itself
changed the registry (its ``generation`` moved): that one may be known to be wrong, so it is not served.
When nothing can be served, the run fails with :class:`~dspex.errors.DatabaseUnavailable`, and its
``failed`` record (code ``database_unavailable``) goes through the execution writer, which holds it until
the database takes writes again (:meth:`ProgramCache.record_unresolved`). The shared result cache is
skipped while the database is unavailable: a lookup is a miss, and a result is memoised in this process
but not stored. With the database up, none of this adds work to a run.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import DatabaseUnavailable
from dspex.ids import new_id
from dspex.jsonable import to_jsonable
from dspex.runtime.run import DURABILITIES, Durability, RunResult, check_durability, run_trace
from dspex.store._engine import database_unavailable, describe_error
from dspex.store.executions import current_runner, utcnow
from dspex.telemetry.recorder import error_info

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.programs import ProgramVersion

__all__ = ["MEMO_FRESH_S", "POLICY_REFRESH_S", "CacheSlot", "ProgramCache"]

log = logging.getLogger("dspex.runtime")

POLICY_REFRESH_S = 1.0  # how stale a process's view of a program's cache TTL and production version may be
MEMO_FRESH_S = 5.0  # how long a process serves a shared cache entry it read without re-reading it
VERSIONS_SIZE = 10_000  # resolutions memoised per process (names x versions asked for)


@dataclass(frozen=True, slots=True)
class _Policy:
    ttl_s: int | None
    durability: Durability | None
    version_id: str
    fresh_until: float


@dataclass(frozen=True, slots=True)
class CacheSlot:
    """A cache miss: where the run's outputs go when it succeeds."""

    key: str
    ttl_s: int
    version_id: str


@dataclass(frozen=True, slots=True)
class _MemoEntry:
    outputs: dict[str, Any]
    expires_at: datetime.datetime
    fresh_until: float


class _Memo:
    """A bounded, thread-safe memo of shared cache entries this process read or wrote."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: dict[str, _MemoEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> _MemoEntry | None:
        """The entry for ``key`` while it is live and fresh, else None."""
        entry = self._items.get(key)
        if entry is None or time.monotonic() > entry.fresh_until or entry.expires_at <= utcnow():
            return None
        return entry

    def put(self, key: str, outputs: dict[str, Any], expires_at: datetime.datetime) -> _MemoEntry:
        entry = _MemoEntry(outputs, expires_at, time.monotonic() + MEMO_FRESH_S)
        with self._lock:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))  # the oldest insertion
            self._items[key] = entry
        return entry


def _cache_key(
    name: str, version_id: str, inputs: Mapping[str, Any] | None, variables: Mapping[str, Any] | None
) -> str | None:
    from dspex.store.cache import cache_key

    try:
        return cache_key(name, version_id, variables, inputs or {})
    except (TypeError, ValueError):  # not JSON (or NaN): such inputs run without the cache
        return None


class ProgramCache:
    """The App's program-level cache and per-program policies (see the module docstring)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.policies: dict[str, _Policy] = {}
        self.memo = _Memo()
        self.versions: dict[tuple[str, str | None], tuple[ProgramVersion, float, int]] = {}
        # What is being served stale because the database is unavailable (logged once per outage).
        self.stale: set[tuple[str, str | None] | str] = set()

    def in_memory(self, name: str, version_id: str | None) -> bool:
        """Whether a run of ``name`` starts from memory alone: no result cache, and its settings and
        version were read less than ``POLICY_REFRESH_S`` ago (since this process last changed the
        registry), so :meth:`lookup`, :meth:`policy` and :meth:`version` read no row. Async runs then
        prepare on the event loop, without a thread hop each way."""
        now = time.monotonic()
        policy = self.policies.get(name)
        if policy is None or policy.ttl_s is not None or now > policy.fresh_until:
            return False
        hit = self.versions.get((name, version_id))
        return hit is not None and now <= hit[1] and hit[2] == self.app.programs.generation

    def version(self, name: str, version_id: str | None) -> ProgramVersion:
        """``programs.resolve(name, version_id)``, memoised for ``POLICY_REFRESH_S`` (or until this
        process's registry changes anything): a run by name reads no row to find its version. While the
        database is unavailable, the last resolution is served (module docstring); with none to serve,
        :class:`~dspex.errors.DatabaseUnavailable`."""
        registry = self.app.programs
        key = (name, version_id)
        hit = self.versions.get(key)
        if hit is not None and time.monotonic() <= hit[1] and hit[2] == registry.generation:
            return hit[0]
        generation = registry.generation
        try:
            version = registry.resolve(name, version_id)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # A version asked for by id never changes; production may have, if this process changed it.
            if hit is None or (version_id is None and hit[2] != generation):
                at = f" at version {version_id!r}" if version_id else ""
                reason = (
                    "" if hit is None else " (this process changed the registry since it last resolved it)"
                )
                raise DatabaseUnavailable(
                    f"cannot run {name!r}{at}: resolving its version needs the database, which is unavailable"
                    f"{reason} ({describe_error(exc)}); run it again once the database is back"
                ) from exc
            self._serve_stale(key, f"version {hit[0].id[:12]} of {name!r}", exc)
            self.versions[key] = (hit[0], time.monotonic() + POLICY_REFRESH_S, hit[2])
            return hit[0]
        if self.stale:
            self._fresh_again(key, f"version of {name!r}")
        if len(self.versions) >= VERSIONS_SIZE:
            self.versions.clear()
        self.versions[key] = (version, time.monotonic() + POLICY_REFRESH_S, generation)
        return version

    def _serve_stale(self, key: tuple[str, str | None] | str, what: str, exc: BaseException) -> None:
        """Note (and log, once per outage) that ``what`` is served from memory: the database is unavailable."""
        if key not in self.stale:
            self.stale.add(key)
            log.warning(
                "the database is unavailable (%s); runs use the %s known before, asking again every %.0f s",
                describe_error(exc),
                what,
                POLICY_REFRESH_S,
            )

    def _fresh_again(self, key: tuple[str, str | None] | str, what: str) -> None:
        if key in self.stale:
            self.stale.discard(key)
            log.info("the database answers again: the %s is read from it again", what)

    def record_unresolved(
        self,
        error: DatabaseUnavailable,
        name: str,
        version_id: str | None,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
    ) -> None:
        """Give a run by name that failed before it could start (``error``) its ``failed`` record, and
        ``error`` its ``execution_id``. The writer holds the record until the database takes it.

        An App whose store was never opened has no writer (opening it needs the database): the run is
        then logged, not recorded, and ``error`` keeps ``execution_id=None``."""
        if error.execution_id is not None or not self.app.record:
            return
        stores = self.app._stores
        if stores is None:
            log.error("run of %r not recorded: %s (this App never opened its store)", name, error)
            return
        error.execution_id = new_id()
        now = utcnow()
        stores.writer.submit(
            {
                "id": error.execution_id,
                "program": name,
                "version_id": version_id,
                "inputs": to_jsonable(dict(inputs or {})),
                "variables": to_jsonable(dict(variables)) if variables else None,
                "started_at": now,
                "runner": current_runner(),
                "cache_hit": False,
                "status": "failed",
                "outputs": None,
                "error": error_info(error),  # type, message, code database_unavailable, retryable
                "ended_at": now,
                "duration_ms": 0.0,
                "usage": None,
                "total_tokens": 0,
                "cost_usd": None,
                "trace": None,
            }
        )

    def memo_hit(
        self,
        name: str,
        version_id: str | None,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
    ) -> RunResult | None:
        """A hit from this process's memo of the shared cache, if the program's policy is memoised too."""
        policy = self.policies.get(name)
        if policy is None or policy.ttl_s is None or time.monotonic() > policy.fresh_until:
            return None
        resolved = version_id or policy.version_id
        key = _cache_key(name, resolved, inputs, variables)
        if key is None:
            return None
        entry = self.memo.get(key)
        if entry is None:
            return None
        return self.record_hit(name, resolved, inputs, variables, entry.outputs)

    def lookup(
        self,
        name: str,
        version_id: str | None,
        program_name: str | None,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
    ) -> CacheSlot | RunResult | None:
        """For a program with a cache TTL: the recorded hit, or the slot a miss fills. None: no cache."""
        if program_name is not None and program_name != name:
            return None  # _registered reports the mismatch
        policy = self.policy(name)
        if policy.ttl_s is None:
            return None
        resolved = self.version(name, version_id).id if version_id is not None else policy.version_id
        key = _cache_key(name, resolved, inputs, variables)
        if key is None:
            return None  # inputs that are not JSON cannot be a cache key; run without the cache
        entry = self.memo.get(key)
        if entry is None:
            try:
                found = self.app.cache.get(key)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning(
                    "program %r runs without its result cache: the database is unavailable (%s)",
                    name,
                    describe_error(exc),
                )
                return None
            if found is None:
                return CacheSlot(key, policy.ttl_s, resolved)
            entry = self.memo.put(key, found.outputs, found.expires_at)
        return self.record_hit(name, resolved, inputs, variables, entry.outputs)

    def record_hit(
        self,
        name: str,
        version_id: str,
        inputs: Mapping[str, Any] | None,
        variables: Mapping[str, Any] | None,
        outputs: dict[str, Any],
    ) -> RunResult:
        import dspy

        started = utcnow()
        t0 = time.perf_counter()
        execution_id = new_id()
        prediction = dspy.Prediction(**outputs)
        duration_ms = (time.perf_counter() - t0) * 1000
        # A cache hit is a run like another: in the caller's trace, and exported when telemetry is on.
        telemetry = self.app.telemetry
        trace = run_trace(telemetry)
        base: dict[str, Any] = {
            "id": execution_id,
            "program": name,
            "version_id": version_id,
            "inputs": dict(inputs or {}),
            "variables": to_jsonable(dict(variables)) if variables else None,
            "started_at": started,
            "runner": current_runner(),
            "cache_hit": True,
            "placement": None,
            "session_id": None,
            "trace_id": trace.trace_id if trace is not None else None,
        }
        if self.app.record:
            self.app._open().writer.submit(
                {
                    **base,
                    "status": "succeeded",
                    "outputs": outputs,
                    "error": None,
                    "ended_at": started,
                    "duration_ms": duration_ms,
                    "usage": None,
                    "total_tokens": 0,
                    "cost_usd": 0.0,
                    "trace": None,
                }
            )
        if telemetry is not None and trace is not None:
            from dspex.telemetry.otel import RunExport

            served = {"trace": None, "usage": None, "cost_usd": 0.0}  # no span of its own: nothing ran
            telemetry.submit(
                RunExport(trace, base, "succeeded", None, started, duration_ms, served, outputs, 0.0)
            )
        return RunResult(
            execution_id=execution_id,
            outputs=outputs,
            prediction=prediction,
            duration_ms=duration_ms,
            usage={},
            cost_usd=0.0,
            cache_hit=True,
            trace_id=base["trace_id"],
        )

    def store(self, slot: CacheSlot, name: str, version_id: str, result: RunResult) -> None:
        if version_id != slot.version_id:
            return  # production moved between the lookup and the run: this result is another version's
        try:
            self.app.cache.put(
                slot.key,
                program=name,
                version_id=version_id,
                outputs=result.outputs,
                ttl_s=slot.ttl_s,
                execution_id=result.execution_id,
            )
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # The run succeeded and is recorded; only sharing its result with other processes is lost.
            log.warning(
                "the result of run %s of %r is cached in this process only: the database is unavailable (%s)",
                result.execution_id,
                name,
                describe_error(exc),
            )
        self.memo.put(slot.key, result.outputs, utcnow() + datetime.timedelta(seconds=slot.ttl_s))

    def policy(self, name: str) -> _Policy:
        """Program ``name``'s cache TTL and default version, re-read at most every POLICY_REFRESH_S."""
        policy = self.policies.get(name)
        if policy is not None and time.monotonic() <= policy.fresh_until:
            return policy
        try:
            record = self.app.programs.get(name)
            version = self.app.programs.resolve(name).id if record.cache_ttl_s is not None else ""
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            if policy is None:
                raise DatabaseUnavailable(
                    f"cannot run {name!r}: reading its settings needs the database, which is unavailable "
                    f"({describe_error(exc)}); run it again once the database is back"
                ) from exc
            self._serve_stale(name, f"cache and durability settings of {name!r}", exc)
            policy = _Policy(
                policy.ttl_s, policy.durability, policy.version_id, time.monotonic() + POLICY_REFRESH_S
            )
            self.policies[name] = policy
            return policy
        if self.stale:
            self._fresh_again(name, f"cache and durability settings of {name!r}")
        durability = record.durability if record.durability in DURABILITIES else None
        policy = _Policy(
            record.cache_ttl_s,
            check_durability(durability),
            version,
            time.monotonic() + POLICY_REFRESH_S,
        )
        self.policies[name] = policy
        return policy
