"""Datasets: import examples from JSONL, CSV or Python, keep them as versions, hand them to DSPy.

::

    datasets = Datasets(db)
    version = datasets.import_file("qa", "qa.jsonl", inputs=["question"], split={"train": 0.8, "dev": 0.2})
    trainset = datasets.examples("qa", split="train")      # dspy.Example objects, .with_inputs("question")
    datasets.export("qa", "qa-copy.csv")

An import reads its source twice: the first pass validates every example and computes the content
hashes, the split and the statistics (so errors name the line before anything is written); the second
pass streams the examples into the database in chunks. A file is re-read rather than held in memory;
records given in Python are kept in a list between the passes. Identical content gives the same version
id, so re-importing is free and writes nothing.

Hashes: an example's hash is the SHA-256 of its data as canonical JSON (sorted keys, no spaces); a
version's id is the SHA-256 of the dataset name, the declared fields and the ordered list of
``(example hash, split)``.
"""

from __future__ import annotations

import builtins  # `list` is also a method name of Datasets
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dspex.errors import ConfigurationError, ValidationError, did_you_mean
from dspex.jsonable import canonical_hash
from dspex.programs._dataset_files import READERS, FileFormat, format_of, write_records
from dspex.store._engine import Database
from dspex.store.datasets import (
    Dataset,
    DatasetRepository,
    DatasetStats,
    DatasetVersion,
    FieldRole,
    FieldStats,
    FieldStatsBuilder,
    NumberSummary,
    StoredExample,
    json_type,
)

if TYPE_CHECKING:
    import dspy

__all__ = [
    "Dataset",
    "DatasetStats",
    "DatasetVersion",
    "Datasets",
    "FieldStats",
    "FileFormat",
    "NumberSummary",
    "example_hash",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_SPLIT_MAX = 64  # dataset_examples.split is VARCHAR(64)

# (where, record): "where" names the example in error messages ("line 7", "record 3").
_Records = Callable[[], Iterator[tuple[str, Any]]]


def example_hash(data: Mapping[str, Any]) -> str:
    """The content hash of one example: ``example_hash({"q": "hi"}) == example_hash({"q": "hi"})``."""
    return canonical_hash(data)


def _plain(value: Any, where: str, path: str) -> Any:
    """``value`` as plain JSON (tuples become lists), or a ValidationError that names where it is."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL cannot store NUL in JSON text; refuse it on every database
            raise ValidationError(f"{where}: {path} contains a NUL character (\\x00); remove it")
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                msg = (
                    f"{where}: {path} contains a lone surrogate, which is not valid Unicode; fix its encoding"
                )
                raise ValidationError(msg) from None
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where}: {path} is {value}, which JSON cannot hold; use null or a number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}: {path} has a non-string key {key!r}; JSON keys are strings")
            out[key] = _plain(item, where, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, where, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValidationError(
        f"{where}: {path} is a {type(value).__name__}; only JSON values (str, int, float, bool, None, "
        "list, dict) are stored, so convert it first"
    )


def _record(raw: Any, where: str) -> dict[str, Any]:
    to_dict = getattr(raw, "toDict", None)  # a dspy.Example
    if callable(to_dict):
        raw = to_dict()
    if not isinstance(raw, Mapping):
        kind = json_type(raw) if isinstance(raw, str | int | float | list) or raw is None else None
        got = f"a JSON {kind}" if kind else f"a {type(raw).__name__}"
        raise ValidationError(f"{where}: an example must be a JSON object (a dict), got {got}")
    if not raw:
        raise ValidationError(f"{where}: the example has no fields")
    record = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"{where}: field names must be non-empty strings, got {key!r}")
        record[key] = _plain(value, where, f"field {key!r}")
    return record


# --- the first pass --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Scan:
    """What the first pass learns: fields in source order, where each is first missing, hashes, splits."""

    split_field: str | None
    fields: dict[str, FieldStatsBuilder] = field(default_factory=dict)
    first_where: str = ""
    first_missing: dict[str, str] = field(default_factory=dict)
    hashes: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)

    def add(self, where: str, record: dict[str, Any]) -> None:
        if not self.hashes:
            self.first_where = where
        for name in self.fields.keys() - record.keys():
            self.first_missing.setdefault(name, where)
        for name, value in record.items():
            if name not in self.fields:
                self.fields[name] = FieldStatsBuilder()
                if self.hashes:  # a field that earlier examples lacked
                    self.first_missing.setdefault(name, self.first_where)
            self.fields[name].add(value)
        split, data = _take_split(record, self.split_field, where)
        self.splits.append(split)
        self.hashes.append(example_hash(data))


def _take_split(
    record: dict[str, Any], split_field: str | None, where: str
) -> tuple[str | None, dict[str, Any]]:
    if split_field is None:
        return None, record
    if split_field not in record:
        raise ValidationError(f"{where}: the example has no split field {split_field!r}; add it")
    data = dict(record)
    split = data.pop(split_field)
    if not isinstance(split, str) or not split or len(split) > _SPLIT_MAX:
        raise ValidationError(
            f"{where}: split field {split_field!r} is {split!r}; a split is a name (a non-empty string of at "
            f"most {_SPLIT_MAX} characters) such as 'train'"
        )
    return split, data


def _assign_fractions(hashes: Sequence[str], fractions: Mapping[str, float], seed: int) -> list[str]:
    """Deterministic split by fractions: order examples by a seeded hash of their content, then cut.

    The order depends only on the content and the seed, so the same examples land in the same splits
    however often they are imported. Duplicates sort next to each other, so they share a split unless
    they straddle a cut.
    """
    n = len(hashes)
    exact = [n * f for f in fractions.values()]
    counts = [math.floor(x) for x in exact]
    # Largest remainder: hand the leftover examples to the splits that lost the most to rounding.
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    salt = f"{seed}:".encode()
    order = sorted(range(n), key=lambda p: (hashlib.sha256(salt + hashes[p].encode()).digest(), p))
    assigned = [""] * n
    names = [name for name, count in zip(fractions, counts, strict=True) for _ in range(count)]
    for position, name in zip(order, names, strict=True):
        assigned[position] = name
    return assigned


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise ConfigurationError("split= is an empty mapping; give fractions: {'train': 0.8, 'dev': 0.2}")
    for name, value in fractions.items():
        if not isinstance(name, str) or not name or len(name) > _SPLIT_MAX:
            raise ConfigurationError(f"split name {name!r} must be a string of 1 to {_SPLIT_MAX} chars")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigurationError(f"split {name!r} is {value!r}; fractions are numbers in (0, 1]")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigurationError(f"split fractions add up to {total:g}, not 1: {dict(fractions)}")
    return {name: float(value) for name, value in fractions.items()}


def _check_declaration(
    name: str, inputs: Sequence[str], labels: Sequence[str] | None, split_field: str | None
) -> None:
    if not _NAME.match(name):
        raise ConfigurationError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-' (at most 200), "
            "starting with a letter or digit"
        )
    if isinstance(inputs, str) or (labels is not None and isinstance(labels, str)):
        raise ConfigurationError("inputs= and labels= are lists of field names, e.g. inputs=['question']")
    if not inputs:
        raise ConfigurationError("declare at least one input field: inputs=['question']")
    for what, names in (("inputs", inputs), ("labels", labels or ())):
        repeated = sorted({n for n in names if list(names).count(n) > 1})
        if repeated:
            raise ConfigurationError(f"{what} lists {', '.join(repeated)} more than once")
    both = sorted(set(inputs) & set(labels or ()))
    if both:
        raise ConfigurationError(f"{', '.join(both)} declared as both input and label; choose one")
    if split_field is not None and split_field in {*inputs, *(labels or ())}:
        raise ConfigurationError(
            f"split field {split_field!r} is also declared as an input or label; the split field only says "
            "which split an example belongs to"
        )


def _version_id(
    name: str, inputs: Sequence[str], labels: Sequence[str], split_field: str | None, scan: _Scan
) -> str:
    digest = hashlib.sha256(json.dumps([name, list(inputs), list(labels), split_field]).encode())
    for example, split in zip(scan.hashes, scan.splits, strict=True):
        digest.update(f"\n{example}\t{split or ''}".encode())
    return digest.hexdigest()


class Datasets:
    """Import, version, read and export datasets. Thread-safe; one per :class:`Database`.

    >>> datasets = Datasets(db)
    >>> v = datasets.import_records("qa", [{"question": "2+2?", "answer": "4"}], inputs=["question"])
    >>> datasets.examples("qa")[0].inputs().keys()
    dict_keys(['question'])
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.repository = DatasetRepository(db)

    # --- import ------------------------------------------------------------------------------------------------

    def import_records(
        self,
        name: str,
        records: Iterable[Mapping[str, Any] | dspy.Example],
        *,
        inputs: Sequence[str],
        labels: Sequence[str] | None = None,
        split: str | Mapping[str, float] | None = None,
        seed: int = 0,
        description: str = "",
    ) -> DatasetVersion:
        """Import dicts (or ``dspy.Example`` objects) as a version of dataset ``name``.

        ``labels`` defaults to every field that is neither an input nor the split field. ``split`` is
        None (no splits), fractions (``{"train": 0.8, "dev": 0.2}``, cut deterministically with
        ``seed``) or the name of a field that holds each example's split. ::

            datasets.import_records("qa", rows, inputs=["question"], split={"train": 0.8, "dev": 0.2})
        """
        items = list(records)

        def read() -> Iterator[tuple[str, Any]]:
            return ((f"record {i}", raw) for i, raw in enumerate(items, start=1))

        return self._import(name, read, inputs, labels, split, seed, description)

    def import_file(
        self,
        name: str,
        path: str | Path,
        *,
        format: FileFormat | None = None,
        inputs: Sequence[str],
        labels: Sequence[str] | None = None,
        split: str | Mapping[str, float] | None = None,
        seed: int = 0,
        description: str = "",
    ) -> DatasetVersion:
        """Import a JSONL, JSON (an array, or JSON lines) or CSV file; the format comes from the suffix.

        CSV values are strings. The file is streamed (read twice, never held in memory). ::

            datasets.import_file("qa", "qa.csv", inputs=["question"], labels=["answer"], split="fold")
        """
        source = Path(path)
        reader = READERS[format_of(source, format, allowed=tuple(READERS))]
        if not source.is_file():
            raise ConfigurationError(f"no such file: {source}")

        def read() -> Iterator[tuple[str, Any]]:
            return ((f"{source.name} {where}", raw) for where, raw in reader(source))

        return self._import(name, read, inputs, labels, split, seed, description)

    def _import(
        self,
        name: str,
        read: _Records,
        inputs: Sequence[str],
        labels: Sequence[str] | None,
        split: str | Mapping[str, float] | None,
        seed: int,
        description: str,
    ) -> DatasetVersion:
        split_field = split if isinstance(split, str) else None
        fractions = _check_fractions(split) if isinstance(split, Mapping) else None
        _check_declaration(name, inputs, labels, split_field)
        scan = _Scan(split_field)
        for where, raw in read():
            scan.add(where, _record(raw, where))
        if not scan.hashes:
            raise ValidationError(f"dataset {name!r}: the source has no examples; add at least one")
        available = [f for f in scan.fields if f != split_field]
        if labels is None:
            labels = [f for f in available if f not in inputs]
        for what, names in (("input field", inputs), ("label field", labels)):
            for declared in names:
                if declared not in scan.fields or declared == split_field:
                    raise ConfigurationError(did_you_mean(declared, available, what=what))
                if declared in scan.first_missing:
                    raise ValidationError(
                        f"{scan.first_missing[declared]}: the example has no field {declared!r}; every example "
                        f"needs every input and label field (add it, or leave it out of labels=)"
                    )
        if fractions is not None:
            scan.splits = list(_assign_fractions(scan.hashes, fractions, seed))
        counts: dict[str, int] = dict.fromkeys(fractions or {}, 0)
        for split_name in scan.splits:
            if split_name is not None:
                counts[split_name] = counts.get(split_name, 0) + 1
        roles: dict[str, FieldRole] = {
            **dict.fromkeys(scan.fields, "extra"),
            **dict.fromkeys(labels, "label"),
            **dict.fromkeys(inputs, "input"),
            **({split_field: "split"} if split_field else {}),
        }
        stats = DatasetStats(
            examples=len(scan.hashes),
            splits=counts,
            duplicates=len(scan.hashes) - len(set(scan.hashes)),
            fields=tuple(acc.result(f, roles[f]) for f, acc in scan.fields.items()),
        )
        version = DatasetVersion(
            id=_version_id(name, inputs, labels, split_field, scan),
            dataset=name,
            input_fields=tuple(inputs),
            label_fields=tuple(labels),
            splits=counts,
            split_field=split_field,
            split_fractions=fractions,
            split_seed=seed if fractions is not None else None,
            example_count=len(scan.hashes),
            stats=stats,
            created_at=dt.datetime.now(dt.UTC),
        )
        self.repository.add_version(version, self._rows(read, scan), description=description)
        stored = self.repository.get_version(version.id)
        assert stored is not None  # written above or by an earlier import of the same content
        return stored

    @staticmethod
    def _rows(read: _Records, scan: _Scan) -> Iterator[StoredExample]:
        for position, (where, raw) in enumerate(read()):
            _, data = _take_split(_record(raw, where), scan.split_field, where)
            digest = example_hash(data)
            if position >= len(scan.hashes) or digest != scan.hashes[position]:
                raise ValidationError(f"{where}: the source changed during the import; import it again")
            yield StoredExample(position, digest, scan.splits[position], data)

    # --- read --------------------------------------------------------------------------------------------------

    def list(self) -> builtins.list[Dataset]:
        """Every dataset, by name: ``[d.name for d in datasets.list()]``."""
        return self.repository.list_datasets()

    def versions(self, name: str) -> builtins.list[DatasetVersion]:
        """The versions of dataset ``name``, newest first."""
        self._dataset(name)
        return self.repository.versions(name)

    def latest(self, name: str) -> DatasetVersion:
        """The newest version of dataset ``name``. Re-importing older content does not make it newest."""
        latest_id = self._dataset(name).latest_id
        version = self.repository.get_version(latest_id) if latest_id else None
        if version is None:
            raise ConfigurationError(f"dataset {name!r} has no versions; import one")
        return version

    def version(self, version_id: str) -> DatasetVersion:
        """A version by id, or by a unique prefix of at least 8 characters: ``datasets.version("3fa1c09e")``."""
        ids = [version_id] if len(version_id) == 64 else []
        if not ids and _HEX.match(version_id):
            ids = self.repository.version_ids_with_prefix(version_id)
        if len(ids) > 1:
            raise ConfigurationError(f"version prefix {version_id!r} is ambiguous; give more characters")
        version = self.repository.get_version(ids[0]) if ids else None
        if version is None:
            raise ConfigurationError(f"no dataset version {version_id!r}; datasets.versions(name) lists them")
        return version

    def resolve(self, name_or_version: str | DatasetVersion) -> DatasetVersion:
        """A version from a dataset name (its latest), a version id or prefix, or ``name@id-prefix``."""
        if isinstance(name_or_version, DatasetVersion):
            return name_or_version
        name, _, prefix = name_or_version.partition("@")
        if prefix:
            version = self.version(prefix)
            if version.dataset != name:
                raise ConfigurationError(
                    f"version {prefix!r} is of dataset {version.dataset!r}, not {name!r}"
                )
            return version
        if self.repository.get_dataset(name) is not None:
            return self.latest(name)
        if _HEX.match(name):
            return self.version(name)
        raise ConfigurationError(did_you_mean(name, [d.name for d in self.list()], what="dataset"))

    def examples(
        self, name_or_version: str | DatasetVersion, split: str | None = None
    ) -> builtins.list[dspy.Example]:
        """The examples as ``dspy.Example`` objects with their inputs declared, in import order.

        >>> trainset = datasets.examples("qa", split="train")
        >>> trainset[0].inputs().keys(), trainset[0].labels().keys()
        (dict_keys(['question']), dict_keys(['answer']))
        """
        import dspy  # deferred: DSPy is heavy and only needed here

        version = self.resolve(name_or_version)
        self._check_split(version, split)
        inputs = version.input_fields
        return [
            dspy.Example(**e.data).with_inputs(*inputs)
            for e in self.repository.examples(version.id, split=split)
        ]

    def delete(self, name: str) -> bool:
        """Delete dataset ``name`` with all its versions; False when there was none."""
        return self.repository.delete_dataset(name)

    # --- export ------------------------------------------------------------------------------------------------

    def export(
        self,
        name_or_version: str | DatasetVersion,
        path: str | Path,
        *,
        format: Literal["jsonl", "csv"] | None = None,
        split: str | None = None,
        with_split: bool | str = True,
    ) -> int:
        """Write a version's examples back to a JSONL or CSV file; returns how many were written.

        The records are the imported ones, fields in source order, so importing the file again with
        the same declaration gives the same version id. ``with_split``: True writes each example's
        split back into the split field it was imported from (if any); a field name writes it into
        that field (freezing a random split); False leaves it out. ::

            datasets.export("qa", "qa.jsonl", split="dev", with_split=False)
        """
        target = Path(path)
        fmt = format_of(
            target,
            format or ("jsonl" if target.suffix.lower() != ".csv" else "csv"),
            allowed=("jsonl", "csv"),
        )
        version = self.resolve(name_or_version)
        self._check_split(version, split)
        split_field = version.split_field if with_split is True else (with_split or None)
        if split_field is not None and not version.splits:
            raise ConfigurationError(f"version {version.id[:12]} has no splits; leave with_split out")
        order = [f for f in version.fields if f != version.split_field]
        if split_field is not None:
            if split_field in order:
                raise ConfigurationError(f"with_split={split_field!r} is already a field of the examples")
            at = version.fields.index(split_field) if split_field == version.split_field else len(order)
            order.insert(at, split_field)
        records = (_ordered(e, order, split_field) for e in self.repository.examples(version.id, split=split))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so a failed export never leaves half a file behind.
        partial = target.with_name(target.name + ".part")
        try:
            with partial.open("w", encoding="utf-8", newline="") as out:
                written = write_records(out, fmt, records, order)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    # --- helpers -----------------------------------------------------------------------------------------------

    def _dataset(self, name: str) -> Dataset:
        dataset = self.repository.get_dataset(name)
        if dataset is None:
            raise ConfigurationError(did_you_mean(name, [d.name for d in self.list()], what="dataset"))
        return dataset

    @staticmethod
    def _check_split(version: DatasetVersion, split: str | None) -> None:
        if split is None or split in version.splits:
            return
        if not version.splits:
            raise ConfigurationError(f"version {version.id[:12]} has no splits; leave split= out")
        raise ConfigurationError(did_you_mean(split, version.splits, what="split"))


def _ordered(example: StoredExample, order: Sequence[str], split_field: str | None) -> dict[str, Any]:
    data = {**example.data, split_field: example.split} if split_field else example.data
    return {name: data[name] for name in order if name in data}
