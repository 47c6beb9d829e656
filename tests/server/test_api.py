"""The REST service end to end, against real uvicorn on 127.0.0.1: programs, runs, streams, records,
datasets, jobs, health, metrics and the OpenAPI document."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC, sse

from conftest import Live
from dspex.runtime.app import App


def _execution(client: httpx.Client, execution_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/executions/{execution_id}")
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


# -- programs ----------------------------------------------------------------------------------------------


def test_register_list_show_versions(admin: httpx.Client, qa: dict[str, Any]) -> None:
    assert qa["program"] == "qa"
    assert qa["status"] == "draft"
    assert "state" not in qa
    listed = admin.get("/v1/programs").json()
    assert [p["name"] for p in listed] == ["qa"]
    assert listed[0]["versions"] == 1
    assert listed[0]["source"]["spec"] == QA_SPEC
    shown = admin.get("/v1/programs/qa").json()
    assert shown["default_version"] == qa["id"]
    assert shown["production_version"] is None
    versions = admin.get("/v1/programs/qa/versions").json()
    assert [v["id"] for v in versions] == [qa["id"]]
    # The same spec again is fine; another spec needs replace.
    assert admin.post("/v1/programs", json={"name": "qa", "spec": QA_SPEC}).status_code == 201
    other = {"module": "chain_of_thought", "signature": "question -> answer"}
    conflict = admin.post("/v1/programs", json={"name": "qa", "spec": other})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"
    replaced = admin.post("/v1/programs", json={"name": "qa", "spec": other, "replace": True})
    assert replaced.status_code == 201
    assert len(admin.get("/v1/programs/qa/versions").json()) == 2


def test_promote_and_rollback(admin: httpx.Client, qa: dict[str, Any]) -> None:
    promoted = admin.post(f"/v1/programs/qa/versions/{qa['id'][:12]}/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "production"
    assert admin.get("/v1/programs/qa").json()["production_version"] == qa["id"]
    # Nothing was production before: nothing to roll back to.
    rollback = admin.post("/v1/programs/qa/rollback")
    assert rollback.status_code == 409
    assert admin.post("/v1/programs/qa/versions/ffffffffffff/promote").status_code == 404
    assert admin.post("/v1/programs/nope/rollback").status_code == 404


def test_bad_specs_are_422_with_the_path(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/programs", json={"name": "x", "spec": {"module": "predict", "signatur": "a -> b"}}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "spec_error"
    assert error["path"] == "signatur"
    unknown = admin.post(
        "/v1/programs", json={"name": "x", "spec": {"module": "chain_of_thougt", "signature": "a -> b"}}
    )
    assert unknown.status_code == 422
    assert "chain_of_thought" in unknown.json()["error"]["message"]
    bad_name = admin.post("/v1/programs", json={"name": "no spaces", "spec": QA_SPEC})
    assert bad_name.status_code == 422
    assert bad_name.json()["error"]["field"] == "name"
    assert admin.get("/v1/programs/nope").status_code == 404


# -- runs ---------------------------------------------------------------------------------------------------


def test_run_returns_outputs_and_records_it(admin: httpx.Client, qa: dict[str, Any], dspex_app: App) -> None:
    response = admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "2 + 2?"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"] == {"answer": "answer to 2 + 2?"}
    assert body["cache_hit"] is False
    assert body["duration_ms"] > 0
    assert body["usage"]["scripted/default"]["calls"] == 1
    record = _execution(admin, body["execution_id"])
    assert record["status"] == "succeeded"
    assert record["program"] == "qa"
    assert record["version_id"] == qa["id"]
    assert record["trace"]["spans"]
    pinned = admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "hi"}, "version": qa["id"][:10]})
    assert pinned.status_code == 200


def test_the_program_cache_is_turned_on_and_off_over_the_api(admin: httpx.Client, qa: dict[str, Any]) -> None:
    on = admin.put("/v1/programs/qa/cache", json={"ttl_s": 600})
    assert on.status_code == 200, on.text
    assert on.json()["cache_ttl_s"] == 600
    runs = [
        admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "cached?"}}).json() for _ in range(2)
    ]
    assert [r["cache_hit"] for r in runs] == [False, True]
    assert runs[0]["outputs"] == runs[1]["outputs"]
    hit = _execution(admin, runs[1]["execution_id"])
    assert (hit["status"], hit["cache_hit"]) == ("succeeded", True)
    assert admin.put("/v1/programs/qa/cache", json={"ttl_s": 0}).status_code == 422
    assert admin.put("/v1/programs/nope/cache", json={"ttl_s": 5}).status_code == 404
    off = admin.put("/v1/programs/qa/cache", json={"ttl_s": None})
    assert off.json()["cache_ttl_s"] is None
    again = admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "cached?"}}).json()
    assert again["cache_hit"] is False


def test_bad_run_inputs(admin: httpx.Client, qa: dict[str, Any]) -> None:
    # Malformed JSON: 422 naming the body.
    broken = admin.post(
        "/v1/programs/qa/runs", content=b'{"inputs": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["error"]["field"] == "body"
    # A missing or mistyped field of the request: 422 naming it.
    missing = admin.post("/v1/programs/qa/runs", json={"input": {}})
    assert missing.status_code == 422
    assert {i["field"] for i in missing.json()["error"]["issues"]} >= {"inputs", "input"}
    wrong = admin.post("/v1/programs/qa/runs", json={"inputs": "question"})
    assert wrong.status_code == 422
    assert wrong.json()["error"]["field"] == "inputs"
    # Unknown program or version: 404.
    assert admin.post("/v1/programs/nope/runs", json={"inputs": {}}).status_code == 404
    unknown_version = admin.post(
        "/v1/programs/qa/runs", json={"inputs": {"question": "x"}, "version": "abcdef0123"}
    )
    assert unknown_version.status_code == 404
    # Inputs that fail the signature: 422 naming the field, and a failed execution record.
    failed = admin.post("/v1/programs/qa/runs", json={"inputs": {"questoin": "x"}})
    assert failed.status_code == 422
    error = failed.json()["error"]
    assert error["code"] == "validation_error"
    assert {i["field"] for i in error["issues"]} == {"questoin", "question"}
    record = _execution(admin, error["execution_id"])
    assert record["status"] == "failed"
    assert record["error"]["code"] == "validation_error"


def test_stream_sends_tokens_and_result_and_records_the_run(admin: httpx.Client, qa: dict[str, Any]) -> None:
    response = admin.post("/v1/programs/qa/runs/stream", json={"inputs": {"question": "what streams?"}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "result"
    tokens = [data for kind, data in events if kind == "token"]
    assert len(tokens) > 1
    assert "".join(t["chunk"] for t in tokens if t["field"] == "answer") == "answer to what streams?"
    result = events[-1][1]
    assert result["outputs"] == {"answer": "answer to what streams?"}
    assert result["execution_id"] == events[0][1]["execution_id"]
    record = _execution(admin, result["execution_id"])
    assert record["status"] == "succeeded"
    assert record["outputs"] == {"answer": "answer to what streams?"}


def test_stream_errors_before_streaming(admin: httpx.Client, qa: dict[str, Any]) -> None:
    assert admin.post("/v1/programs/nope/runs/stream", json={"inputs": {}}).status_code == 404
    bad = admin.post("/v1/programs/qa/runs/stream", json={"inputs": {"q": "x"}})
    assert bad.status_code == 422
    assert _execution(admin, bad.json()["error"]["execution_id"])["status"] == "failed"


def test_stream_of_a_pipeline_sends_step_events(admin: httpx.Client, dspex_app: App, live: Live) -> None:
    import dspy

    from dspex.pipeline import ModuleStep, Pipeline

    # A pipeline as a Python program (spec registration covers modules); run through the service's stream.
    pipeline = Pipeline([ModuleStep(dspy.Predict("question -> answer"), name="answerer")], name="qa-pipe")
    from dspex.runtime.stream import RunStream

    async def collect() -> list[Any]:
        stream = await RunStream.open(dspex_app, pipeline, {"question": "piped?"})
        return [event async for event in stream.events()]

    import asyncio

    events = asyncio.run(collect())
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunFinished"
    steps = [e.kind for e in events if type(e).__name__ == "StepEvent"]
    assert steps == ["step_started", "step_finished"]
    tokens = "".join(e.chunk for e in events if type(e).__name__ == "TokenEvent")
    assert tokens == "answer to piped?"
    assert all(e.step == "answerer" for e in events if type(e).__name__ == "TokenEvent")


def test_stream_disconnect_records_the_run_cancelled(
    admin: httpx.Client, qa: dict[str, Any], dspex_app: App, engine: Any
) -> None:
    engine.latency = 3.0  # long enough that the client leaves first
    with admin.stream(
        "POST", "/v1/programs/qa/runs/stream", json={"inputs": {"question": "slow"}}
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(lines)
        assert first == "event: start"
        data = next(lines)
    execution_id = sse(f"{first}\n{data}\n\n")[0][1]["execution_id"]
    engine.latency = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dspex_app.flush()
        record = dspex_app.executions.get(execution_id)
        if record is not None and record.status != "running":
            break
        time.sleep(0.05)
    assert record is not None
    assert record.status == "cancelled"


def test_lm_failure_is_a_gateway_error_with_the_record(
    admin: httpx.Client, qa: dict[str, Any], engine: Any
) -> None:
    from dspy.lm15 import RateLimitError

    def limited(_inputs: dict[str, Any]) -> str:
        raise RateLimitError("slow down", retry_after=0.01)  # DSPy retries it (quickly), then gives up

    engine.rules["answer"] = limited
    response = admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "x"}})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "lm_error"
    assert error["retryable"] is True
    assert _execution(admin, error["execution_id"])["status"] == "failed"


# -- executions ---------------------------------------------------------------------------------------------


def test_executions_filter_show_and_stats(admin: httpx.Client, qa: dict[str, Any]) -> None:
    for question in ("a", "b"):
        assert admin.post("/v1/programs/qa/runs", json={"inputs": {"question": question}}).status_code == 200
    assert admin.post("/v1/programs/qa/runs", json={"inputs": {"nope": 1}}).status_code == 422
    page = admin.get("/v1/executions", params={"program": "qa"}).json()
    assert page["total"] == 3
    assert all("trace" not in item or item["trace"] is None for item in page["items"])
    failed = admin.get("/v1/executions", params={"program": "qa", "status": "failed"}).json()
    assert failed["total"] == 1
    since = admin.get("/v1/executions", params={"since": "2000-01-01T00:00:00Z", "limit": 1}).json()
    assert since["total"] == 3
    assert len(since["items"]) == 1
    assert admin.get("/v1/executions", params={"status": "weird"}).status_code == 422
    stats = admin.get("/v1/executions/stats", params={"program": "qa"}).json()
    assert len(stats) == 1
    assert stats[0]["count"] == 3
    assert stats[0]["failed"] == 1
    assert stats[0]["p50_ms"] is not None
    shown = _execution(admin, page["items"][0]["id"][:8])
    assert shown["trace"] is not None
    assert admin.get("/v1/executions/00000000-0000-0000-0000-000000000000").status_code == 404


# -- datasets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/executions?program=qa&program=other", "program"),
        ("/v1/signals/stats?program=qa&program=", "program"),
        ("/v1/jobs?status=queued&status=failed&limit=5", "status"),
        ("/v1/audit?limit=1&limit=2", "limit"),
        ("/v1/datasets?limit=1&limit=2", "limit"),
    ],
)
def test_a_query_parameter_given_twice_is_422(admin: httpx.Client, path: str, name: str) -> None:
    """The framework would keep the last value silently (schemathesis found it on /v1/signals/stats)."""
    response = admin.get(path)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", f"query.{name}")
    assert "each query parameter takes one value" in error["message"]
    assert admin.get(path.split("&")[0]).status_code == 200


def test_datasets_upload_list_show_examples(admin: httpx.Client) -> None:
    records = [
        {"question": f"q{i}", "answer": f"a{i}", "part": "train" if i < 3 else "dev"} for i in range(5)
    ]
    body = {"name": "qa-set", "records": records, "inputs": ["question"], "split": "part"}
    uploaded = admin.post("/v1/datasets", json=body)
    assert uploaded.status_code == 201, uploaded.text
    version = uploaded.json()
    assert version["example_count"] == 5
    assert version["splits"]["counts"] == {"train": 3, "dev": 2}
    assert admin.post("/v1/datasets", json=body).json()["id"] == version["id"]  # same content, same version
    listed = admin.get("/v1/datasets").json()
    assert [d["name"] for d in listed] == ["qa-set"]
    shown = admin.get("/v1/datasets/qa-set").json()
    assert shown["latest"]["id"] == version["id"]
    assert shown["version_ids"] == [version["id"]]
    dev = admin.get("/v1/datasets/qa-set/examples", params={"split": "dev"}).json()
    assert [e["data"]["question"] for e in dev] == ["q3", "q4"]
    assert admin.get("/v1/datasets/nope").status_code == 404
    bad = admin.post(
        "/v1/datasets", json={**body, "records": [{"question": "x", "answer": [1, {"k": None}]}, 3]}
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["field"].startswith("records")
    missing_input = admin.post("/v1/datasets", json={**body, "inputs": ["nope"]})
    assert missing_input.status_code == 422


# -- jobs ---------------------------------------------------------------------------------------------------


def test_jobs_list_show_cancel(admin: httpx.Client, qa: dict[str, Any], dspex_app: App) -> None:
    records = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    admin.post("/v1/datasets", json={"name": "set", "records": records, "inputs": ["question"]})
    space = {
        "variables": {"v": 1, "variables": [{"name": "t", "kind": "float", "low": 0.0, "high": 1.0}]},
        "bindings": {
            "version": 1,
            "bindings": [
                {"variable": "t", "target": "lm_setting", "setting": "temperature", "predictors": "*"}
            ],
        },
    }
    started = admin.post(
        "/v1/optimizations", json={"program": "qa", "dataset": "set", "space": space, "n_trials": 2}
    )
    assert started.status_code == 202, started.text
    job = started.json()["job"]
    assert job["status"] == "queued"
    assert [j["id"] for j in admin.get("/v1/jobs").json()] == [job["id"]]
    assert admin.get("/v1/jobs", params={"status": "running"}).json() == []
    assert admin.get(f"/v1/jobs/{job['id']}").json()["payload"]["program"] == "qa"
    detail = admin.get(f"/v1/optimizations/{started.json()['optimization_id']}").json()
    assert detail["status"] == "queued"
    assert detail["trials"] == []
    cancelled = admin.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = admin.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert admin.get("/v1/jobs/nope").status_code == 404
    # Bad optimization requests: unknown names are 404, a bad space 422.
    assert (
        admin.post(
            "/v1/optimizations", json={"program": "nope", "dataset": "set", "space": space, "n_trials": 1}
        ).status_code
        == 404
    )
    assert (
        admin.post(
            "/v1/optimizations", json={"program": "qa", "dataset": "nope", "space": space, "n_trials": 1}
        ).status_code
        == 404
    )
    bad_space = admin.post(
        "/v1/optimizations",
        json={"program": "qa", "dataset": "set", "space": {"variables": 3}, "n_trials": 1},
    )
    assert bad_space.status_code == 422
    assert (
        admin.post(
            "/v1/optimizations", json={"program": "qa", "dataset": "set", "space": space, "n_trials": 0}
        ).status_code
        == 422
    )


# -- operations ---------------------------------------------------------------------------------------------


def test_health_without_a_key(live: Live) -> None:
    with live.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["queue_depth"] == 0
    assert set(body["queue"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert body["workers"] == []


def test_metrics_in_prometheus_format(admin: httpx.Client, qa: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    admin.post("/v1/programs/qa/runs", json={"inputs": {"question": "x"}})
    admin.post("/v1/programs/qa/runs", json={"inputs": {"nope": "x"}})
    response = admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    route = "/v1/programs/{name}/runs"
    assert (
        samples[("dspex_http_requests_total", (("method", "POST"), ("route", route), ("status", "200")))] == 1
    )
    assert (
        samples[("dspex_http_requests_total", (("method", "POST"), ("route", route), ("status", "422")))] == 1
    )
    assert samples[("dspex_runs_total", (("program", "qa"), ("status", "succeeded")))] == 1
    assert samples[("dspex_runs_total", (("program", "qa"), ("status", "failed")))] == 1
    assert samples[("dspex_jobs", (("status", "queued"),))] == 0
    assert ("dspex_workers", ()) in samples
    assert any(name == "dspex_http_request_duration_seconds_count" for name, _ in samples)


def test_openapi_document_is_complete(live: Live) -> None:
    with live.client() as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    expected = {
        ("/v1/programs", "get"), ("/v1/programs", "post"), ("/v1/programs/{name}", "get"),
        ("/v1/programs/{name}/versions", "get"), ("/v1/programs/{name}/versions/{version}/promote", "post"),
        ("/v1/programs/{name}/rollback", "post"), ("/v1/programs/{name}/cache", "put"),
        ("/v1/programs/{name}/runs", "post"),
        ("/v1/programs/{name}/runs/stream", "post"), ("/v1/programs/{name}/batch", "post"), ("/v1/executions", "get"), ("/v1/executions/stats", "get"),
        ("/v1/executions/{execution_id}", "get"), ("/v1/datasets", "get"), ("/v1/datasets", "post"),
        ("/v1/datasets/{name}", "get"), ("/v1/datasets/{name}/examples", "get"), ("/v1/optimizations", "post"),
        ("/v1/optimizations/{optimization_id}", "get"), ("/v1/optimizations/{optimization_id}/events", "get"),
        ("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/audit", "get"), ("/v1/pools", "get"), ("/v1/sessions", "get"), ("/v1/sessions", "post"), ("/v1/sessions/{session_id}", "get"), ("/v1/sessions/{session_id}", "delete"), ("/v1/sessions/{session_id}/runs", "post"), ("/health", "get"), ("/metrics", "get"),
        ("/v1/executions/{execution_id}/feedback", "post"), ("/v1/executions/{execution_id}/feedback", "get"),
        ("/v1/signals", "get"), ("/v1/signals/stats", "get"),
        ("/v1/programs/{name}/adaptive", "post"), ("/v1/programs/{name}/adaptive", "get"),
        ("/v1/programs/{name}/adaptive/{adaptive}", "get"), ("/v1/programs/{name}/adaptive/{adaptive}/runs", "post"),
        ("/v1/programs/{name}/adaptive/{adaptive}/{action}", "post"),
    }  # fmt: skip
    assert {(path, method) for path, item in paths.items() for method in item} == expected
    for path, method in expected:
        operation = paths[path][method]
        assert operation.get("summary"), (path, method)
        assert operation.get("description"), (path, method)
        ok = next(status for status in operation["responses"] if status.startswith("2"))
        content = operation["responses"][ok]["content"]
        media, schema = next(iter(content.items()))
        assert schema.get("schema"), (path, method, media)
        if media == "application/json":
            assert "$ref" in schema["schema"] or schema["schema"].get("type") == "array", (path, method)
        if path != "/health":
            errors = operation["responses"]
            assert "401" in errors, (path, method)
            assert "$ref" in str(errors["401"]), (path, method)
            assert operation.get("security"), (path, method)
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/programs/qa/runs/extra"])
def test_unknown_paths_are_json_404(live: Live, path: str) -> None:
    with live.client() as client:
        response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
