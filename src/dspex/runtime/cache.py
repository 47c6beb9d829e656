"""The program-level result cache: per-program TTL and durability policies, and a per-process memo.

A registered program with a cache TTL (``App.set_cache``) answers a run whose version, variables and
inputs equal an earlier successful run's with that run's outputs, without running DSPy, recorded as a
cache hit. The entries live in the database (every process shares them); each process memoises what it
read for up to ``MEMO_FRESH_S`` seconds and re-reads a program's policy at most every
``POLICY_REFRESH_S`` seconds.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.jsonable import to_jsonable
from dspex.runtime.run import DURABILITIES, Durability, RunResult, check_durability
from dspex.store.executions import current_runner, utcnow

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.programs import ProgramVersion

__all__ = ["MEMO_FRESH_S", "POLICY_REFRESH_S", "CacheSlot", "ProgramCache"]

POLICY_REFRESH_S = 1.0  # how stale a process's view of a program's cache TTL and production version may be
MEMO_FRESH_S = 5.0
VERSIONS_SIZE = 10_000  # resolutions memoised per process (names x versions asked for)  # how long a process serves a shared cache entry it read without re-reading it


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

    def version(self, name: str, version_id: str | None) -> ProgramVersion:
        """``programs.resolve(name, version_id)``, memoised for ``POLICY_REFRESH_S`` (or until this
        process's registry changes anything): a run by name reads no row to find its version."""
        registry = self.app.programs
        key = (name, version_id)
        hit = self.versions.get(key)
        if hit is not None and time.monotonic() <= hit[1] and hit[2] == registry.generation:
            return hit[0]
        generation = registry.generation
        version = registry.resolve(name, version_id)
        if len(self.versions) >= VERSIONS_SIZE:
            self.versions.clear()
        self.versions[key] = (version, time.monotonic() + POLICY_REFRESH_S, generation)
        return version

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
        resolved = (
            self.app.programs.resolve(name, version_id).id if version_id is not None else policy.version_id
        )
        key = _cache_key(name, resolved, inputs, variables)
        if key is None:
            return None  # inputs that are not JSON cannot be a cache key; run without the cache
        entry = self.memo.get(key)
        if entry is None:
            found = self.app.cache.get(key)
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
        execution_id = str(uuid.uuid4())
        prediction = dspy.Prediction(**outputs)
        duration_ms = (time.perf_counter() - t0) * 1000
        if self.app.record:
            self.app._open().writer.submit(
                {
                    "id": execution_id,
                    "program": name,
                    "version_id": version_id,
                    "inputs": dict(inputs or {}),
                    "variables": to_jsonable(dict(variables)) if variables else None,
                    "started_at": started,
                    "runner": current_runner(),
                    "cache_hit": True,
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
        return RunResult(
            execution_id=execution_id,
            outputs=outputs,
            prediction=prediction,
            duration_ms=duration_ms,
            usage={},
            cost_usd=0.0,
            cache_hit=True,
        )

    def store(self, slot: CacheSlot, name: str, version_id: str, result: RunResult) -> None:
        if version_id != slot.version_id:
            return  # production moved between the lookup and the run: this result is another version's
        self.app.cache.put(
            slot.key,
            program=name,
            version_id=version_id,
            outputs=result.outputs,
            ttl_s=slot.ttl_s,
            execution_id=result.execution_id,
        )
        self.memo.put(slot.key, result.outputs, utcnow() + datetime.timedelta(seconds=slot.ttl_s))

    def policy(self, name: str) -> _Policy:
        """Program ``name``'s cache TTL and default version, re-read at most every POLICY_REFRESH_S."""
        policy = self.policies.get(name)
        if policy is not None and time.monotonic() <= policy.fresh_until:
            return policy
        record = self.app.programs.get(name)
        version = self.app.programs.resolve(name).id if record.cache_ttl_s is not None else ""
        durability = record.durability if record.durability in DURABILITIES else None
        policy = _Policy(
            record.cache_ttl_s,
            check_durability(durability),
            version,
            time.monotonic() + POLICY_REFRESH_S,
        )
        self.policies[name] = policy
        return policy
