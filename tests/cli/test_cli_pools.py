"""``dspex pools`` and ``dspex run --pool``: pools from dspex.toml, workers on the settings' LM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cli_support import Invoke, as_json

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer


def _pool_file() -> None:
    Path("dspex.toml").write_text("[pools.general]\nsize = 1\nmax_tasks = 100\n", encoding="utf-8")


def test_check_starts_the_pools_and_shows_their_workers(dspex: Invoke, settings_sim: SimServer) -> None:
    _pool_file()
    pools = as_json(dspex("pools", "check", "--json"))
    assert [p["name"] for p in pools] == ["general"]
    assert pools[0]["healthy"] is True
    assert len(pools[0]["workers"]) == 1
    assert pools[0]["workers"][0]["pid"]
    table = dspex("pools", "check").stdout
    assert "pool general: 1 workers, healthy" in table


def test_run_on_a_pool_uses_the_settings_lm_in_the_worker(
    dspex: Invoke, settings_sim: SimServer, qa_spec: Path
) -> None:
    _pool_file()
    dspex("programs", "register", "qa", str(qa_spec))
    data = as_json(
        dspex("run", "qa", "-i", "question=What is the capital of Peru?", "--pool", "general", "--json")
    )
    assert data["outputs"]["answer"]
    assert settings_sim.stats().statuses == {200: 1}  # the worker called the simulated server
    with App(Settings.load()) as app:
        record = app.executions.get(data["execution_id"])
    assert record is not None
    assert record.placement is not None
    assert record.placement["pool"] == "general"


def test_bad_pool_names_and_unreachable_servers_are_clear_errors(dspex: Invoke) -> None:
    assert "unknown pool 'nope'" in dspex("pools", "check", "nope", code=2).stderr
    assert (
        "cannot reach" in dspex("pools", "status", "--url", "http://127.0.0.1:9", "--key", "k", code=2).stderr
    )
    assert (
        "--key or DSPEX_SERVICE_KEY" in dspex("pools", "status", "--url", "http://127.0.0.1:9", code=2).stderr
    )


def test_sessions_from_the_command_line(dspex: Invoke, tmp_path: Path, settings_sim: SimServer) -> None:
    chat = tmp_path / "chat.yaml"
    chat.write_text("module: predict\nsignature: 'question: str, history: dspy.History -> answer: str'\n")
    dspex("programs", "register", "chat", str(chat))
    session = dspex("sessions", "create", "chat").stdout.strip()
    assert session in dspex("sessions", "list").stdout
    assert as_json(dspex("sessions", "show", session, "--json"))["turns"] == 0
    dspex("sessions", "run", session, "-i", "question=What is the capital of Peru?")
    turn = as_json(dspex("sessions", "run", session, "-i", "question=And its river?", "--json"))
    assert turn["turn"] == 2
    shown = as_json(dspex("sessions", "show", session, "--json"))
    assert [t["inputs"]["question"] for t in shown["history"]] == [
        "What is the capital of Peru?",
        "And its river?",
    ]
    assert settings_sim.stats().statuses == {200: 2}
    assert "deleted 0 expired sessions" in dspex("sessions", "prune").stdout
    dspex("sessions", "delete", session)
    assert "unknown session" in dspex("sessions", "show", session, code=2).stderr


def test_status_reads_what_processes_running_pools_publish(dspex: Invoke) -> None:
    """No server: the process running a pool publishes its status under the home directory."""
    _pool_file()
    assert "no process runs pools under" in dspex("pools", "status").stdout
    with App(Settings.load()) as app:
        app.pools.get("general")
        entries = as_json(dspex("pools", "status", "--json"))
        assert len(entries) == 1
        entry = entries[0]
        assert (entry["pid"], entry["stale"], entry["gone"]) == (os.getpid(), False, False)
        assert [p["name"] for p in entry["pools"]] == ["general"]
        worker = entry["pools"][0]["workers"][0]
        assert worker["pid"] != os.getpid()
        assert worker["state"] in ("idle", "busy")
        table = dspex("pools", "status").stdout
        assert f"process {os.getpid()} on " in table
        assert "pool general: 1 workers, healthy" in table
    assert as_json(dspex("pools", "status", "--json")) == []  # its pools closed: its file is gone


def test_a_killed_owner_is_stale_and_its_file_is_removed_by_the_next(dspex: Invoke) -> None:
    _pool_file()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    settings = Settings.load()
    directory = settings.home / "pools"
    directory.mkdir(parents=True)
    orphan = directory / f"host-{gone.pid}.json"
    orphan.write_text(
        json.dumps(
            {
                "v": 1,
                "host": socket.gethostname(),
                "pid": gone.pid,
                "command": "dspex serve --pool general",
                "updated_at": "2026-01-01T00:00:00+00:00",
                "pools": [],
            }
        ),
        encoding="utf-8",
    )
    assert "(STALE: its process is gone)" in dspex("pools", "status").stdout
    with App(settings) as app:
        app.pools.get("general")
        assert not orphan.exists()  # a publisher clears its host's dead owners
        assert [e["pid"] for e in as_json(dspex("pools", "status", "--json"))] == [os.getpid()]


def test_pools_run_when_their_status_cannot_be_published(
    dspex: Invoke, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.load()
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "pools").write_text("a file where the directory would go", encoding="utf-8")
    with App(settings) as app, caplog.at_level(logging.WARNING, logger="dspex.pools"):
        pool = app.pools.get("general")
        assert pool.status().healthy
        app.pools._publisher.publish()  # type: ignore[union-attr]  # a later period, failing alike
    assert caplog.text.count("could not publish pool status") == 1  # said once, not every second


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_by_a_signal_closes_its_pools_and_removes_its_status_file(sig: int) -> None:
    """uvicorn raises SIGTERM again after its graceful shutdown: the server must still close its App."""
    _pool_file()
    directory = Settings.load().home / "pools"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = Path("serve.log")
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dspex.cli",
                "serve",
                "--no-auth",
                "--pool",
                "general",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while not list(directory.glob("*.json")):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server published no pool status in 90 s"
            time.sleep(0.1)
        while True:  # and serves: uvicorn has its signal handlers in place
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not listen in 90 s"
            time.sleep(0.1)
        [published] = directory.glob("*.json")
        workers = [w["pid"] for w in json.loads(published.read_text())["pools"][0]["workers"]]
        server.send_signal(sig)
        code = server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if sig == signal.SIGTERM:  # ended by the signal once the App closed, as a process manager expects
        assert code == -signal.SIGTERM, log.read_text()
    assert not published.exists()
    time.sleep(0.5)
    for pid in workers:  # the workers were stopped with their pool
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
