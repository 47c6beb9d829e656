"""The simulated server's HTTP surface as raw OpenAI clients see it, its knobs and its Python handle."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspex.errors import ConfigurationError
from dspex.testing.server import SimConfig, SimServer

CAPITAL = "What is the capital of Peru?"


@pytest.fixture
def http(sim_lm_server: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_lm_server.base_url, timeout=10) as client:
        yield client


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "sim-medium", "messages": [{"role": "user", "content": CAPITAL}], **extra}


def _sse(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_health_and_models(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["sim-small", "sim-medium", "sim-large"]


def test_completion_body_with_content_parts_and_n(http: httpx.Client, sim_lm_server: SimServer) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Peru?"}]
    body = {
        "model": "sim-large",
        "messages": [{"role": "user", "content": parts}],
        "n": 2,
        "temperature": 0.7,
    }
    reply = http.post("/v1/chat/completions", json=body).json()
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "sim-large"
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for choice in reply["choices"]:
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"].replace(" ", "").isalpha()  # a city, right or wrong
    record = sim_lm_server.requests()[-1]
    assert (record.question, record.temperature) == (CAPITAL, 0.7)
    assert (reply["choices"][0]["message"]["content"] == "Lima") is record.correct
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_is_openai_sse_with_usage_and_done(http: httpx.Client) -> None:
    plain = http.post("/v1/chat/completions", json=_body(temperature=0.5)).json()
    body = _body(temperature=0.5, stream=True, stream_options={"include_usage": True})
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = _sse(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1] == {**chunks[-1], "choices": [], "usage": plain["usage"]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(content) == plain["choices"][0]["message"]["content"]
    no_usage = http.post("/v1/chat/completions", json=_body(temperature=0.5, stream=True)).text
    assert all("usage" not in e for e in _sse(no_usage)[:-1])


def test_max_tokens_truncates_with_finish_reason_length(http: httpx.Client) -> None:
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "Tell me about tides."}],
        "max_tokens": 2,
    }
    choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"]) == 8


def test_errors_have_the_openai_shape(http: httpx.Client, sim_lm_server: SimServer) -> None:
    bad = http.post("/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_body"
    for broken in (_body(messages=["hi"]), _body(n=0), _body(temperature="warm"), {"messages": []}):
        reply = http.post("/v1/chat/completions", json=broken)
        assert (reply.status_code, reply.json()["error"]["type"]) == (400, "invalid_request_error"), broken
    missing = http.post("/v1/chat/completions", json=_body(model="gpt-4o"))
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    assert "valid: sim-large, sim-medium, sim-small" in error["message"]
    sim_lm_server.configure(fail_first=[429, 500, 400], retry_after=0.25, error_retry_after=3)
    limited = http.post("/v1/chat/completions", json=_body())
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "0.25")
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    failed = http.post("/v1/chat/completions", json=_body())
    assert (failed.status_code, failed.headers["retry-after"], failed.json()["error"]["type"]) == (
        500,
        "3",
        "server_error",
    )
    assert http.post("/v1/chat/completions", json=_body()).status_code == 400
    assert http.post("/v1/chat/completions", json=_body()).status_code == 200


def test_admin_endpoints_change_knobs_and_report_stats(http: httpx.Client, sim_lm_server: SimServer) -> None:
    config = http.post("/sim/config", json={"rate_limit_rate": 1.0, "retry_after": 2}).json()
    assert (config["rate_limit_rate"], config["retry_after"]) == (1.0, 2)
    assert sim_lm_server.config.rate_limit_rate == 1.0
    assert http.post("/v1/chat/completions", json=_body()).status_code == 429
    assert http.get("/sim/config").json()["models"] == ["sim-small", "sim-medium", "sim-large"]
    typo = http.post("/sim/config", json={"retry_afer": 1})
    assert typo.status_code == 400
    assert "did you mean 'retry_after'" in typo.json()["error"]["message"]
    invalid = http.post("/sim/config", json={"error_rate": 0.5})  # 1.0 + 0.5 > 1
    assert invalid.status_code == 400
    assert "add up to at most 1" in invalid.json()["error"]["message"]
    http.post("/sim/config", json={"rate_limit_rate": 0})
    assert http.post("/v1/chat/completions", json=_body()).status_code == 200
    stats = http.get("/sim/stats").json()
    assert stats["total_requests"] == 2
    assert stats["statuses"] == {"200": 1, "429": 1}
    medium = stats["models"]["sim-medium"]
    assert (medium["graded"], medium["statuses"]) == (1, {"200": 1, "429": 1})
    assert medium["cost_usd"] > 0
    assert http.post("/sim/reset").json() == {"status": "reset"}
    assert http.get("/sim/stats").json() == {"total_requests": 0, "statuses": {}, "models": {}}


def test_error_draws_are_reproducible_from_the_seed(http: httpx.Client, sim_lm_server: SimServer) -> None:
    def statuses() -> list[int]:
        return [http.post("/v1/chat/completions", json=_body()).status_code for _ in range(30)]

    sim_lm_server.configure(seed=11, rate_limit_rate=0.3, error_rate=0.2, retry_after=0)
    first = statuses()
    sim_lm_server.reset()
    assert statuses() == first
    assert set(first) == {200, 429, 500}
    sim_lm_server.configure(seed=12)
    assert statuses() != first


def test_knobs_are_validated_and_scoped(sim_lm_server: SimServer) -> None:
    with pytest.raises(ConfigurationError, match="probability"):
        SimConfig(error_rate=1.5)
    with pytest.raises(ConfigurationError, match="fail_first"):
        SimConfig(fail_first=(200,))
    with pytest.raises(ConfigurationError, match="did you mean 'latency'"):
        SimConfig().replace(latncy=1)
    before = sim_lm_server.config
    with sim_lm_server.knobs(malformed_rate=0.5) as inside:
        assert inside.malformed_rate == sim_lm_server.config.malformed_rate == 0.5
    assert sim_lm_server.config == before


def test_server_lifecycle_port_clash_and_stop_wakes_hanging_requests() -> None:
    with SimServer(timeout_rate=1.0, timeout_seconds=60) as sim:
        assert sim.running
        assert sim.url == f"http://127.0.0.1:{sim.port}/v1"
        with pytest.raises(ConfigurationError, match="did not start"):
            SimServer(port=sim.port).start()
        done = threading.Event()
        outcome: list[int] = []

        def call() -> None:
            with httpx.Client(timeout=60) as client:
                outcome.append(client.post(f"{sim.url}/chat/completions", json=_body()).status_code)
            done.set()

        threading.Thread(target=call, daemon=True).start()
        deadline = time.monotonic() + 5
        while sim.stats().total_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded wait for the request to reach the server
        start = time.perf_counter()
        sim.stop()
        assert time.perf_counter() - start < 3
        assert done.wait(5)
        assert outcome == [504]
        assert not sim.running
    with pytest.raises(ConfigurationError, match="not running"):
        SimServer().url  # noqa: B018 - the property raises


def test_importing_the_server_and_plugin_is_light() -> None:
    code = (
        "import sys, dspex.testing.server, dspex.testing.simtask, dspex.testing.pytest_plugin;"
        "print(sorted(m for m in ('dspy', 'starlette', 'uvicorn', 'litellm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"
