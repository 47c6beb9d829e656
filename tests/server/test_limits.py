"""Request limits: 413 for bodies over the limit (declared or streamed), 422 for documents too deep or
too large, and never a 500 for a deeply nested body."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine


@pytest.fixture
def limited(database_url: str, serve: Callable[..., Live]) -> Iterator[Live]:
    settings = Settings(database_url=database_url, max_body_bytes=4096, max_spec_depth=8, max_spec_bytes=2048)
    with App(settings, lm=ScriptedEngine({"answer": "a"}).lm()) as app:
        app.programs.register("qa", QA_SPEC)
        yield serve(app, auth=False)


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_body_over_the_limit_is_413_with_or_without_content_length(limited: Live) -> None:
    big = {"inputs": {"question": "x" * 5000}}
    with limited.client() as client:
        error = _error(client.post("/v1/programs/qa/runs", json=big), 413)
        assert error["code"] == "payload_too_large"
        assert "DSPEX_MAX_BODY_BYTES" in error["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it streams
            yield b'{"inputs": {"question": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}}'

        response = client.post(
            "/v1/programs/qa/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        _error(response, 413)
        # Under the limit, streamed or not, the run goes through.
        assert client.post("/v1/programs/qa/runs", json={"inputs": {"question": "hi"}}).status_code == 200


def test_documents_too_deep_or_too_large_are_422_naming_the_field(limited: Live) -> None:
    with limited.client() as client:
        spec = {**QA_SPEC, "lm": {"model": "x", "stop": [_deep(10)]}}
        error = _error(client.post("/v1/programs", json={"name": "deep", "spec": spec}), 422)
        assert error["path"].startswith("spec.lm.stop[0].a")
        assert "DSPEX_MAX_SPEC_DEPTH" in error["message"]
        wide = {**QA_SPEC, "lm": {"model": "x", "stop": ["s" * 3000]}}
        error = _error(client.post("/v1/programs", json={"name": "wide", "spec": wide}), 422)
        assert "DSPEX_MAX_SPEC_BYTES" in error["message"]
        space = {"variables": _deep(20), "bindings": {"version": 1, "bindings": []}}
        body = {"program": "qa", "dataset": "d", "space": space, "n_trials": 1}
        assert _error(client.post("/v1/optimizations", json=body), 422)["path"].startswith("space.variables")


def test_deeply_nested_bodies_never_cause_a_server_error(
    database_url: str, serve: Callable[..., Live]
) -> None:
    with App(Settings(database_url=database_url), lm=ScriptedEngine({"answer": "a"}).lm()) as app:
        app.programs.register("qa", QA_SPEC)
        live = serve(app, auth=False)
        nested = '{"a":' * 10_000 + "1" + "}" * 10_000
        with live.client() as client:
            for path, body in [
                ("/v1/programs/qa/runs", '{"inputs": {"question": ' + nested + "}}"),
                ("/v1/programs", '{"name": "deep", "spec": ' + nested + "}"),
                (
                    "/v1/programs",
                    '{"name": "deep", "spec": ' + '{"module":"predict","x":' * 499 + "1" + "}" * 499 + "}",
                ),
            ]:
                response = client.post(path, content=body, headers={"content-type": "application/json"})
                assert response.status_code == 422, (path, response.text[:300])


def test_the_body_limit_is_documented_on_every_operation(limited: Live) -> None:
    with limited.client() as client:
        document = client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "413" in operation["responses"], (method, path)
