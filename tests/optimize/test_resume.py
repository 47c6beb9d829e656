"""Crash test: kill -9 the optimizing process mid-run, start it again, get exactly the requested trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspex.store import open_database
from dspex.store.optimizations import OptimizationRepository

WORKER = Path(__file__).with_name("resume_worker.py")
N_TRIALS = 12


def _start(url: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, "crash", str(N_TRIALS), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )


@pytest.mark.parametrize("mode", ["plain", "pruned"])
def test_killed_run_resumes_to_exactly_the_requested_trials(database_url: str, mode: str) -> None:
    # "pruned": the run opens with a bracket of four trials scored side by side; the kill usually lands
    # inside it (two trials pruned, two still open), and the resume must still end at exactly N_TRIALS.
    db = open_database(database_url)
    repo = OptimizationRepository(db)
    process = _start(database_url, mode)
    try:
        deadline = time.monotonic() + 40
        finished = 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                finished = repo.count("crash")
            except Exception:  # the run row may not exist yet
                finished = 0
            if finished >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert finished >= 2, "the worker did not finish two trials in time"
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    before = repo.trials("crash")
    assert repo.count("crash") < N_TRIALS
    assert repo.get("crash").status == "running"

    again = _start(database_url, mode)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == f"finished {N_TRIALS}"

    trials = repo.trials("crash")
    done = [t for t in trials if t.state in ("complete", "pruned")]
    assert len(done) == N_TRIALS
    assert [t.number for t in trials] == list(range(len(trials)))  # no number used twice, none skipped
    assert not [t for t in trials if t.state == "running"]
    # What finished before the kill is kept as it was; a trial cut off by the kill is failed, not counted.
    by_number = {t.number: t for t in trials}
    for t in before:
        if t.state == "complete":
            assert by_number[t.number].scores == t.scores
        if t.state == "running":
            assert by_number[t.number].state == "failed"
            assert "stopped before it finished" in (by_number[t.number].error or "")
    record = repo.get("crash")
    assert record.status == "succeeded"
    assert record.best is not None
    db.dispose()
