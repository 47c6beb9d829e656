"""Schemathesis against the live service's OpenAPI document: no generated request may cause a 5xx.

Bounded for CI: a few derandomized examples per operation, no deadline. The service runs on real uvicorn
with an admin key, a registered program ``qa`` and a dataset ``qa-set``, so generated requests reach the
handlers (and the run path) rather than stopping at authentication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from server_support import QA_SPEC

from conftest import Live
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture
def fuzzed(tmp_path: Path, serve: Callable[..., Live]) -> Iterator[tuple[Live, str]]:
    engine = ScriptedEngine({"answer": "42"})
    with App(Settings(database_url=f"sqlite:///{tmp_path / 'fuzz.db'}"), lm=engine.lm()) as app:
        app.programs.register("qa", QA_SPEC)
        app.datasets.import_records("qa-set", [{"question": "q", "answer": "a"}], inputs=["question"])
        _, key = app.keys.create("fuzzer", ["admin"])
        yield serve(app), key


@pytest.fixture
def api_schema(fuzzed: tuple[Live, str]) -> Any:
    live, _ = fuzzed
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_causes_a_server_error(case: Any, fuzzed: tuple[Live, str]) -> None:
    live, key = fuzzed
    case.call_and_validate(
        base_url=live.url, headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error], timeout=30
    )
