"""Property tests: any JSON (or any text, for CSV) survives import -> export -> import unchanged."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.programs.datasets import Datasets
from dspex.store import open_database

_names = itertools.count()
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.dictionaries(TEXT.filter(bool).filter(lambda k: k != "q"), JSON, max_size=4)
# Settings shared by the tests below: one database per test function, a fresh dataset name per example.
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Datasets]:
    db = open_database(f"sqlite:///{tmp_path / 'property.db'}")
    yield Datasets(db)
    db.dispose()


@SETTINGS
@given(rows=st.lists(st.tuples(TEXT, FIELDS), min_size=1, max_size=6))
def test_jsonl_round_trip(ds: Datasets, tmp_path: Path, rows: list[tuple[str, dict[str, Any]]]) -> None:
    name = f"p{next(_names)}"
    records = [{"q": q, **fields} for q, fields in rows]
    version = ds.import_records(name, records, inputs=["q"], labels=[])
    assert [e.toDict() for e in ds.examples(version)] == records
    path = tmp_path / f"{name}.jsonl"
    ds.export(version, path)
    assert ds.import_file(name, path, inputs=["q"], labels=[]).id == version.id
    # Key order is not content: the same records with reversed keys are the same version.
    reordered = [dict(reversed(list(r.items()))) for r in records]
    assert ds.import_records(name, reordered, inputs=["q"], labels=[]).id == version.id


@SETTINGS
@given(rows=st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=1, max_size=6))
def test_csv_round_trip(ds: Datasets, tmp_path: Path, rows: list[tuple[str, str, str]]) -> None:
    name = f"p{next(_names)}"
    records = [{"q": q, "a": a, "note": note} for q, a, note in rows]
    version = ds.import_records(name, records, inputs=["q"])
    path = tmp_path / f"{name}.csv"
    ds.export(version, path)
    again = ds.import_file(name, path, inputs=["q"])
    assert again.id == version.id
    assert [e.toDict() for e in ds.examples(again)] == records
