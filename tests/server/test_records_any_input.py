"""Runs whose inputs the stores cannot hold as given: the record is stored normalised, listings keep working."""

from __future__ import annotations

import json
from typing import Any

import httpx
import sqlalchemy as sa

from dspex.runtime.app import App

# What a client sends: a 22-digit integer, \u0000, a lone \ud800 and a bare NaN (Python's json accepts it).
BAD_INPUTS: list[tuple[Any, Any]] = [
    (2**70, str(2**70)),
    ("nul \x00 here", "nul \ufffd here"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    (float("nan"), None),
]


def _post(admin: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload)  # escaped ASCII: httpx's own encoder refuses lone surrogates
    return admin.post("/v1/programs/qa/runs", content=body, headers={"Content-Type": "application/json"})


def test_bad_inputs_are_recorded_and_listings_keep_working(
    admin: httpx.Client, qa: dict[str, Any], dspex_app: App
) -> None:
    stored = {}
    for value, expected in BAD_INPUTS:
        response = _post(admin, {"inputs": {"question": value}, "durability": "sync"})
        body = response.json()
        # The lone surrogate reaches DSPy, which refuses to send it to a provider: a failed run, recorded.
        assert response.status_code in (200, 502), response.text
        execution_id = body.get("execution_id") or body["error"]["execution_id"]
        stored[execution_id] = expected
    listing = admin.get("/v1/executions")
    assert listing.status_code == 200, listing.text
    items = {item["id"]: item for item in listing.json()["items"]}
    assert set(items) == set(stored)
    for execution_id, expected in stored.items():
        assert items[execution_id]["inputs"] == {"question": expected}
        assert items[execution_id]["status"] in ("succeeded", "failed")
        shown = admin.get(f"/v1/executions/{execution_id}")
        assert shown.status_code == 200, shown.text


def test_an_old_row_with_a_huge_integer_does_not_break_listings(
    admin: httpx.Client, qa: dict[str, Any], dspex_app: App
) -> None:
    response = _post(admin, {"inputs": {"question": "fine"}, "durability": "sync"})
    execution_id = response.json()["execution_id"]
    # A row as stores before the normaliser wrote it: the integer as a JSON number.
    raw = '{"question": 1180591620717411303424}'
    db = dspex_app.executions.db
    value = sa.text("CAST(:raw AS JSONB)" if db.dialect == "postgresql" else ":raw")
    with db.write() as connection:
        connection.execute(
            sa.text(f"UPDATE executions SET inputs = {value.text}, outputs = {value.text} WHERE id = :id"),
            {"raw": raw, "id": execution_id},
        )
    listing = admin.get("/v1/executions")
    assert listing.status_code == 200, listing.text
    (item,) = listing.json()["items"]
    assert item["inputs"] == {"question": "1180591620717411303424"}
    assert admin.get(f"/v1/executions/{execution_id}").status_code == 200


def test_durability_in_the_run_body_is_checked(admin: httpx.Client, qa: dict[str, Any]) -> None:
    response = _post(admin, {"inputs": {"question": "x"}, "durability": "eventually"})
    assert response.status_code == 422, response.text
    assert "durability" in response.text


def test_a_sync_stream_sends_its_result_once_the_record_is_committed(
    admin: httpx.Client, qa: dict[str, Any], dspex_app: App
) -> None:
    from server_support import sse

    writer = dspex_app._open().writer
    writer.linger = 30.0  # async records would sit in memory for 30 s; sync skips the wait
    body = {"inputs": {"question": "streamed"}, "durability": "sync"}
    response = admin.post("/v1/programs/qa/runs/stream", json=body)
    assert response.status_code == 200, response.text
    events = sse(response.text)
    (result,) = [data for event, data in events if event == "result"]
    record = dspex_app.executions.get(result["execution_id"])
    assert record is not None
    assert record.status == "succeeded"
