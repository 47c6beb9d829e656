"""The LM server killed and started again mid-load (the simulated server, on the same port): every run ends
with a terminal record matching what its caller saw, runs that failed while it was down fail cleanly
with an LM error in their record (connection refused, then the endpoint's open breaker), and runs
succeed again once it is back and the breaker's probe found it, through the same ``dspy.LM``."""

from __future__ import annotations

import time
from pathlib import Path

import dspy
from chaos_support import RunLoad, record_statuses, wait_for

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer


def test_runs_fail_cleanly_while_the_lm_server_is_down_and_succeed_after(tmp_path: Path) -> None:
    with SimServer(latency_scale=0, latency=0.005) as sim:
        # The endpoint's breaker opens while the server is down (then runs fail fast); a short cooldown
        # lets its probe find the server back within the test.
        breaker = {"failure_rate": 0.5, "min_calls": 5, "window_s": 5.0, "cooldown_s": 0.5}
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'dspex.db'}",
            home=tmp_path / "home",
            resilience={"retries": 0, "breaker": breaker},
        )
        with App(settings, lm=sim.lm("sim-small", num_retries=0)) as app:
            load = RunLoad(
                app, dspy.Predict("question -> answer"), threads=4, inputs=lambda n: {"question": f"q{n}"}
            )
            load.start()
            load.wait_for_runs(40)
            url = sim.url
            sim.stop()  # killed: connections refused from now on
            # Down until runs fail (without retries, at once), or for 3 s if retries carry them through.
            down_at = time.monotonic()
            wait_for(
                lambda: len(load.failed) >= 20 or time.monotonic() - down_at > 3,
                timeout=10,
                what="runs to fail while the server is down",
            )
            sim.start()
            assert sim.url == url
            back = len(load.succeeded)
            wait_for(lambda: len(load.succeeded) >= back + 40, timeout=15, what="runs to succeed again")
            load.stop()
            assert app.flush(timeout=30)
            seen = load.succeeded + load.failed
            statuses = record_statuses(app, seen)
            errors = [app.executions.get(e).error["code"] for e in load.failed]  # type: ignore[union-attr,index]
    assert load.unexpected == []
    assert load.failed, "runs failed while the LM server was down (none retried: num_retries=0)"
    assert [e for e in seen if e not in statuses] == []  # none lost
    assert all(statuses[e] == "succeeded" for e in load.succeeded)
    assert all(statuses[e] == "failed" for e in load.failed)
    assert all(code for code in errors), "each failed run's record says why"
