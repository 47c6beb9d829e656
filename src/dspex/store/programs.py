"""Programs and their versions: what a registered program is built from, and every saved state of it.

Table ``programs``: one row per registered name. ``source`` says how to build the program's structure,
``{"v": 1, "kind": "import", "path": "myapp.qa:build"}`` or ``{"v": 1, "kind": "spec", "spec": {...}}``;
``updated_at`` moves when the source or description is replaced.

Table ``program_versions``: one row per distinct saved state. ``id`` is the SHA-256 of the canonical JSON
of the program name and the version payload (state and variables), so saving the same state twice finds
the existing row instead of adding one (``INSERT ... ON CONFLICT DO NOTHING``). ``state`` is the payload
``{"v": 1, "source": ..., "dspy": <module.dump_state()>, "config": {predictor: config}}``: each version
keeps the source it was saved against, so replacing a program's source never breaks its old versions.
``variables`` holds the variable values when there are any, ``dspy_version`` the DSPy that wrote it (not
part of the id: the same state saved under a newer DSPy is the same version). ``parent_id`` and ``note``
are free provenance (an optimizer sets ``parent_id`` to the version it started from).

Lifecycle (``status``)::

    draft <-> optimizing          set_status
    draft | optimizing | archived -> production     promote (the old production becomes archived)
    draft | optimizing -> archived                  set_status
    production -> archived                          only by promoting another version, or rollback

A partial unique index (``uq_program_versions_one_production``) makes "at most one production version per
program" a database fact; promote and rollback lock the program row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so concurrent promotions queue instead of failing, and the
last one wins. Once a program has a production version it always has exactly one: set_status refuses
to move a version into or out of production.

Promotion history lives in ``promoted_at``: when the version last became production, strictly increasing
per program. Rollback demotes the current production (clearing its ``promoted_at``, so it is never a
rollback target again) and re-promotes the archived version with the latest ``promoted_at``. Rolling back
twice therefore walks two promotions back, like undo; promote explicitly to redo.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dspex.errors import ConfigurationError
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import program_versions, programs

__all__ = [
    "SET_STATUS_TRANSITIONS",
    "ProgramRecord",
    "ProgramRepository",
    "ProgramVersion",
    "VersionStatus",
    "describe_source",
]

VersionStatus = Literal["draft", "optimizing", "production", "archived"]

# What set_status may do; production is entered and left only through promote and rollback.
SET_STATUS_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "draft": frozenset({"optimizing", "archived"}),
    "optimizing": frozenset({"draft", "archived"}),
    "archived": frozenset(),
    "production": frozenset(),
}
_TICK = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One registered program: its name, description and source (how to build it), and how long its
    results may be served from the program-level cache (``None``: not cached)."""

    name: str
    description: str
    source: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    cache_ttl_s: int | None = None
    durability: str | None = None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ProgramRecord:
        return cls(
            name=row["name"],
            description=row["description"],
            source=row["source"],
            created_at=aware(row["created_at"]),
            updated_at=aware(row["updated_at"]),
            cache_ttl_s=row["cache_ttl_s"],
            durability=row["durability"],
        )


@dataclass(frozen=True, slots=True)
class ProgramVersion:
    """One saved state of a program; ``id`` is its content hash."""

    id: str
    program: str
    status: VersionStatus
    state: dict[str, Any]
    dspy_version: str
    variables: dict[str, Any] | None
    parent_id: str | None
    note: str
    created_at: dt.datetime
    promoted_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> ProgramVersion:
        return cls(
            id=row["id"],
            program=row["program"],
            status=row["status"],
            state=row["state"],
            dspy_version=row["dspy_version"],
            variables=row["variables"],
            parent_id=row["parent_id"],
            note=row["note"],
            created_at=aware(row["created_at"]),
            promoted_at=aware(row["promoted_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The version as JSON (times as ISO 8601)."""
        return {
            "id": self.id,
            "program": self.program,
            "status": self.status,
            "state": self.state,
            "dspy_version": self.dspy_version,
            "variables": self.variables,
            "parent_id": self.parent_id,
            "note": self.note,
            "created_at": self.created_at.isoformat(),
            "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None,
        }


class ProgramRepository:
    """Reads and writes ``programs`` and ``program_versions``. Thread-safe (a connection per call).

    Raises ``ConfigurationError`` for a missing program or version and for an illegal transition; the
    registry above turns names into friendlier messages before it gets here.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert)(table)

    # -- programs ------------------------------------------------------------------------------------
    def save_program(
        self, name: str, source: dict[str, Any], *, description: str | None, replace: bool
    ) -> tuple[ProgramRecord, bool]:
        """Create program ``name``, or update it; returns the record and whether its source changed.

        An existing program with another source is an error unless ``replace``; ``description=None``
        keeps the existing description.
        """
        now = utcnow()
        p = programs.c
        with self.db.write() as connection:
            connection.execute(
                self._insert(programs)
                .values(
                    name=name, description=description or "", source=source, created_at=now, updated_at=now
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = connection.execute(sa.select(programs).where(p.name == name).with_for_update()).one()
            existing = ProgramRecord.from_row(row._mapping)
            changed = existing.source != source
            if changed and not replace:
                raise ConfigurationError(
                    f"program {name!r} is already registered from {describe_source(existing.source)}; "
                    f"pass replace=True to register it from {describe_source(source)} instead"
                )
            if description is None:
                description = existing.description
            if changed or existing.description != description:
                connection.execute(
                    sa.update(programs)
                    .where(p.name == name)
                    .values(source=source, description=description, updated_at=now)
                )
                row = connection.execute(sa.select(programs).where(p.name == name)).one()
        return ProgramRecord.from_row(row._mapping), changed

    def set_cache_ttl(self, name: str, ttl_s: int | None) -> ProgramRecord:
        """Cache ``name``'s results for ``ttl_s`` seconds (``None`` turns the cache off)."""
        with self.db.write() as connection:
            updated = connection.execute(
                sa.update(programs)
                .where(programs.c.name == name)
                .values(cache_ttl_s=ttl_s, updated_at=utcnow())
            )
            if updated.rowcount != 1:
                raise ConfigurationError(f"unknown program {name!r}")
            row = connection.execute(sa.select(programs).where(programs.c.name == name)).one()
        return ProgramRecord.from_row(row._mapping)

    def set_durability(self, name: str, durability: str | None) -> ProgramRecord:
        """Record ``name``'s runs with ``durability`` ('sync' or 'async'; ``None``: the default)."""
        with self.db.write() as connection:
            updated = connection.execute(
                sa.update(programs)
                .where(programs.c.name == name)
                .values(durability=durability, updated_at=utcnow())
            )
            if updated.rowcount != 1:
                raise ConfigurationError(f"unknown program {name!r}")
            row = connection.execute(sa.select(programs).where(programs.c.name == name)).one()
        return ProgramRecord.from_row(row._mapping)

    def get_program(self, name: str) -> ProgramRecord | None:
        with self.db.read() as connection:
            row = connection.execute(sa.select(programs).where(programs.c.name == name)).first()
        return ProgramRecord.from_row(row._mapping) if row is not None else None

    def list_programs(self) -> list[ProgramRecord]:
        """Every program, by name."""
        with self.db.read() as connection:
            rows = connection.execute(sa.select(programs).order_by(programs.c.name))
            return [ProgramRecord.from_row(row._mapping) for row in rows]

    # -- versions ------------------------------------------------------------------------------------
    def add_version(
        self,
        *,
        id: str,
        program: str,
        status: VersionStatus,
        state: dict[str, Any],
        dspy_version: str,
        variables: dict[str, Any] | None,
        parent_id: str | None,
        note: str,
    ) -> tuple[ProgramVersion, bool]:
        """Insert a version unless one with this id exists; returns the stored one and whether it is new."""
        with self.db.write() as connection:
            inserted = connection.execute(
                self._insert(program_versions)
                .values(
                    id=id,
                    program=program,
                    status=status,
                    state=state,
                    dspy_version=dspy_version,
                    variables=variables,
                    parent_id=parent_id,
                    note=note,
                    created_at=utcnow(),
                    promoted_at=None,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            ).rowcount
            row = connection.execute(sa.select(program_versions).where(program_versions.c.id == id)).one()
        return ProgramVersion.from_row(row._mapping), inserted == 1

    def get_version(self, version_id: str) -> ProgramVersion | None:
        with self.db.read() as connection:
            row = connection.execute(
                sa.select(program_versions).where(program_versions.c.id == version_id)
            ).first()
        return ProgramVersion.from_row(row._mapping) if row is not None else None

    def versions(self, program: str) -> list[ProgramVersion]:
        """The versions of ``program``, newest first."""
        v = program_versions.c
        query = sa.select(program_versions).where(v.program == program).order_by(v.created_at.desc(), v.id)
        with self.db.read() as connection:
            return [ProgramVersion.from_row(row._mapping) for row in connection.execute(query)]

    def default_version(self, program: str) -> ProgramVersion | None:
        """The production version, else the newest draft, else None."""
        v = program_versions.c
        query = (
            sa.select(program_versions)
            .where(v.program == program, v.status.in_(("production", "draft")))
            # "draft" < "production" alphabetically, so production sorts first with desc().
            .order_by(v.status.desc(), v.created_at.desc(), v.id)
            .limit(1)
        )
        with self.db.read() as connection:
            row = connection.execute(query).first()
        return ProgramVersion.from_row(row._mapping) if row is not None else None

    # -- lifecycle -----------------------------------------------------------------------------------
    def set_status(self, version_id: str, status: VersionStatus) -> ProgramVersion:
        """Move a version along :data:`SET_STATUS_TRANSITIONS`; the same status is a no-op."""
        v = program_versions.c
        with self.db.write() as connection:
            current = self._version_for_update(connection, version_id)
            if current.status == status:
                return current
            if status == "production":
                raise ConfigurationError(
                    f"a version becomes production only by promote(); call promote({current.program!r}, "
                    f"{version_id!r})"
                )
            if status not in SET_STATUS_TRANSITIONS[current.status]:
                raise ConfigurationError(_illegal(current, status))
            connection.execute(sa.update(program_versions).where(v.id == version_id).values(status=status))
            return _reread(connection, version_id)

    def promote(self, program: str, version_id: str) -> ProgramVersion:
        """Make ``version_id`` the production version of ``program``, archiving the previous one."""
        v = program_versions.c
        with self.db.write() as connection:
            self._lock_program(connection, program)
            target = self._version_for_update(connection, version_id)
            if target.program != program:
                raise ConfigurationError(
                    f"version {version_id!r} belongs to program {target.program!r}, not {program!r}"
                )
            if target.status == "production":
                return target
            now = self._promotion_time(connection, program)
            connection.execute(
                sa.update(program_versions)
                .where(v.program == program, v.status == "production")
                .values(status="archived")
            )
            connection.execute(
                sa.update(program_versions)
                .where(v.id == version_id)
                .values(status="production", promoted_at=now)
            )
            return _reread(connection, version_id)

    def rollback(self, program: str) -> ProgramVersion:
        """Re-promote the previous production version; see the module docstring for the order."""
        v = program_versions.c
        with self.db.write() as connection:
            self._lock_program(connection, program)
            current = connection.execute(
                sa.select(program_versions).where(v.program == program, v.status == "production")
            ).first()
            if current is None:
                raise ConfigurationError(
                    f"program {program!r} has no production version to roll back from; promote one first"
                )
            previous = connection.execute(
                sa.select(program_versions)
                .where(v.program == program, v.status == "archived", v.promoted_at.is_not(None))
                .order_by(v.promoted_at.desc(), v.id)
                .limit(1)
            ).first()
            if previous is None:
                raise ConfigurationError(
                    f"nothing to roll back to: no earlier production version of {program!r} is archived "
                    "(rollback walks back through earlier promotions; promote a version to choose one)"
                )
            now = self._promotion_time(connection, program)
            connection.execute(
                sa.update(program_versions)
                .where(v.id == current.id)
                .values(status="archived", promoted_at=None)
            )
            connection.execute(
                sa.update(program_versions)
                .where(v.id == previous.id)
                .values(status="production", promoted_at=now)
            )
            return _reread(connection, previous.id)

    # -- helpers -------------------------------------------------------------------------------------
    def _lock_program(self, connection: Connection, program: str) -> None:
        # FOR UPDATE serialises promotions of one program on PostgreSQL (SQLite's BEGIN IMMEDIATE already
        # does), so a second promote waits and then sees the first one's result instead of hitting the
        # unique index.
        found = connection.execute(
            sa.select(programs.c.name).where(programs.c.name == program).with_for_update()
        ).first()
        if found is None:
            raise ConfigurationError(f"unknown program {program!r}")

    def _version_for_update(self, connection: Connection, version_id: str) -> ProgramVersion:
        row = connection.execute(
            sa.select(program_versions).where(program_versions.c.id == version_id).with_for_update()
        ).first()
        if row is None:
            raise ConfigurationError(f"unknown program version {version_id!r}")
        return ProgramVersion.from_row(row._mapping)

    def _promotion_time(self, connection: Connection, program: str) -> dt.datetime:
        # Rollback orders by promoted_at, so two promotions within one clock tick must still differ.
        latest = aware(
            connection.execute(
                sa.select(sa.func.max(program_versions.c.promoted_at)).where(
                    program_versions.c.program == program
                )
            ).scalar_one_or_none()
        )
        now = utcnow()
        return latest + _TICK if latest is not None and latest >= now else now


def _reread(connection: Connection, version_id: str) -> ProgramVersion:
    row = connection.execute(sa.select(program_versions).where(program_versions.c.id == version_id)).one()
    return ProgramVersion.from_row(row._mapping)


def _illegal(current: ProgramVersion, status: str) -> str:
    if current.status == "production":
        return (
            f"version {current.id!r} is the production version of {current.program!r}; it leaves production "
            "only when another version is promoted or by rollback()"
        )
    allowed = sorted(SET_STATUS_TRANSITIONS[current.status])
    hint = f"allowed: {', '.join(allowed)}" if allowed else "it can only be promoted"
    return f"version {current.id!r} is {current.status}; it cannot become {status} ({hint})"


def describe_source(source: Mapping[str, Any]) -> str:
    """A short human description of a stored source, for messages."""
    if source.get("kind") == "import":
        return f"import path {source.get('path')!r}"
    spec = source.get("spec") or {}
    return f"spec (module {spec.get('module')!r}, signature {spec.get('signature')!r})"
