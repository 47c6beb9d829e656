"""Datasets: named collections of examples, stored as immutable, content-addressed versions.

Three tables (see :mod:`dspex.store.schema`):

``datasets``
    One row per name: ``description``, ``created_at``, and ``updated_at`` (the last time a new version
    was added). Deleting a dataset cascades to its versions and their examples.
``dataset_versions``
    One row per distinct content. ``id`` is a SHA-256 content hash (of the dataset name, the declared
    fields and the ordered ``(example hash, split)`` list), so importing the same content again finds
    the existing row instead of adding one: the insert is ``ON CONFLICT DO NOTHING`` and the examples
    are only written when the version row was new, all in one write transaction. ``input_fields`` and
    ``label_fields`` are JSON lists (the ``Example.with_inputs`` declaration); ``splits`` is
    ``{"v": 1, "counts": {split: n}, "field": ..., "fractions": ..., "seed": ...}`` (how the split was
    made, recorded from the import that created the version); ``stats`` is the :class:`DatasetStats`
    payload (``"v": 1``); ``example_count`` is denormalised so listings need no count query.
``dataset_examples``
    One row per example, keyed by ``(version_id, position)``: the example's own content hash, its
    split (NULL when the version has none) and its data as a JSON object. Rows are written in chunks
    with ``executemany`` and read back in position order, which is the import order.

Key order inside a JSON object is not kept by PostgreSQL's JSONB, so the field order of the source
(used when exporting) is kept explicitly, as the order of ``stats["fields"]``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import dataset_examples, dataset_versions, datasets

__all__ = [
    "Dataset",
    "DatasetRepository",
    "DatasetStats",
    "DatasetVersion",
    "FieldRole",
    "FieldStats",
    "FieldStatsBuilder",
    "NumberSummary",
    "StoredExample",
    "json_type",
]

FieldRole = Literal["input", "label", "split", "extra"]
_CHUNK = 1000
_DISTINCT_CAP = 1000
_DISTRIBUTION_CAP = 20


@dataclass(frozen=True, slots=True)
class NumberSummary:
    """Minimum, mean and maximum of numbers (or of string lengths)."""

    min: float
    mean: float
    max: float

    def to_json(self) -> dict[str, float]:
        return {"min": self.min, "mean": self.mean, "max": self.max}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> NumberSummary | None:
        return None if data is None else cls(min=data["min"], mean=data["mean"], max=data["max"])


@dataclass(frozen=True, slots=True)
class FieldStats:
    """What one field holds across a version's examples.

    ``types`` counts JSON types (``string``, ``integer``, ``number``, ``boolean``, ``null``, ``array``,
    ``object``). ``distinct`` stops counting at a cap (``distinct_capped`` is then true).
    ``distribution`` lists ``(value, count)`` pairs, most frequent first, for label and split fields
    with few distinct scalar values; it is None otherwise.
    """

    name: str
    role: FieldRole
    present: int
    types: dict[str, int]
    length: NumberSummary | None
    number: NumberSummary | None
    distinct: int
    distinct_capped: bool
    distribution: tuple[tuple[Any, int], ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "present": self.present,
            "types": self.types,
            "length": self.length.to_json() if self.length else None,
            "number": self.number.to_json() if self.number else None,
            "distinct": self.distinct,
            "distinct_capped": self.distinct_capped,
            "distribution": None if self.distribution is None else [list(p) for p in self.distribution],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldStats:
        distribution = data.get("distribution")
        return cls(
            name=data["name"],
            role=data["role"],
            present=data["present"],
            types=dict(data["types"]),
            length=NumberSummary.from_json(data.get("length")),
            number=NumberSummary.from_json(data.get("number")),
            distinct=data["distinct"],
            distinct_capped=data["distinct_capped"],
            distribution=None if distribution is None else tuple((v, n) for v, n in distribution),
        )


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """Statistics of one version: counts, duplicates and one :class:`FieldStats` per field, in source order."""

    examples: int
    splits: dict[str, int]
    duplicates: int
    fields: tuple[FieldStats, ...]

    def field(self, name: str) -> FieldStats:
        """The stats of field ``name``: ``version.stats.field("answer").distribution``."""
        for stats in self.fields:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "examples": self.examples,
            "splits": self.splits,
            "duplicates": self.duplicates,
            "fields": [f.to_json() for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetStats:
        return cls(
            examples=data["examples"],
            splits=dict(data["splits"]),
            duplicates=data["duplicates"],
            fields=tuple(FieldStats.from_json(f) for f in data["fields"]),
        )


def json_type(value: Any) -> str:
    """The JSON type name of a plain JSON value: ``json_type(1.5) == "number"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


# --- computing statistics ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Summary:
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def result(self) -> NumberSummary | None:
        return NumberSummary(self.low, self.total / self.count, self.high) if self.count else None


@dataclass(slots=True)
class FieldStatsBuilder:
    """Accumulates one field's values, one at a time, into :class:`FieldStats`."""

    present: int = 0
    types: Counter[str] = field(default_factory=Counter)
    length: _Summary = field(default_factory=_Summary)
    number: _Summary = field(default_factory=_Summary)
    distinct: set[tuple[bool, str]] = field(default_factory=set)
    capped: bool = False
    counts: Counter[tuple[bool, str]] | None = field(default_factory=Counter)
    values: dict[tuple[bool, str], Any] = field(default_factory=dict)

    def add(self, value: Any) -> None:
        self.present += 1
        kind = json_type(value)
        self.types[kind] += 1
        if kind == "string":
            self.length.add(len(value))
        elif kind in ("integer", "number"):
            self.number.add(value)
        key = (True, value) if kind == "string" else (False, json.dumps(value, sort_keys=True))
        if not self.capped:
            self.distinct.add(key)
            self.capped = len(self.distinct) >= _DISTINCT_CAP
        if self.counts is not None:
            if kind in ("array", "object") or (
                key not in self.counts and len(self.counts) >= _DISTRIBUTION_CAP
            ):
                self.counts = None  # not a low-cardinality scalar field: no distribution
            else:
                self.counts[key] += 1
                self.values.setdefault(key, value)

    def result(self, name: str, role: FieldRole) -> FieldStats:
        distribution = None
        if self.counts is not None and role in ("label", "split"):
            distribution = tuple((self.values[k], n) for k, n in self.counts.most_common())
        return FieldStats(
            name=name,
            role=role,
            present=self.present,
            types=dict(self.types),
            length=self.length.result(),
            number=self.number.result(),
            distinct=len(self.distinct),
            distinct_capped=self.capped,
            distribution=distribution,
        )


@dataclass(frozen=True, slots=True)
class Dataset:
    """A named dataset: its description, timestamps, how many versions it has and the newest one."""

    name: str
    description: str
    created_at: dt.datetime
    updated_at: dt.datetime
    version_count: int
    latest_id: str | None


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One immutable version of a dataset.

    ``split_field`` is the field the split was read from (it is kept out of the examples' data and
    written back on export); ``split_fractions`` and ``split_seed`` describe a random split.
    """

    id: str
    dataset: str
    input_fields: tuple[str, ...]
    label_fields: tuple[str, ...]
    splits: dict[str, int]
    split_field: str | None
    split_fractions: dict[str, float] | None
    split_seed: int | None
    example_count: int
    stats: DatasetStats
    created_at: dt.datetime

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field in source order, the split field included."""
        return tuple(f.name for f in self.stats.fields)

    def to_json(self) -> dict[str, Any]:
        """The version as JSON (for APIs and the CLI): stats as stored, ``created_at`` in ISO 8601."""
        return {
            "id": self.id,
            "dataset": self.dataset,
            "input_fields": list(self.input_fields),
            "label_fields": list(self.label_fields),
            "splits": self.splits_json(),
            "example_count": self.example_count,
            "stats": self.stats.to_json(),
            "created_at": self.created_at.isoformat(),
        }

    def splits_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "counts": self.splits,
            "field": self.split_field,
            "fractions": self.split_fractions,
            "seed": self.split_seed,
        }

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> DatasetVersion:
        splits = row["splits"]
        return cls(
            id=row["id"],
            dataset=row["dataset"],
            input_fields=tuple(row["input_fields"]),
            label_fields=tuple(row["label_fields"]),
            splits=dict(splits["counts"]),
            split_field=splits.get("field"),
            split_fractions=splits.get("fractions"),
            split_seed=splits.get("seed"),
            example_count=row["example_count"],
            stats=DatasetStats.from_json(row["stats"]),
            created_at=aware(row["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class StoredExample:
    """One example row: its position in the version, content hash, split and data."""

    position: int
    example_hash: str
    split: str | None
    data: dict[str, Any]


class DatasetRepository:
    """Reads and writes the dataset tables. Thread-safe (each call takes its own connection)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_version(
        self, version: DatasetVersion, examples: Iterable[StoredExample], *, description: str = ""
    ) -> bool:
        """Store ``version`` and its examples in one transaction; False when that content already exists.

        The dataset row is created if needed (a non-empty ``description`` replaces the stored one).
        ``examples`` is consumed only when the version is new, in chunks, inside the transaction; if
        it raises, nothing is written.
        """
        insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        with self.db.write() as connection:
            upsert = insert(datasets).values(
                name=version.dataset, description=description, created_at=now, updated_at=now
            )
            connection.execute(
                upsert.on_conflict_do_update(
                    index_elements=["name"], set_={"description": upsert.excluded.description}
                )
                if description
                else upsert.on_conflict_do_nothing(index_elements=["name"])
            )
            # DO NOTHING makes the dedupe atomic: a concurrent import of the same content waits for
            # the first transaction and then inserts nothing, on both SQLite and PostgreSQL.
            created = connection.execute(
                insert(dataset_versions)
                .values(
                    id=version.id,
                    dataset=version.dataset,
                    input_fields=list(version.input_fields),
                    label_fields=list(version.label_fields),
                    splits=version.splits_json(),
                    stats=version.stats.to_json(),
                    example_count=version.example_count,
                    created_at=version.created_at,
                )
                .on_conflict_do_nothing(index_elements=["id"])
                # RETURNING, not rowcount: SQLAlchemy reports rowcount -1 for this statement on psycopg.
                .returning(dataset_versions.c.id)
            ).first()
            if created is None:
                return False
            rows = (
                {
                    "version_id": version.id,
                    "position": e.position,
                    "example_hash": e.example_hash,
                    "split": e.split,
                    "data": e.data,
                }
                for e in examples
            )
            while chunk := list(itertools.islice(rows, _CHUNK)):
                connection.execute(sa.insert(dataset_examples), chunk)
            connection.execute(
                sa.update(datasets).where(datasets.c.name == version.dataset).values(updated_at=now)
            )
        return True

    def get_dataset(self, name: str) -> Dataset | None:
        found = self.list_datasets(name=name)
        return found[0] if found else None

    def list_datasets(self, *, name: str | None = None) -> list[Dataset]:
        """Every dataset (or the one called ``name``), by name, with its version count and newest version."""
        v = dataset_versions.c
        newest = (
            sa.select(v.id)
            .where(v.dataset == datasets.c.name)
            .order_by(v.created_at.desc(), v.id)
            .limit(1)
            .scalar_subquery()
        )
        count = sa.select(sa.func.count()).where(v.dataset == datasets.c.name).scalar_subquery()
        query = sa.select(datasets, count.label("version_count"), newest.label("latest_id"))
        if name is not None:
            query = query.where(datasets.c.name == name)
        with self.db.read() as connection:
            rows = connection.execute(query.order_by(datasets.c.name)).mappings().all()
        return [
            Dataset(
                name=r["name"],
                description=r["description"],
                created_at=aware(r["created_at"]),
                updated_at=aware(r["updated_at"]),
                version_count=r["version_count"],
                latest_id=r["latest_id"],
            )
            for r in rows
        ]

    def versions(self, dataset: str) -> list[DatasetVersion]:
        """The versions of ``dataset``, newest first."""
        v = dataset_versions.c
        query = sa.select(dataset_versions).where(v.dataset == dataset).order_by(v.created_at.desc(), v.id)
        with self.db.read() as connection:
            return [DatasetVersion.from_row(row) for row in connection.execute(query).mappings()]

    def get_version(self, version_id: str) -> DatasetVersion | None:
        query = sa.select(dataset_versions).where(dataset_versions.c.id == version_id)
        with self.db.read() as connection:
            row = connection.execute(query).mappings().first()
        return DatasetVersion.from_row(row) if row is not None else None

    def version_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        query = (
            sa.select(dataset_versions.c.id)
            .where(dataset_versions.c.id.startswith(prefix, autoescape=True))
            .order_by(dataset_versions.c.id)
            .limit(limit)
        )
        with self.db.read() as connection:
            return list(connection.scalars(query))

    def examples(self, version_id: str, *, split: str | None = None) -> Iterator[StoredExample]:
        """The examples of a version (only those of ``split`` when given), in position order.

        Read in pages (keyset pagination on ``position``), so a large version is never held in memory
        by this iterator; versions are immutable, so pages from separate transactions are consistent.
        """
        e = dataset_examples.c
        position = -1
        while True:
            query = (
                sa.select(e.position, e.example_hash, e.split, e.data)
                .where(e.version_id == version_id, e.position > position)
                .order_by(e.position)
                .limit(_CHUNK)
            )
            if split is not None:
                query = query.where(e.split == split)
            with self.db.read() as connection:
                rows = connection.execute(query).all()
            for row in rows:
                yield StoredExample(row.position, row.example_hash, row.split, row.data)
            if len(rows) < _CHUNK:
                return
            position = rows[-1].position

    def delete_dataset(self, name: str) -> bool:
        """Delete a dataset with its versions and examples; False when there was none."""
        with self.db.write() as connection:
            # Delete children explicitly rather than rely on ON DELETE CASCADE (SQLite enforces it only
            # with the foreign_keys pragma, which a foreign connection may not have set).
            ids = sa.select(dataset_versions.c.id).where(dataset_versions.c.dataset == name)
            connection.execute(sa.delete(dataset_examples).where(dataset_examples.c.version_id.in_(ids)))
            connection.execute(sa.delete(dataset_versions).where(dataset_versions.c.dataset == name))
            return connection.execute(sa.delete(datasets).where(datasets.c.name == name)).rowcount > 0
