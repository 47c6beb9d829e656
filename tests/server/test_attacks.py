"""Attacks with an ordinary key: nothing received over the API names code or a host.

Each attack is refused with its status, and a canary proves nothing happened: a module on ``sys.path``
that writes a marker file when imported, and an HTTP listener on 127.0.0.1 that records any request.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.modules import ToolRegistry
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine, SimServer
from dspex.variables.spacefile import space_from_document

CANARY = "dspex_canary_module"


@pytest.fixture
def canary_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module that leaves ``imported.marker`` next to itself if anything imports it."""
    folder = tmp_path / "canary"
    folder.mkdir()
    marker = folder / "imported.marker"
    (folder / f"{CANARY}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def boom(*args, **kwargs):\n    return 'boom'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(folder))
    yield marker
    import sys

    assert CANARY not in sys.modules, "the canary module was imported"
    assert not marker.exists(), "the canary module was imported"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def _record(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def canary_listener() -> Iterator[tuple[str, list[str]]]:
    """``(url, requests)``: a listener on 127.0.0.1 that must receive nothing."""
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()
    assert seen == [], f"the server sent requests to the canary listener: {seen}"


def search(query: str) -> str:
    """Search the operator's index."""
    return f"results for {query}"


def short_enough(config: Any) -> bool:
    return True


@pytest.fixture
def operator_app(
    database_url: str, sim_lm_server: SimServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    """A server App whose operator registered the tool ``search`` and configured the model ``fast``, and
    whose environment holds a provider key that must never leave for a host a request names."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-secret")
    settings = Settings(
        database_url=database_url,
        lm_cache=False,  # every run reaches the endpoint, so the test sees where it went
        models={"fast": {"model": "openai/sim-small", "api_base": sim_lm_server.url, "api_key": "sim-key"}},
    )
    engine = ScriptedEngine({"answer": lambda inputs: "ok"})
    with App(settings, lm=engine.lm(), tools=ToolRegistry([search, short_enough])) as app:
        yield app


@pytest.fixture
def live(operator_app: App, serve: Callable[..., Live]) -> Live:
    return serve(operator_app)


def _key(app: App, *scopes: str) -> str:
    _, key = app.keys.create("attacker", list(scopes))
    return key


def _refused(response: httpx.Response, status: int, path: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    if path is not None:
        assert error.get("path") == path, error
    return error


_REACT = {"module": "react", "signature": "question -> answer"}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({**_REACT, "options": {"tools": ["os:system"]}}, "options.tools[0]"),
        ({**_REACT, "options": {"tools": [f"{CANARY}:boom"]}}, "options.tools[0]"),
        ({**_REACT, "options": {"tools": ["not_registered"]}}, "options.tools[0]"),
        (
            {"module": "program_of_thought", "signature": "q -> a", "options": {"interpreter": "local"}},
            "options.interpreter",
        ),
        (
            {
                "module": "best_of_n",
                "signature": "q -> a",
                "options": {"module": "predict", "N": 2, "threshold": 1.0, "reward_fn": f"{CANARY}:boom"},
            },
            "options.reward_fn",
        ),
        (
            {
                "module": "refine",
                "options": {
                    "module": {"module": "react", "signature": "q -> a", "options": {"tools": ["os:system"]}},
                    "N": 2,
                    "threshold": 1.0,
                    "reward_fn": "short_enough",
                },
            },
            "options.module.options.tools[0]",
        ),
        (
            {**QA_SPEC, "options": {"config": {"api_base": "http://169.254.169.254/"}}},
            "options.config.api_base",
        ),
        (
            {
                "module": "self_correcting_cot",
                "signature": "q -> a",
                "options": {"validator": f"{CANARY}:boom"},
            },
            "options.validator",
        ),
        (
            {"module": "tree_of_thoughts", "signature": "q -> a", "options": {"scorer": "os:system"}},
            "options.scorer",
        ),
        (
            {
                "module": "consensus",
                "signature": "q -> a",
                "options": {"modules": ["predict", _REACT | {"options": {"tools": ["os:system"]}}]},
            },
            "options.modules[1].options.tools[0]",
        ),
        (
            {"pipeline": {"steps": [{"name": "x", "function": f"{CANARY}:boom", "outputs": "a"}]}},
            "pipeline.steps[0].function",
        ),
    ],
)
def test_a_spec_naming_code_is_refused_before_anything_is_imported(
    live: Live, canary_module: Path, spec: dict[str, Any], path: str
) -> None:
    key = _key(live.app, "programs:write")
    with live.client(key) as client:
        error = _refused(client.post("/v1/programs", json={"name": "evil", "spec": spec}), 422, path)
    assert "registered" in error["message"] or "API" in error["message"]
    assert live.app.programs.repository.get_program("evil") is None


@pytest.mark.parametrize(
    ("lm", "path"),
    [
        ({"model": "hosted_vllm/x", "api_base": "{canary}"}, "lm.api_base"),
        ({"model": "fast", "api_base": "{canary}"}, "lm.api_base"),
        ({"model": "fast", "base_url": "{canary}"}, "lm.base_url"),
        ({"model": "fast", "extra_headers": {"x": "y"}}, "lm.extra_headers"),
        ({"model": "openai/gpt-4o-mini"}, "lm.model"),
        ({"model": "fast", "fallbacks": ["{canary}"]}, "lm.fallbacks[0]"),
        ({"model": "fast", "fallbacks": ["fast", "openai/gpt-4o-mini"]}, "lm.fallbacks[1]"),
        ({"model": "fast", "fallbacks": "{canary}"}, "lm.fallbacks"),
    ],
)
def test_a_spec_naming_a_host_or_an_unconfigured_model_is_refused_and_nothing_is_sent(
    live: Live, canary_listener: tuple[str, list[str]], lm: dict[str, Any], path: str
) -> None:
    url, _ = canary_listener

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value.format(canary=url) if isinstance(value, str) else value

    lm = {k: fill(v) for k, v in lm.items()}
    key = _key(live.app, "programs:write", "runs:execute")
    with live.client(key) as client:
        _refused(client.post("/v1/programs", json={"name": "evil", "spec": {**QA_SPEC, "lm": lm}}), 422, path)
        _refused(client.post("/v1/programs/evil/runs", json={"inputs": {"question": "hi"}}), 404)


def test_registered_tools_and_configured_models_work_over_the_api(
    live: Live, sim_lm_server: SimServer
) -> None:
    key = _key(live.app, "programs:write", "runs:execute")
    with live.client(key) as client:
        agent = {**_REACT, "options": {"tools": ["search"], "max_iters": 2}}
        assert client.post("/v1/programs", json={"name": "agent", "spec": agent}).status_code == 201
        spec = {**QA_SPEC, "lm": {"model": "fast", "temperature": 0.0}}
        assert client.post("/v1/programs", json={"name": "qa", "spec": spec}).status_code == 201
        response = client.post("/v1/programs/qa/runs", json={"inputs": {"question": "What is 2 + 2?"}})
    assert response.status_code == 200, response.text
    tools = live.app.programs.load("agent").tools
    assert tools["search"].func is search
    # The configured model's endpoint served the run, with the configured key, not the server's own.
    requests = sim_lm_server.requests()
    assert requests
    assert all(r.model == "sim-small" for r in requests)


_SPACE_VARIABLES = {
    "v": 1,
    "variables": [{"name": "t", "kind": "float", "low": 0.0, "high": 1.0, "default": 0.5}],
}
_TEMPERATURE = {
    "version": 1,
    "bindings": [{"variable": "t", "target": "lm_setting", "setting": "temperature"}],
}


@pytest.mark.parametrize(
    ("space", "path"),
    [
        (
            {
                "variables": {
                    **_SPACE_VARIABLES,
                    "constraints": [{"name": "c", "predicate": f"{CANARY}:boom"}],
                },
                "bindings": _TEMPERATURE,
            },
            "variables.constraints[0].predicate",
        ),
        (
            {
                "variables": {
                    **_SPACE_VARIABLES,
                    "derived": [{"name": "d", "fn": "os:getcwd", "depends_on": []}],
                },
                "bindings": _TEMPERATURE,
            },
            "variables.derived[0].fn",
        ),
        (
            {
                "variables": _SPACE_VARIABLES,
                "bindings": {
                    "version": 1,
                    "bindings": [{"variable": "t", "target": "lm_setting", "setting": "api_base"}],
                },
            },
            "bindings.bindings[0].setting",
        ),
        (
            {
                "variables": _SPACE_VARIABLES,
                "bindings": {
                    "version": 1,
                    "bindings": [{"variable": "t", "target": "attribute", "path": "predict.lm.kwargs"}],
                },
            },
            "bindings.bindings[0].path",
        ),
        (
            {
                "variables": {
                    "v": 1,
                    "variables": [
                        {
                            "name": "m",
                            "kind": "model",
                            "choices": ["hosted_vllm/evil"],
                            "default": "hosted_vllm/evil",
                        }
                    ],
                },
                "bindings": {"version": 1, "bindings": [{"variable": "m", "target": "model"}]},
            },
            "variables.variables[0].choices[0]",
        ),
    ],
)
def test_a_space_naming_code_or_models_is_refused_before_anything_is_imported(
    live: Live, canary_module: Path, space: dict[str, Any], path: str
) -> None:
    live.app.programs.register("qa", QA_SPEC)
    key = _key(live.app, "optimize")
    body = {"program": "qa", "dataset": "d", "space": space, "n_trials": 2}
    with live.client(key) as client:
        _refused(client.post("/v1/optimizations", json=body), 422, path)
    assert live.app.jobs.list() == []


@pytest.mark.parametrize(
    "space",
    [
        {
            "variables": {**_SPACE_VARIABLES, "constraints": [{"name": "c", "predicate": f"{CANARY}:boom"}]},
            "bindings": _TEMPERATURE,
        },
        {
            "variables": _SPACE_VARIABLES,
            "bindings": {
                "version": 1,
                "bindings": [{"variable": "t", "target": "lm_setting", "setting": "api_base"}],
            },
        },
    ],
)
def test_the_dashboards_optimization_form_refuses_a_space_naming_code_or_hosts(
    live: Live, canary_module: Path, space: dict[str, Any]
) -> None:
    import json
    import re

    live.app.programs.register("qa", QA_SPEC)
    live.app.datasets.import_records("d", [{"question": "q", "answer": "a"}], inputs=["question"])
    key = _key(live.app, "programs:read", "optimize")
    with live.client() as client:
        login = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert token is not None
        assert client.post("/ui/login", data={"csrf": token.group(1), "key": key}).status_code == 303
        form = client.get("/ui/optimizations")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        fields = {"csrf": csrf.group(1), "program": "qa", "dataset": "d", "space": json.dumps(space)}
        response = client.post("/ui/optimizations", data={**fields, "n_trials": "2", "seed": "0"})
    assert response.status_code == 422, response.text
    assert "Invalid form" in response.text
    assert ("predicate" in response.text) or ("api_base" in response.text)  # the field that was refused
    assert live.app.jobs.list() == []


def test_a_space_names_registered_functions_and_configured_models(operator_app: App) -> None:
    space = {
        "variables": {
            "v": 1,
            "variables": [
                *_SPACE_VARIABLES["variables"],
                {
                    "name": "m",
                    "kind": "model",
                    "choices": ["openai/sim-small"],
                    "default": "openai/sim-small",
                },
            ],
            "constraints": [{"name": "c", "predicate": "short_enough", "message": ""}],
        },
        "bindings": {
            "version": 1,
            "bindings": [*_TEMPERATURE["bindings"], {"variable": "m", "target": "model"}],
        },
    }
    operator_app.spec_policy().check_space_document(space)
    parsed, _ = space_from_document(space, functions=operator_app.tools)
    assert parsed.constraints[0].predicate is short_enough
    lms = operator_app.space_lms(parsed)
    assert lms is not None
    assert lms["openai/sim-small"].kwargs["api_base"] == operator_app.settings.models["fast"].api_base


def test_production_changes_need_the_promote_scope_and_are_audited(live: Live) -> None:
    app = live.app
    first = app.programs.register("qa", QA_SPEC)
    app.programs.promote("qa", first.id)
    writer, promoter = _key(app, "programs:write"), _key(app, "programs:promote", "programs:write")
    other = {"module": "chain_of_thought", "signature": "question -> answer"}
    with live.client(writer) as client:
        assert client.post("/v1/programs", json={"name": "new", "spec": QA_SPEC}).status_code == 201
        _refused(client.post("/v1/programs", json={"name": "qa", "spec": other, "replace": True}), 403)
        _refused(client.post(f"/v1/programs/qa/versions/{first.id}/promote"), 403)
        _refused(client.post("/v1/programs/qa/rollback"), 403)
    assert app.programs.resolve("qa").id == first.id
    with live.client(promoter) as client:
        replaced = client.post("/v1/programs", json={"name": "qa", "spec": other, "replace": True})
        assert replaced.status_code == 201
        second = replaced.json()["id"]
        assert client.post(f"/v1/programs/qa/versions/{second}/promote").status_code == 200
        assert client.post("/v1/programs/qa/rollback").json()["id"] == first.id
    promoter_id = promoter.split("_")[1]
    events = [(e.action, e.before_version, e.after_version) for e in app.programs.audit.list(program="qa")]
    assert events == [
        ("rollback", second, first.id),
        ("promote", first.id, second),
        ("replace", first.id, second),
        ("promote", None, first.id),
        ("register", None, first.id),
    ]
    assert [e.actor for e in app.programs.audit.list(program="qa")][:3] == [f"key:{promoter_id}"] * 3
    with live.client(_key(app, "admin")) as client:
        listed = client.get("/v1/audit", params={"program": "qa"}).json()
    assert [e["action"] for e in listed] == ["rollback", "promote", "replace", "promote", "register"]
    with live.client(writer) as client:
        _refused(client.get("/v1/audit"), 403)


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        ({"lms": {"context": {"api_base": "http://attacker.example"}}}, {"bsize": 2}),
        ({"trace": True}, {"bsize": 2}),
        ({}, {"bsize": 2, "lms": {"predictors": {"predict": {"model": "hosted_vllm/evil"}}}}),
        ({}, {"bsize": 2, "teacher_settings": {"lm": "hosted_vllm/evil"}}),
    ],
)
def test_a_dspy_optimization_request_cannot_set_the_workers_lm_settings(
    live: Live, extra: dict[str, Any], options: dict[str, Any]
) -> None:
    """The LM settings a pool's worker applies to a candidate (SIMBA's sampling temperatures) are read
    from DSPy's objects in the driver; a request can carry none of them, nor ask for traces."""
    live.app.programs.register("qa", QA_SPEC)
    key = _key(live.app, "optimize")
    body = {"program": "qa", "dataset": "d", "optimizer": "simba", "options": options, **extra}
    with live.client(key) as client:
        _refused(client.post("/v1/optimizations", json=body), 422)
    assert live.app.jobs.list() == []


def test_a_dspy_optimization_request_cannot_name_a_pool(live: Live) -> None:
    """Where a DSPy optimizer's candidates are evaluated is the worker's (its --pool, the routing rules),
    never the request's."""
    live.app.programs.register("qa", QA_SPEC)
    key = _key(live.app, "optimize")
    body = {
        "program": "qa",
        "dataset": "d",
        "optimizer": "miprov2",
        "options": {"auto": "light"},
        "pool": "general",
    }
    with live.client(key) as client:
        error = _refused(client.post("/v1/optimizations", json=body), 422)
    assert error["field"] == "pool"
    assert live.app.jobs.list() == []
