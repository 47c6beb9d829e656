"""``dspex sim-lm``: the server as a real subprocess, and the models table."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import dspy
import httpx
from typer.testing import CliRunner

from dspex.cli.simlm import app

LAUNCH = "from dspex.cli.simlm import app; app()"


def test_serve_subprocess_answers_dspy_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    log = (tmp_path / "stderr.txt").open("w")
    args = ["serve", "--port", "0", "--latency-scale", "0", "--fail-first", "429", "--retry-after", "0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args], stdout=subprocess.PIPE, stderr=log, text=True
    )
    watchdog = threading.Timer(30, proc.kill)  # the test can never hang on a stuck server
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("dspex sim-lm serving at http://127.0.0.1:"), first
        url = first.split()[-1]
        assert "sim-small, sim-medium, sim-large" in proc.stdout.readline()
        models = httpx.get(f"{url}/models", timeout=10).json()
        assert {m["id"] for m in models["data"]} == {"sim-small", "sim-medium", "sim-large"}
        lm = dspy.LM("openai/sim-small", api_base=url, api_key="anything", cache=False, num_retries=1)
        with dspy.context(lm=lm):
            assert dspy.Predict("question -> answer")(question="What is the capital of Peru?").answer
        stats = httpx.get(url.removesuffix("/v1") + "/sim/stats", timeout=10).json()
        assert stats["statuses"] == {"200": 1, "429": 1}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        log.close()
    assert "Shutting down" in (tmp_path / "stderr.txt").read_text()


def test_models_table() -> None:
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for name in ("sim-small", "sim-medium", "sim-large", "12.00"):
        assert name in result.output


def test_bad_knobs_exit_with_a_message() -> None:
    runner = CliRunner()
    rates = runner.invoke(app, ["serve", "--rate-limit-rate", "0.8", "--error-rate", "0.5"])
    assert rates.exit_code == 2
    assert "add up to at most 1" in rates.output
    failure = runner.invoke(app, ["serve", "--fail-first", "sometimes"])
    assert failure.exit_code == 2
    assert "--fail-first" in failure.output
