"""A real Arize Phoenix for the round-trip test: installed once into its own virtualenv, run as a subprocess.

Phoenix resolves against our pins (``pip install --dry-run`` with sqlalchemy 2.1, pydantic 2.14, fastapi
0.165, starlette 1.10 and dspy 3.4.1 succeeds), but it brings about 150 packages (pandas, pyarrow, grpcio,
boto3, openai, anthropic, google-genai, pydantic-ai...) that DSPex neither needs nor should be tested
beside. So it lives in ``~/.cache/dspex-test-phoenix/<version>`` (``DSPEX_TEST_CACHE`` moves the cache
root), made by the first test run on a machine (about two minutes), and later runs start it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

PHOENIX_VERSION = "20.26.1"
INSTALL_TIMEOUT_S = 1200.0
START_TIMEOUT_S = 120.0
_OFFLINE_SIGNS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
    "Could not fetch URL",
    "No matching distribution found for arize-phoenix",
)


class PhoenixUnavailable(Exception):
    """Phoenix cannot be installed here because PyPI cannot be reached (the test skips)."""


def _cache_root() -> Path:
    return Path(os.environ.get("DSPEX_TEST_CACHE") or Path.home() / ".cache") / "dspex-test-phoenix"


def phoenix_venv() -> Path:
    """The virtualenv holding ``arize-phoenix==PHOENIX_VERSION``, installed on first use.

    A marker file written after a complete install tells a finished venv from one an interrupted install
    left; concurrent test runs wait on a lock file instead of installing twice.
    """
    root = _cache_root() / PHOENIX_VERSION
    venv, done = root / "venv", root / "installed"
    if done.exists():
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        try:
            subprocess.run(
                [*pip, f"arize-phoenix=={PHOENIX_VERSION}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as exc:
            output = f"{exc.stdout}\n{exc.stderr}"
            if any(sign in output for sign in _OFFLINE_SIGNS):
                raise PhoenixUnavailable(
                    f"arize-phoenix=={PHOENIX_VERSION} cannot be installed: PyPI is not reachable"
                ) from exc
            raise RuntimeError(
                f"installing arize-phoenix=={PHOENIX_VERSION} into {venv} failed:\n{output[-4000:]}"
            ) from exc
        done.write_text(PHOENIX_VERSION)
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Phoenix:
    """A running Phoenix: ``url`` takes OTLP/HTTP at ``/v1/traces`` and answers its REST API."""

    url: str
    log: Path

    def spans(
        self, project: str, trace_id: str, *, expect: int, timeout_s: float = 30.0
    ) -> list[dict[str, object]]:
        """The spans of ``trace_id`` in ``project``, through Phoenix's REST API, once ``expect`` arrived
        (Phoenix ingests in the background)."""
        deadline = time.monotonic() + timeout_s
        found: list[dict[str, object]] = []
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while True:
                response = client.get(f"/v1/projects/{project}/spans", params={"limit": 1000})
                if response.status_code == 200:
                    found = [
                        span
                        for span in response.json()["data"]
                        if span["context"]["trace_id"] == trace_id  # type: ignore[index]
                    ]
                    if len(found) >= expect:
                        return found
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Phoenix holds {len(found)} of the {expect} spans of trace {trace_id} after "
                        f"{timeout_s:.0f} s (last answer {response.status_code}); its log: {self.log}"
                    )
                time.sleep(0.25)


@contextlib.contextmanager
def running_phoenix(workdir: Path) -> Iterator[Phoenix]:
    """Start ``phoenix serve`` on free 127.0.0.1 ports with its data in ``workdir``; stop it after."""
    venv = phoenix_venv()
    port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = workdir / "phoenix.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "phoenix"), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"phoenix exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"phoenix did not answer within {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.25)
        yield Phoenix(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
