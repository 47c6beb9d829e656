"""Adaptive programs: their arms and the append-only log of what their policy observed.

Table ``adaptive_programs``: one row per adaptive program, keyed by its name. ``program`` is the
registered program it serves (``version_id`` pins a version; NULL: production, else the newest draft),
``spec`` the JSON of its settings (``{"v": 1, "space": <space document>, "policy": {...}, "reward":
{...}, "features": [...], "reoptimize": {...}}``), ``status`` ``active`` / ``frozen`` (every run served
by ``frozen_arm``) / ``stopped`` (runs refused).

Table ``adaptive_arms``: the candidate configurations, keyed by (adaptive program, arm id). The arm id
is the configuration's content id (:attr:`dspex.variables.Configuration.id`, first 16 hex digits), so
adding the same configuration twice is one arm. ``source`` says where it came from (``explicit``,
``optimization``, ``sampled``, ``reoptimization``); a guardrail sets ``status`` to ``retired`` with its
reason (a conditional update: the first process to retire an arm wins, and the last active arm is never
retired).

Table ``adaptive_events``: append-only, ordered by ``id``. Every process sharing the policy appends what
it observed and reads what the others appended since the last id it saw, so nobody overwrites anybody's
observations (no read-modify-write of a shared blob). Kinds:

- ``serve``: a run an arm served (``execution_id``, ``reason``, ``context``, ``latency_ms``,
  ``cost_usd``, ``failed``; ``reward`` and ``quality`` when known at once: a metric, or a failure);
- ``reward``: a reward that arrived later (feedback on ``execution_id``), for the arm that served it;
- ``reset``: a change detector reset an arm's statistics; ``retire``: a guardrail retired an arm;
- ``arm``: an arm was added; ``reoptimize``: an optimization job was submitted (``detail.job_id``);
  ``reoptimized``: its configurations were added; ``status``: frozen, unfrozen, stopped.

``key`` (unique per adaptive program, NULL allowed) makes an append idempotent: ``serve:<execution>``,
``reward:<execution>`` (the first rating of a run is its reward), ``reset:<arm>:<event id>``; a second
insert with the same key is dropped (``ON CONFLICT DO NOTHING``), so two processes ingesting the same
feedback add one reward.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.errors import ConfigurationError
from dspex.jsonable import storable
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import adaptive_arms, adaptive_events, adaptive_programs, feedback

__all__ = [
    "AdaptiveRecord",
    "AdaptiveRepository",
    "AdaptiveStatus",
    "ArmRecord",
    "EventKind",
    "EventRecord",
    "UnknownAdaptive",
]

AdaptiveStatus = Literal["active", "frozen", "stopped"]
ArmStatus = Literal["active", "retired"]
EventKind = Literal["serve", "reward", "reset", "retire", "arm", "reoptimize", "reoptimized", "status"]


class UnknownAdaptive(ConfigurationError):
    """No adaptive program by that name."""

    code = "unknown_adaptive"


@dataclass(frozen=True, slots=True)
class AdaptiveRecord:
    """One adaptive program."""

    name: str
    program: str
    version_id: str | None
    status: AdaptiveStatus
    spec: dict[str, Any]
    frozen_arm: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> AdaptiveRecord:
        return cls(
            name=row["name"],
            program=row["program"],
            version_id=row["version_id"],
            status=row["status"],
            spec=dict(row["spec"]),
            frozen_arm=row["frozen_arm"],
            created_at=aware(row["created_at"]),
            updated_at=aware(row["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class ArmRecord:
    """One arm: a configuration of the program."""

    adaptive: str
    arm: str
    configuration: dict[str, Any]
    source: str
    status: ArmStatus
    retired_reason: str | None
    added_at: dt.datetime
    retired_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ArmRecord:
        return cls(
            adaptive=row["adaptive"],
            arm=row["arm"],
            configuration=dict(row["configuration"]),
            source=row["source"],
            status=row["status"],
            retired_reason=row["retired_reason"],
            added_at=aware(row["added_at"]),
            retired_at=aware(row["retired_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "configuration": self.configuration,
            "source": self.source,
            "status": self.status,
            "retired_reason": self.retired_reason,
            "added_at": self.added_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at is not None else None,
        }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of the log (see the module docstring for the kinds)."""

    id: int
    adaptive: str
    kind: str
    arm: str | None
    execution_id: str | None = None
    reason: str | None = None
    context: str | None = None
    reward: float | None = None
    quality: float | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    failed: bool | None = None
    detail: dict[str, Any] | None = None
    key: str | None = None
    at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> EventRecord:
        return cls(
            id=int(row["id"]),
            adaptive=row["adaptive"],
            kind=row["kind"],
            arm=row["arm"],
            execution_id=row["execution_id"],
            reason=row["reason"],
            context=row["context"],
            reward=row["reward"],
            quality=row["quality"],
            cost_usd=row["cost_usd"],
            latency_ms=row["latency_ms"],
            failed=None if row["failed"] is None else bool(row["failed"]),
            detail=row["detail"],
            key=row["key"],
            at=aware(row["at"]),
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["at"] = self.at.isoformat() if self.at is not None else None
        return data


_EVENT_FIELDS = tuple(c.name for c in adaptive_events.columns if c.name != "id")


class AdaptiveRepository:
    """Reads and writes the adaptive tables. Thread-safe (each call takes its own connection)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert)(table)

    # -- programs ------------------------------------------------------------------------------------
    def create(
        self, name: str, *, program: str, version_id: str | None, spec: Mapping[str, Any]
    ) -> tuple[AdaptiveRecord, bool]:
        """Create adaptive program ``name``, or return the existing one; ``(record, created)``."""
        now = utcnow()
        stmt = (
            self._insert(adaptive_programs)
            .values(
                name=name,
                program=program,
                version_id=version_id,
                status="active",
                spec=storable(dict(spec)),
                frozen_arm=None,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(adaptive_programs.c.name)
        )
        with self.db.write() as connection:
            created = connection.execute(stmt).scalar_one_or_none() is not None
        return self.get(name), created

    def find(self, name: str) -> AdaptiveRecord | None:
        with self.db.read() as connection:
            row = connection.execute(
                sa.select(adaptive_programs).where(adaptive_programs.c.name == name)
            ).first()
        return AdaptiveRecord.from_row(row._mapping) if row is not None else None

    def get(self, name: str) -> AdaptiveRecord:
        record = self.find(name)
        if record is None:
            raise UnknownAdaptive(
                f"no adaptive program {name!r}; start one with app.adapt(...) or `dspex adapt start` "
                "(dspex adapt show lists them)"
            )
        return record

    def all(self, program: str | None = None) -> list[AdaptiveRecord]:
        query = sa.select(adaptive_programs).order_by(adaptive_programs.c.name)
        if program is not None:
            query = query.where(adaptive_programs.c.program == program)
        with self.db.read() as connection:
            return [AdaptiveRecord.from_row(row._mapping) for row in connection.execute(query)]

    def set_status(self, name: str, status: AdaptiveStatus, frozen_arm: str | None = None) -> None:
        with self.db.write() as connection:
            done = connection.execute(
                sa.update(adaptive_programs)
                .where(adaptive_programs.c.name == name)
                .values(status=status, frozen_arm=frozen_arm, updated_at=utcnow())
            ).rowcount
        if not done:
            self.get(name)  # raises UnknownAdaptive

    def delete(self, name: str) -> bool:
        with self.db.write() as connection:
            connection.execute(sa.delete(adaptive_events).where(adaptive_events.c.adaptive == name))
            connection.execute(sa.delete(adaptive_arms).where(adaptive_arms.c.adaptive == name))
            deleted = connection.execute(
                sa.delete(adaptive_programs).where(adaptive_programs.c.name == name)
            ).rowcount
        return bool(deleted)

    # -- arms ----------------------------------------------------------------------------------------
    def add_arms(self, name: str, arms: Iterable[tuple[str, Mapping[str, Any], str]]) -> list[str]:
        """Add ``(arm id, configuration, source)`` arms; returns the ids that were new (an ``arm`` event
        each). An arm already there keeps its status: a retired arm is not revived by adding it again."""
        added: list[str] = []
        now = utcnow()
        with self.db.write() as connection:
            for arm, configuration, source in arms:
                stmt = (
                    self._insert(adaptive_arms)
                    .values(
                        adaptive=name,
                        arm=arm,
                        configuration=storable(dict(configuration)),
                        source=source,
                        status="active",
                        retired_reason=None,
                        added_at=now,
                        retired_at=None,
                    )
                    .on_conflict_do_nothing(index_elements=["adaptive", "arm"])
                    .returning(adaptive_arms.c.arm)
                )
                if connection.execute(stmt).scalar_one_or_none() is not None:
                    added.append(arm)
                    connection.execute(
                        sa.insert(adaptive_events).values(
                            **self._event_row(name, "arm", arm, detail={"source": source}, at=now)
                        )
                    )
        return added

    def arms(self, name: str) -> list[ArmRecord]:
        query = (
            sa.select(adaptive_arms)
            .where(adaptive_arms.c.adaptive == name)
            .order_by(adaptive_arms.c.added_at, adaptive_arms.c.arm)
        )
        with self.db.read() as connection:
            return [ArmRecord.from_row(row._mapping) for row in connection.execute(query)]

    def retire(self, name: str, arm: str, reason: str) -> bool:
        """Retire ``arm`` unless it is retired already or the last active one; True when this call did."""
        c = adaptive_arms.c
        now = utcnow()
        with self.db.write() as connection:
            active = connection.execute(
                sa.select(sa.func.count()).where(c.adaptive == name, c.status == "active")
            ).scalar_one()
            if active <= 1:
                return False
            done = connection.execute(
                sa.update(adaptive_arms)
                .where(c.adaptive == name, c.arm == arm, c.status == "active")
                .values(status="retired", retired_reason=reason, retired_at=now)
            ).rowcount
            if done:
                connection.execute(
                    sa.insert(adaptive_events).values(
                        **self._event_row(name, "retire", arm, detail={"reason": reason}, at=now)
                    )
                )
        return bool(done)

    def restore(self, name: str, arm: str) -> bool:
        """Put a retired arm back in service; True when it was retired."""
        c = adaptive_arms.c
        with self.db.write() as connection:
            done = connection.execute(
                sa.update(adaptive_arms)
                .where(c.adaptive == name, c.arm == arm, c.status == "retired")
                .values(status="active", retired_reason=None, retired_at=None)
            ).rowcount
        return bool(done)

    # -- events --------------------------------------------------------------------------------------
    @staticmethod
    def _event_row(name: str, kind: str, arm: str | None, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(_EVENT_FIELDS)
        row.update(adaptive=name, kind=kind, arm=arm, **fields)
        if row["detail"] is not None:
            row["detail"] = storable(dict(row["detail"]))
        if row["at"] is None:
            row["at"] = utcnow()
        return row

    def append(self, name: str, kind: EventKind, arm: str | None, **fields: Any) -> EventRecord | None:
        """Append one event; None when its ``key`` was taken already (an idempotent duplicate)."""
        row = self._event_row(name, kind, arm, **fields)
        stmt = self._insert(adaptive_events).values(**row)
        if row["key"] is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["adaptive", "key"])
        with self.db.write() as connection:
            result = connection.execute(stmt.returning(adaptive_events.c.id))
            new_id = result.scalar_one_or_none()
        if new_id is None:
            return None
        return EventRecord(id=int(new_id), **row)

    def events(
        self,
        name: str,
        *,
        after: int = 0,
        kinds: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[EventRecord]:
        """Events with id > ``after``, oldest first, at most ``limit``."""
        c = adaptive_events.c
        query = sa.select(adaptive_events).where(c.adaptive == name, c.id > after)
        if kinds is not None:
            query = query.where(c.kind.in_(list(kinds)))
        query = query.order_by(c.id).limit(limit)
        with self.db.read() as connection:
            return [EventRecord.from_row(row._mapping) for row in connection.execute(query)]

    def recent_events(self, name: str, *, kinds: Sequence[str], limit: int) -> list[EventRecord]:
        """The newest ``limit`` events of these kinds, oldest first (a restarting policy replays them)."""
        c = adaptive_events.c
        query = (
            sa.select(adaptive_events)
            .where(c.adaptive == name, c.kind.in_(list(kinds)))
            .order_by(c.id.desc())
            .limit(limit)
        )
        with self.db.read() as connection:
            rows = [EventRecord.from_row(row._mapping) for row in connection.execute(query)]
        return rows[::-1]

    def last_id(self, name: str) -> int:
        c = adaptive_events.c
        with self.db.read() as connection:
            found = connection.execute(sa.select(sa.func.max(c.id)).where(c.adaptive == name)).scalar()
        return int(found or 0)

    def serve_counts(self, name: str) -> dict[str, dict[str, int]]:
        """Runs served per arm and reason, over the whole log: ``{arm: {reason: count}}``."""
        c = adaptive_events.c
        query = (
            sa.select(c.arm, c.reason, sa.func.count())
            .where(c.adaptive == name, c.kind == "serve")
            .group_by(c.arm, c.reason)
        )
        counts: dict[str, dict[str, int]] = {}
        with self.db.read() as connection:
            for arm, reason, count in connection.execute(query):
                counts.setdefault(arm, {})[reason or "unknown"] = int(count)
        return counts

    def served(self, name: str, execution_id: str) -> EventRecord | None:
        """The serve event of one execution, if this adaptive program served it."""
        c = adaptive_events.c
        with self.db.read() as connection:
            row = connection.execute(
                sa.select(adaptive_events).where(
                    c.adaptive == name, c.kind == "serve", c.execution_id == execution_id
                )
            ).first()
        return EventRecord.from_row(row._mapping) if row is not None else None

    def unrewarded_feedback(
        self, name: str, *, since: dt.datetime | None, limit: int = 1000
    ) -> list[tuple[EventRecord, float, dt.datetime]]:
        """Feedback scores given on runs this program served that have no reward yet: ``(serve event,
        score, feedback time)``, oldest feedback first; the first score of a run counts."""
        served = adaptive_events.alias("served")
        rewarded = adaptive_events.alias("rewarded")
        query = (
            sa.select(served, feedback.c.score, feedback.c.created_at.label("feedback_at"))
            .join(feedback, feedback.c.execution_id == served.c.execution_id)
            .where(
                served.c.adaptive == name,
                served.c.kind == "serve",
                served.c.reward.is_(None),
                feedback.c.score.is_not(None),
                ~sa.exists().where(
                    rewarded.c.adaptive == name,
                    rewarded.c.kind == "reward",
                    rewarded.c.execution_id == served.c.execution_id,
                ),
            )
            .order_by(feedback.c.created_at, feedback.c.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(feedback.c.created_at >= since)
        found: list[tuple[EventRecord, float, dt.datetime]] = []
        seen: set[str] = set()
        with self.db.read() as connection:
            for row in connection.execute(query):
                mapping = row._mapping
                event = EventRecord.from_row(mapping)
                if event.execution_id in seen:
                    continue
                seen.add(event.execution_id or "")
                found.append((event, float(mapping["score"]), aware(mapping["feedback_at"])))
        return found

    def reward_series(self, name: str, *, buckets: int = 20, limit: int = 20_000) -> list[dict[str, Any]]:
        """Mean reward per bucket of consecutive rewarded runs (the newest ``limit``), oldest first, with
        the share of each arm in the bucket: ``[{"from", "to", "runs", "mean_reward", "arms": {...}}]``."""
        c = adaptive_events.c
        query = (
            sa.select(c.id, c.arm, c.reward, c.at)
            .where(c.adaptive == name, c.kind.in_(["serve", "reward"]), c.reward.is_not(None))
            .order_by(c.id.desc())
            .limit(limit)
        )
        with self.db.read() as connection:
            rows = list(connection.execute(query))[::-1]
        if not rows:
            return []
        size = max(1, -(-len(rows) // max(1, buckets)))
        series = []
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            arms: dict[str, int] = {}
            for row in chunk:
                arms[row.arm] = arms.get(row.arm, 0) + 1
            series.append(
                {
                    "from": aware(chunk[0].at).isoformat(),
                    "to": aware(chunk[-1].at).isoformat(),
                    "runs": len(chunk),
                    "mean_reward": sum(float(r.reward) for r in chunk) / len(chunk),
                    "arms": arms,
                }
            )
        return series
