"""Every auth case against the live service, the local-only mode, ``dspex keys``, and no key in the logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC
from typer.testing import CliRunner

from conftest import Live
from dspex.cli import app as cli
from dspex.cli.serve import is_loopback
from dspex.runtime.app import App


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.fixture
def registered(dspex_app: App) -> None:
    dspex_app.programs.register("qa", QA_SPEC)
    dspex_app.programs.register("other", QA_SPEC)


RUN = {"inputs": {"question": "hi"}}


def test_missing_malformed_unknown_keys_are_401(live: Live, registered: None) -> None:
    with live.client() as client:
        error = _error(client.post("/v1/programs/qa/runs", json=RUN), 401)
        assert error["code"] == "unauthorized"
        assert "missing API key" in error["message"]
        assert client.post("/v1/programs/qa/runs", json=RUN).headers["www-authenticate"].startswith("Bearer")
        basic = client.post("/v1/programs/qa/runs", json=RUN, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert "malformed Authorization" in _error(basic, 401)["message"]
        garbage = client.post("/v1/programs/qa/runs", json=RUN, headers={"Authorization": "Bearer not-a-key"})
        assert "malformed API key" in _error(garbage, 401)["message"]
        unknown = "dspex_0123456789ab_" + "x" * 43
        forged = client.post("/v1/programs/qa/runs", json=RUN, headers={"X-API-Key": unknown})
        assert "unknown or revoked" in _error(forged, 401)["message"]
        assert client.get("/v1/programs").status_code == 401
        assert client.get("/metrics").status_code == 401


def test_wrong_secret_of_a_real_key_is_401(live: Live, dspex_app: App, registered: None) -> None:
    _record, key = dspex_app.keys.create("k", ["admin"])
    tampered = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    with live.client(tampered) as client:
        _error(client.get("/v1/programs"), 401)
    with live.client(key) as client:
        assert client.get("/v1/programs").status_code == 200


def test_revoked_key_is_401_within_the_ttl(
    dspex_app: App, serve: Callable[..., Live], registered: None
) -> None:
    live = serve(dspex_app, key_ttl_s=0.2)
    record, key = dspex_app.keys.create("soon-revoked", ["runs:execute"])
    with live.client(key) as client:
        assert client.post("/v1/programs/qa/runs", json=RUN).status_code == 200
        dspex_app.keys.revoke(record.id)
        deadline = time.monotonic() + 5
        status = 200
        while time.monotonic() < deadline and status != 401:
            status = client.post("/v1/programs/qa/runs", json=RUN).status_code
            time.sleep(0.05)
        assert status == 401
    assert dspex_app.keys.get(record.id).last_used_at is not None  # type: ignore[union-attr]


def test_scopes_are_403(live: Live, dspex_app: App, registered: None) -> None:
    _, reader = dspex_app.keys.create("reader", ["programs:read"])
    with live.client(reader) as client:
        assert client.get("/v1/programs").status_code == 200
        error = _error(client.post("/v1/programs/qa/runs", json=RUN), 403)
        assert error["code"] == "forbidden"
        assert "runs:execute" in error["message"]
        _error(client.post("/v1/programs", json={"name": "x", "spec": QA_SPEC}), 403)
        _error(client.post("/v1/programs/qa/rollback"), 403)
        _error(client.get("/metrics"), 403)
        _error(client.post("/v1/jobs/x/cancel"), 403)
    _, runner = dspex_app.keys.create("runner", ["runs:execute"])
    with live.client(runner) as client:
        assert client.post("/v1/programs/qa/runs", json=RUN).status_code == 200
        _error(client.get("/v1/programs"), 403)
        _error(client.get("/v1/executions"), 403)


def test_program_limited_keys(live: Live, dspex_app: App, registered: None) -> None:
    _, key = dspex_app.keys.create("qa-only", ["runs:execute", "programs:read"], programs=["qa"])
    with live.client(key) as client:
        assert client.post("/v1/programs/qa/runs", json=RUN).status_code == 200
        error = _error(client.post("/v1/programs/other/runs", json=RUN), 403)
        assert "'other'" in error["message"]
        _error(client.post("/v1/programs/other/runs/stream", json=RUN), 403)
        assert [p["name"] for p in client.get("/v1/programs").json()] == ["qa"]
        _error(client.get("/v1/programs/other"), 403)
        _error(client.get("/v1/executions"), 403)  # across programs: must name one of its own
        assert client.get("/v1/executions", params={"program": "qa"}).json()["total"] == 1
        _error(client.get("/v1/executions", params={"program": "other"}), 403)


def test_admin_may_do_everything(live: Live, dspex_app: App, registered: None) -> None:
    _, key = dspex_app.keys.create("root", ["admin"])
    with httpx.Client(base_url=live.url, headers={"X-API-Key": key}) as client:
        assert client.post("/v1/programs/other/runs", json=RUN).status_code == 200
        assert client.post("/v1/programs", json={"name": "new", "spec": QA_SPEC}).status_code == 201
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/executions").status_code == 200


def test_no_auth_mode_serves_without_keys(
    dspex_app: App, serve: Callable[..., Live], registered: None
) -> None:
    live = serve(dspex_app, auth=False)
    with live.client() as client:
        assert client.post("/v1/programs/qa/runs", json=RUN).status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.com", "::"])
def test_no_auth_refuses_non_loopback_hosts(host: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--no-auth", "--host", host, "--port", "0"])
    assert result.exit_code == 2
    assert "--no-auth" in result.stderr
    assert "loopback" in result.stderr


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_keys_cli_create_list_revoke(live: Live, dspex_app: App, registered: None) -> None:
    # The CLI opens the App from settings: point it at the service's database.
    runner = CliRunner(env={"DSPEX_DATABASE_URL": dspex_app.settings.resolved_database_url})
    created = runner.invoke(cli, ["keys", "create", "ci", "--scope", "runs:execute", "--program", "qa"])
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dspex_")
    assert "only time the key is shown" in created.stderr
    with live.client(key) as client:
        assert client.post("/v1/programs/qa/runs", json=RUN).status_code == 200
    listed = runner.invoke(cli, ["keys", "list", "--json"])
    assert listed.exit_code == 0
    secret = key.split("_", 2)[2]  # dspex_<id>_<secret>; the secret may contain "_"
    assert secret not in listed.stdout
    assert '"ci"' in listed.stdout
    table = runner.invoke(cli, ["keys", "list"])
    assert secret not in table.stdout
    key_id = key.split("_")[1]
    revoked = runner.invoke(cli, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    assert runner.invoke(cli, ["keys", "list", "--json"]).stdout.strip() == "[]"
    bad = runner.invoke(cli, ["keys", "create", "x", "--scope", "runs:exec"])
    assert bad.exit_code == 2
    assert "runs:execute" in bad.stderr


def test_keys_never_appear_in_logs(
    live: Live, dspex_app: App, registered: None, caplog: pytest.LogCaptureFixture
) -> None:
    _, good = dspex_app.keys.create("logged", ["runs:execute"])
    forged = good[:-6] + "zzzzzz"
    # uvicorn's loggers may not propagate (a uvicorn started earlier in this process may have applied
    # its logging config, which sets propagate=False): attach the capture handler to them directly.
    uvicorn_loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    saved = [(lg.level, lg.disabled) for lg in uvicorn_loggers]
    for lg in uvicorn_loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    try:
        _exercise(live, good, forged, caplog)
    finally:
        for lg, (level, disabled) in zip(uvicorn_loggers, saved, strict=True):
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)
            lg.disabled = disabled
    # a record reaching both the root capture and a uvicorn logger's handler is listed twice: harmless
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert "POST /v1/programs/qa/runs" in text  # the access log was captured
    for key in (good, forged):
        assert key not in text
        assert key.split("_", 2)[2] not in text  # the secret (it may contain "_")


def _exercise(live: Live, good: str, forged: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for key in (good, forged):
            with live.client(key) as client:
                client.post("/v1/programs/qa/runs", json=RUN)
                client.post("/v1/programs/qa/runs/stream", json=RUN)
                client.post("/v1/programs/nope/runs", json=RUN)
                client.get("/metrics")
