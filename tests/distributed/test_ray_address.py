"""DSPEX_RAY_ADDRESS names a cluster that is not this process's: a Ray head started by ``ray start`` as a
separate process (bound to 127.0.0.1, on free ports, in a temporary directory of its own), which this
test stops by killing the processes it started, by pid (never ``ray stop``: that stops every Ray on the
machine).

Ray (2.60, Linux) maps a loopback address to the machine's outward IP before it connects, so a head bound to
127.0.0.1 is unreachable as such; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's switch for single-node
clusters, read when ``ray`` is imported) keeps the head and the driver on 127.0.0.1. The head requires
Ray's token authentication, with a token made here and given to the driver as ``RAY_AUTH_TOKEN``. The driver is therefore
a process of its own (:mod:`ray_address_driver`), started with that variable and ``DSPEX_RAY_ADDRESS``."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dspex.runtime.app import App
from dspex.settings import Settings

HEAD_START_S = 90.0  # past this the test fails, saying so (see the report's measured figure)
DRIVER_S = 180.0
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # see the module docstring
# Ray's token authentication, with a token made for this head: the driver must present it to join.
TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class _Head:
    address: str
    process: subprocess.Popen[bytes]
    started_s: float

    def pids(self) -> set[int]:
        """The head's processes: ``ray start`` and everything it started (GCS, raylet, workers)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return {self.process.pid, *(p.pid for p in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()


def _ray_cli() -> str:
    ray = Path(sys.executable).with_name("ray")
    if ray.exists():
        return str(ray)
    found = shutil.which("ray")
    if found is None:
        pytest.skip("the ray CLI is not installed (pip install 'dspex[ray]'): no Ray head can be started")
    return found


@pytest.fixture
def ray_head() -> Iterator[_Head]:
    """A Ray head with 1 CPU, started with ``ray start --head --block`` in a session of its own."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    cli = _ray_cli()
    gcs, agent, agent_grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(7)
    # Short: Ray puts unix sockets under it, whose paths may not exceed 107 bytes.
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    command = [
        cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
    ]  # fmt: skip
    log = Path(temp) / "head.log"
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **LOOPBACK, **TOKEN},
        )
    head = _Head(f"127.0.0.1:{gcs}", process, 0.0)
    try:
        deadline = began + HEAD_START_S
        while b"Ray runtime started" not in log.read_bytes():
            if process.poll() is not None:
                pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head was not up after {HEAD_START_S:.0f} s:\n{log.read_text()}")
            time.sleep(0.1)
        head.started_s = time.monotonic() - began
        yield head
    finally:
        pids = head.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the session it leads: ray start and its children
        try:
            process.wait(3)  # `ray start --block` may sit out SIGTERM: killed below, with the rest
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        import psutil

        for pid in pids:  # anything of the head's that left the session, or ignored SIGTERM
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_pool_joins_the_cluster_named_by_dspex_ray_address(ray_head: _Head, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **LOOPBACK,
        **TOKEN,
        "DSPEX_RAY_ADDRESS": ray_head.address,
        "DSPEX_HOME": str(tmp_path),
        "DSPEX_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    driver = subprocess.run(
        [sys.executable, "-m", "ray_address_driver"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DRIVER_S,
    )
    assert driver.returncode == 0, driver.stderr[-4000:]
    report = json.loads(driver.stdout.strip().splitlines()[-1])
    assert report["ray_address"] == ray_head.address
    assert report["gcs_address"] == ray_head.address  # the head's cluster, not one of its own
    assert ray_head.process.pid in report["actor_ancestors"]  # the actor is a process of the separate head
    assert report["joined_after_close"] is False  # the pool left the cluster it joined
    assert ray_head.process.poll() is None  # and the head goes on
    with App(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/r.db")) as app:
        for i, run in enumerate(report["runs"]):
            assert run["answer"] == f"answer to q{i}"
            record = app.executions.get(run["execution_id"])
            assert record is not None
            assert record.status == "succeeded"
            assert record.outputs == {"reasoning": record.outputs["reasoning"], "answer": f"answer to q{i}"}
            assert record.placement is not None
            assert record.placement["pool"] == "remote"
            assert record.placement["pid"] == report["actor_pid"]
    print(f"Ray head started in {ray_head.started_s:.1f} s")  # shown with -s
