"""Schemathesis against the live service's OpenAPI document, with every check but one.

No generated request may cause a 5xx (but the documented 504 ``deadline_exceeded`` of a run whose own
``timeout`` it set too short), get a status, content type or body the document does not declare, or be accepted when it violates the schema (``until=0.5``, ``"replace": 0``). The one check
left out is ``positive_data_acceptance``: run inputs and dataset records are checked against each
program's own signature and the upload's own field list, which a static schema cannot express, so a
schema-valid ``{"inputs": {}}`` is rightly a 422 naming the missing field.

Bounded for CI: 15 derandomized examples per operation (40 found nothing either), no deadline. The service runs on real uvicorn
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
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from server_support import QA_SPEC

from conftest import Live
from dspex.runtime.app import App
from dspex.server import ServiceOptions
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture
def fuzzed(tmp_path: Path, serve: Callable[..., Live]) -> Iterator[tuple[Live, str]]:
    engine = ScriptedEngine({"answer": "42"})
    with App(Settings(database_url=f"sqlite:///{tmp_path / 'fuzz.db'}"), lm=engine.lm()) as app:
        app.programs.register("qa", QA_SPEC)
        app.datasets.import_records("qa-set", [{"question": "q", "answer": "a"}], inputs=["question"])
        _, key = app.keys.create("fuzzer", ["admin"])
        # Streams that follow the store (/v1/signals) end after events_timeout_s: keep it short.
        yield serve(app, options=ServiceOptions(events_poll_s=0.05, ping_s=5.0, events_timeout_s=0.2)), key


@pytest.fixture
def api_schema(fuzzed: tuple[Live, str]) -> Any:
    live, _ = fuzzed
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except a run that passed the deadline its own request set (a 504 saying
    so): a generated ``"timeout": 5e-324`` is a request for exactly that."""
    if response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded":
        return None
    return not_a_server_error(ctx, response, case)  # type: ignore[no-any-return]


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_service_keeps_its_openapi_contract(case: Any, fuzzed: tuple[Live, str]) -> None:
    live, key = fuzzed
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {key}"},
        excluded_checks=[positive_data_acceptance, not_a_server_error],
        timeout=30,
    )
