"""Requests per second and latency of the run endpoint of ``dspex serve``, driven from a second process.

Run: ``python benchmarks/service_load.py [--seconds 10] [--connections 32]``.

The script registers two programs on the same ``dspy.Predict("question -> answer")`` over a scripted
LM that answers instantly (``_service_program.py``), one of them with the program-level cache on,
creates an API key with the ``runs:execute`` scope, and starts ``dspex serve`` (uvicorn, with auth) as
a subprocess on 127.0.0.1. This process is the load generator: ``--connections`` keep-alive HTTP/1.1
connections on an asyncio loop, each sending ``POST /v1/programs/{name}/runs`` back to back for
``--seconds``. Rows:

- ``uncached``: every request has new inputs, so every request runs DSPy and records a full execution;
- ``cached``: every request repeats the same inputs; after the first, each is served from the program
  cache without DSPy, and still recorded as a cache hit.

Printed: requests, requests per second, p50 and p99 latency, and any non-200 responses (the run
fails if there is one). The target for the cached row on a 2-core machine is >= 1,000 requests/s.
The client is a few lines of raw asyncio HTTP rather than an HTTP library, so that the load generator
is not the bottleneck on a 2-core machine that runs both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(home: Path) -> str:
    """Register the two programs and return an API key."""
    from dspex.runtime import App
    from dspex.settings import Settings

    sys.path.insert(0, str(HERE))
    with App(Settings.load(home=home)) as app:
        for name in ("bench-uncached", "bench-cached"):
            version = app.programs.register(name, "_service_program:build")
            app.programs.promote(name, version.id)
        app.set_cache("bench-cached", 3600)
        _, key = app.keys.create("service-load", ["runs:execute"])
    return key


def request(name: str, key: str, question: str) -> bytes:
    body = json.dumps({"inputs": {"question": question}}).encode()
    head = (
        f"POST /v1/programs/{name}/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def connection(
    port: int,
    name: str,
    key: str,
    cached: bool,
    until: float,
    worker: int,
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fixed = request(name, key, "what is cached?")
    n = 0
    try:
        while time.perf_counter() < until:
            n += 1
            payload = fixed if cached else request(name, key, f"question {worker}-{n}")
            t0 = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
    finally:
        writer.close()


async def drive(
    port: int, name: str, key: str, cached: bool, seconds: float, connections: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(connection(port, name, key, cached, until, i, latencies, errors) for i in range(connections))
    )
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} failed requests to {name}, e.g. {errors[0]}")
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "rps": len(ordered) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def wait_until_up(port: int, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dspex serve exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("dspex serve did not start listening in time")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="Load duration per row.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of load before each row.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        key = prepare(home)
        port = free_port()
        env = {
            **os.environ,
            "DSPEX_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dspex.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        try:
            wait_until_up(port, server)
            print(
                f"dspex serve on 127.0.0.1:{port}; {args.connections} connections, {args.seconds:.0f} s per row"
            )
            print(f"{'row':<10} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
            for row, name, cached in (
                ("uncached", "bench-uncached", False),
                ("cached", "bench-cached", True),
            ):
                asyncio.run(drive(port, name, key, cached, args.warmup, args.connections))
                figures = asyncio.run(drive(port, name, key, cached, args.seconds, args.connections))
                print(
                    f"{row:<10} {figures['requests']:>9.0f} {figures['rps']:>9.0f} "
                    f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f}"
                )
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
