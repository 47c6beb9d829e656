"""Reading and writing dataset files: JSONL, JSON (an array or JSON lines) and CSV.

Readers yield ``(where, raw record)`` pairs, ``where`` naming the line or row for error messages; they are
called once per import pass and stream the file. Writers are the inverse, used by export.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from dspex.errors import ConfigurationError, ValidationError
from dspex.store.datasets import json_type

__all__ = ["READERS", "FileFormat", "format_of", "write_records"]

FileFormat = Literal["jsonl", "json", "csv"]
_SUFFIXES: dict[str, FileFormat] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON; use null or a number")


# --- readers: each yields (where, raw record) and is called once per pass ---------------------------------


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_no_constants)
            except ValueError as exc:
                raise ValidationError(
                    f"{path.name} line {number}: not valid JSON ({exc}); each line must hold one JSON object"
                ) from None
            yield f"line {number}", record


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig") as handle:
        head = handle.read(4096).lstrip()
    if not head.startswith("["):  # a .json file of JSON lines
        yield from _jsonl_records(path)
        return
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"), parse_constant=_no_constants)
    except ValueError as exc:
        raise ValidationError(f"{path.name}: not valid JSON ({exc})") from None
    for index, item in enumerate(items, start=1):
        yield f"record {index}", item


def _csv_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        for column, name in enumerate(header, start=1):
            if not name:
                raise ValidationError(f"{path.name} line 1: column {column} of the header has no name")
        duplicates = sorted({n for n in header if header.count(n) > 1})
        if duplicates:
            raise ValidationError(f"{path.name} line 1: the header repeats {', '.join(duplicates)}")
        start = reader.line_num + 1
        for row in reader:
            where, start = f"line {start}", reader.line_num + 1  # a quoted value may span lines
            if not row:
                continue
            if len(row) != len(header):
                raise ValidationError(
                    f"{path.name} {where}: {len(row)} values but the header has {len(header)} columns "
                    f"({', '.join(header)}); quote values that contain commas"
                )
            yield where, dict(zip(header, row, strict=True))


READERS: dict[FileFormat, Callable[[Path], Iterator[tuple[str, Any]]]] = {
    "jsonl": _jsonl_records,
    "json": _json_records,
    "csv": _csv_records,
}


def format_of(path: Path, given: str | None, *, allowed: Sequence[str]) -> FileFormat:
    fmt = given or _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigurationError(
            f"cannot tell the format of {path.name} from its suffix; pass format= one of {', '.join(allowed)}"
        )
    if fmt not in allowed:
        raise ConfigurationError(f"unknown format {fmt!r}; use one of {', '.join(allowed)}")
    return fmt  # type: ignore[return-value]  # checked against `allowed`, a subset of FileFormat


def write_records(out: IO[str], fmt: str, records: Iterable[dict[str, Any]], order: Sequence[str]) -> int:
    written = 0
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
        return written
    # RFC 4180 line ends: with "\n" alone, Python's writer leaves a value holding "\r" unquoted.
    writer = csv.writer(out)
    writer.writerow(order)
    for record in records:
        written += 1
        writer.writerow(_csv_row(record, order, written))
    return written


def _csv_row(record: Mapping[str, Any], order: Sequence[str], number: int) -> list[str]:
    row = []
    for name in order:
        value = record.get(name)
        if not isinstance(value, str):
            problem = "has no field" if name not in record else f"holds a JSON {json_type(value)} in field"
            raise ValidationError(
                f"example {number} {problem} {name!r}; CSV holds text only, so export as format='jsonl' "
                "to keep the records exact"
            )
        row.append(value)
    return row
