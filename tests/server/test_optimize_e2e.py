"""The whole loop through the service: register, upload a dataset, run, stream, query, start an
optimization, follow it by SSE while a worker runs it, read the result, promote the version it produced.

The LM is the simulated OpenAI-compatible server, configured through settings (``settings_sim``), so the
worker builds the optimization's LMs the way production does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_support import sse

from conftest import Live
from dspex.jobs.worker import Worker
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer

SPACE = {
    "variables": {
        "v": 1,
        "variables": [{"name": "temperature", "kind": "float", "low": 0.0, "high": 1.0, "step": 0.5}],
    },
    "bindings": {
        "version": 1,
        "bindings": [
            {"variable": "temperature", "target": "lm_setting", "setting": "temperature", "predictors": "*"}
        ],
    },
}


@pytest.fixture
def sim_app(database_url: str, settings_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("DSPEX_DATABASE_URL", database_url)
    with App(Settings.load()) as app:
        yield app


def test_register_run_stream_optimize_follow_promote(
    sim_app: App, settings_sim: SimServer, serve: Callable[..., Live]
) -> None:
    live = serve(sim_app)
    _, key = sim_app.keys.create(
        "e2e", ["programs:read", "programs:write", "programs:promote", "runs:execute", "optimize"]
    )
    with live.client(key) as client:
        spec = {"module": "predict", "signature": "question -> answer"}
        version = client.post("/v1/programs", json={"name": "qa", "spec": spec}).json()
        rows = [
            {**row, "part": "train" if i < 4 else "dev"}
            for i, row in enumerate(settings_sim.task.dicts()[:12])
        ]
        uploaded = client.post(
            "/v1/datasets", json={"name": "qa-set", "records": rows, "inputs": ["question"], "split": "part"}
        )
        assert uploaded.status_code == 201, uploaded.text

        question = rows[0]["question"]
        ran = client.post("/v1/programs/qa/runs", json={"inputs": {"question": question}})
        assert ran.status_code == 200, ran.text
        assert ran.json()["outputs"]["answer"]
        streamed = sse(
            client.post("/v1/programs/qa/runs/stream", json={"inputs": {"question": question}}).text
        )
        assert streamed[0][0] == "start"
        assert streamed[-1][0] == "result"
        assert any(kind == "token" for kind, _ in streamed)
        page = client.get("/v1/executions", params={"program": "qa", "status": "succeeded"}).json()
        assert page["total"] == 2

        started = client.post(
            "/v1/optimizations",
            json={"program": "qa", "dataset": "qa-set", "space": SPACE, "n_trials": 3, "seed": 1},
        )
        assert started.status_code == 202, started.text
        optimization_id = started.json()["optimization_id"]

        worker = Worker(sim_app, lease_s=10, poll_s=0.05)
        thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": False}, daemon=True)
        thread.start()
        try:
            with client.stream("GET", f"/v1/optimizations/{optimization_id}/events") as response:
                assert response.status_code == 200
                body = "".join(response.iter_text())
        finally:
            worker.stop()
            thread.join(30)
        events = sse(body)
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "end"
        assert kinds.count("trial") == 3
        # Each trial once, as it ends: the start-up bracket ends trials out of number order.
        assert sorted(d["number"] for k, d in events if k == "trial") == [0, 1, 2]
        job_states = [d["status"] for k, d in events if k == "job"]
        assert job_states[-1] == "succeeded"
        end: dict[str, Any] = events[-1][1]
        assert end["status"] == "succeeded"
        result_version = end["result_version_id"]
        assert result_version is not None

        detail = client.get(f"/v1/optimizations/{optimization_id}").json()
        assert detail["status"] == "succeeded"
        assert len(detail["trials"]) == 3
        assert detail["best"] is not None
        assert detail["job"]["status"] == "succeeded"

        versions = {v["id"]: v["status"] for v in client.get("/v1/programs/qa/versions").json()}
        assert versions[result_version] == "optimizing"
        promoted = client.post(f"/v1/programs/qa/versions/{result_version}/promote")
        assert promoted.status_code == 200
        assert client.get("/v1/programs/qa").json()["production_version"] == result_version
        assert result_version != version["id"]
        after = client.post("/v1/programs/qa/runs", json={"inputs": {"question": question}})
        assert after.status_code == 200
        record = client.get(f"/v1/executions/{after.json()['execution_id']}").json()
        assert record["version_id"] == result_version


def test_a_dspy_optimizer_through_the_service_with_progress_over_sse(
    sim_app: App, settings_sim: SimServer, serve: Callable[..., Live]
) -> None:
    live = serve(sim_app)
    _, key = sim_app.keys.create("e2e", ["programs:read", "programs:write", "optimize"])
    with live.client(key) as client:
        spec = {"module": "predict", "signature": "question -> answer"}
        base = client.post("/v1/programs", json={"name": "qa", "spec": spec}).json()
        rows = [
            {**row, "part": "train" if i < 8 else "dev"}
            for i, row in enumerate(settings_sim.task.dicts()[:16])
        ]
        client.post(
            "/v1/datasets", json={"name": "qa-set", "records": rows, "inputs": ["question"], "split": "part"}
        )
        body = {"program": "qa", "dataset": "qa-set", "optimizer": "bootstrap_rs"}

        # Options are plain values, checked by name, type and range; the variable search's fields refused.
        refused = client.post("/v1/optimizations", json={**body, "options": {"log_dir": "/tmp/x"}})
        assert refused.status_code == 422
        assert "unknown bootstrap_rs option 'log_dir'" in refused.text
        assert "num_candidate_programs" in refused.text  # the valid ones are listed
        refused = client.post("/v1/optimizations", json={**body, "options": {"num_threads": 1000}})
        assert refused.status_code == 422
        assert "option 'num_threads' must be an integer in [1, 64] or null, got 1000" in refused.text
        refused = client.post("/v1/optimizations", json={**body, "options": {"max_rounds": {"import": "os"}}})
        assert refused.status_code == 422
        refused = client.post("/v1/optimizations", json={**body, "n_trials": 3})
        assert refused.status_code == 422
        assert "'n_trials' belongs to the variable search" in refused.text
        refused = client.post("/v1/optimizations", json={**body, "optimizer": "opro"})
        assert refused.status_code == 422
        refused = client.post("/v1/optimizations", json={**body, "max_lm_calls": 0})
        assert refused.status_code == 422
        assert "max_lm_calls" in refused.text
        # What a request names is data: a prompt model is a configured one, a metric a registered one.
        for attack in (
            {"prompt_model": "http://attacker.example/v1"},
            {"prompt_model": "openai/gpt-4o"},  # a real model, but not one the operator configured
            {"metric": "os:system"},
        ):
            refused = client.post("/v1/optimizations", json={**body, **attack})
            assert refused.status_code == 422, (attack, refused.text)
            assert next(iter(attack)) in refused.text
        refused = client.post("/v1/optimizations", json={"program": "qa", "dataset": "qa-set", "n_trials": 3})
        assert refused.status_code == 422
        assert "the variable search needs 'space'" in refused.text
        assert sim_app.jobs.list() == []

        options = {"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "num_threads": 2}
        # max_lm_calls: the hard cap on the job's LM calls (well above what this run needs).
        started = client.post("/v1/optimizations", json={**body, "options": options, "max_lm_calls": 10_000})
        assert started.status_code == 202, started.text
        optimization_id = started.json()["optimization_id"]
        queued = client.get(f"/v1/optimizations/{optimization_id}").json()
        assert (queued["status"], queued["budget"]) == (
            "queued",
            {"optimizer": "bootstrap_rs", "options": options, "max_lm_calls": 10_000},
        )
        assert queued["job"]["payload"]["max_lm_calls"] == 10_000

        worker = Worker(sim_app, lease_s=10, poll_s=0.05)
        thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": False}, daemon=True)
        thread.start()
        try:
            with client.stream("GET", f"/v1/optimizations/{optimization_id}/events") as response:
                assert response.status_code == 200
                stream = "".join(response.iter_text())
        finally:
            worker.stop()
            thread.join(30)
        events = sse(stream)
        assert events[-1][0] == "end"
        assert not [kind for kind, _ in events if kind == "trial"]
        progress = [d["progress"] for k, d in events if k == "job" and d["progress"]]
        assert progress[-1]["optimizer"] == "bootstrap_rs"
        assert {"candidates", "evaluations", "best_score", "lm_calls", "phase"} <= set(progress[-1])
        end: dict[str, Any] = events[-1][1]
        assert end["status"] == "succeeded"
        assert end["best"]["scores"]["quality"] == end["job"]["result"]["score"]
        assert end["job"]["result"]["lm_calls"] > 0
        assert end["job"]["result"]["stopped"] is None  # finished under its cap
        assert end["budget"]["max_lm_calls"] == 10_000
        assert end["budget"]["lm_calls"] == end["job"]["result"]["lm_calls"]
        version = end["result_version_id"]
        versions = {v["id"]: v["status"] for v in client.get("/v1/programs/qa/versions").json()}
        assert versions[version] == "optimizing"
        assert version != base["id"]


def test_a_parallel_optimization_through_the_service_gives_contiguous_unique_trials(
    sim_app: App, settings_sim: SimServer, serve: Callable[..., Live]
) -> None:
    live = serve(sim_app)
    _, key = sim_app.keys.create("e2e", ["programs:read", "programs:write", "optimize"])
    _, reader = sim_app.keys.create("reader", ["programs:read"])
    with live.client(key) as client:
        spec = {"module": "predict", "signature": "question -> answer"}
        client.post("/v1/programs", json={"name": "qa", "spec": spec})
        rows = [
            {**row, "part": "train" if i < 4 else "dev"}
            for i, row in enumerate(settings_sim.task.dicts()[:12])
        ]
        client.post(
            "/v1/datasets", json={"name": "qa-set", "records": rows, "inputs": ["question"], "split": "part"}
        )
        body = {"program": "qa", "dataset": "qa-set", "space": SPACE, "n_trials": 5, "seed": 2}

        # A request chooses a number, bounded; nothing else about where or how the trials run.
        for bad in (0, 65, -1, "two", 2.5, True):
            refused = client.post("/v1/optimizations", json={**body, "parallel": bad})
            assert refused.status_code == 422, (bad, refused.text)
            assert "parallel" in refused.text
        refused = client.post("/v1/optimizations", json={**body, "parallel": 2, "pool": "cluster"})
        assert refused.status_code == 422  # no such field: the pool is the worker's or the routing's
        dspy_body = {"program": "qa", "dataset": "qa-set", "optimizer": "bootstrap_rs", "parallel": 2}
        refused = client.post("/v1/optimizations", json=dspy_body)
        assert refused.status_code == 422
        assert "'parallel' belongs to the variable search" in refused.text
        for bad in (0, 17, "2"):
            refused = client.post("/v1/optimizations", json={**body, "drivers": bad})
            assert refused.status_code == 422, (bad, refused.text)
            assert "drivers" in refused.text
        refused = client.post("/v1/optimizations", json={**dspy_body, "parallel": None, "drivers": 2})
        assert refused.status_code == 422
        assert "'drivers' belongs to the variable search" in refused.text
        assert sim_app.jobs.list() == []
        with live.client(reader) as other:
            assert other.post("/v1/optimizations", json={**body, "parallel": 2}).status_code == 403
        assert sim_app.jobs.list() == []

        started = client.post("/v1/optimizations", json={**body, "parallel": 2, "drivers": 2})
        assert started.status_code == 202, started.text
        optimization_id = started.json()["optimization_id"]
        assert started.json()["job"]["payload"]["parallel"] == 2
        assert started.json()["job"]["payload"]["drivers"] == 2
        assert len(sim_app.jobs.list()) == 2  # the owner and one joining job

        # One worker: the owner job first; the joining job then finds the run ended.
        assert Worker(sim_app, lease_s=10, poll_s=0.05).run(stop_when_idle=True) == 2
        detail = client.get(f"/v1/optimizations/{optimization_id}").json()
    assert detail["status"] == "succeeded", detail
    numbers = [t["number"] for t in detail["trials"]]
    assert numbers == list(range(len(numbers)))  # contiguous from 0, none twice
    assert sum(t["state"] in ("complete", "pruned") for t in detail["trials"]) == 5
    assert not [t for t in detail["trials"] if t["state"] == "running"]
    result = detail["job"]["result"]
    assert (result["finished"], result["n_trials"], result["parallel"]) == (5, 5, 2)
