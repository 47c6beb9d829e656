"""LM faults through the resilience layer, on the real DSPy LM path against simulated endpoints.

- A storm of 20% faults (429 with Retry-After, 500, hangs past the client timeout, malformed output) on
  two endpoints while the third, the program's own, is down for the whole run: runs succeed through
  retries and the fallback chain, none is lost, every failure says why in its record.
- A dead endpoint whose breaker opened sees at most one probe per cooldown, whatever the load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
from chaos_support import RunLoad, record_statuses, wait_for

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer

STORM = {"rate_limit_rate": 0.05, "error_rate": 0.05, "timeout_rate": 0.05, "malformed_rate": 0.05}


@contextlib.contextmanager
def _endpoints(**knobs: Any) -> Iterator[list[SimServer]]:
    servers = [
        SimServer(latency=0.005, latency_scale=0, retry_after=0.02, timeout_seconds=5.0, seed=seed, **knobs)
        for seed in (1, 2, 3)
    ]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(server) for server in servers]


def _app(tmp_path: Path, servers: list[SimServer], **resilience: Any) -> App:
    config: dict[str, Any] = {
        "retries": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.1,
        "breaker": {"failure_rate": 0.5, "min_calls": 10, "window_s": 10, "cooldown_s": 2},
        "models": {"openai/sim-small": {"fallbacks": ["b", "c"]}},
        **resilience,
    }
    settings = Settings.load(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'dspex.db'}",
        lm="openai/sim-small",
        api_base=servers[0].url,
        api_key="sim",
        lm_cache=False,
        timeout=0.2,  # a hung request is given up after 0.2 s, then retried
        models={
            name: {"model": "openai/sim-small", "api_base": server.url, "api_key": "sim"}
            for name, server in zip(("b", "c"), servers[1:], strict=True)
        },
        resilience=config,
    )
    return App(settings)


def test_a_fault_storm_with_one_endpoint_down_loses_no_run(tmp_path: Path) -> None:
    with _endpoints(**STORM) as servers:
        servers[0].stop()  # the program's own endpoint is down for the whole run
        with _app(tmp_path, servers) as app:
            load = RunLoad(
                app,
                dspy.ChainOfThought("question -> answer"),
                threads=8,
                inputs=lambda n: {"question": f"q{n}"},
            ).start()
            load.wait_for_runs(300, timeout=120)
            load.stop()
            assert app.flush(timeout=30)
            seen = load.succeeded + load.failed
            statuses = record_statuses(app, seen)
            failures = [app.executions.get(e) for e in load.failed]
            breakers = {b["endpoint"]: b for b in app.resilience.status()["breakers"]}
        faults = sum(s.stats().statuses.get(code, 0) for s in servers[1:] for code in (429, 500, 504))
    assert load.unexpected == []
    assert [e for e in seen if e not in statuses] == []  # none lost
    assert all(statuses[e] == "succeeded" for e in load.succeeded)
    assert all(f is not None and f.status == "failed" and f.error["code"] for f in failures)
    assert len(load.succeeded) >= 0.99 * len(seen), f"{len(load.failed)} of {len(seen)} failed"
    assert faults > 0.05 * len(seen)  # the storm did happen on the live endpoints
    assert breakers[f"openai/sim-small@{servers[0].url}"]["opens"] >= 1  # the dead one is skipped


def test_a_dead_endpoint_gets_at_most_one_probe_per_cooldown(tmp_path: Path) -> None:
    cooldown = 0.5
    with _endpoints() as servers:
        dead = servers[0]
        dead.configure(error_rate=1.0)
        breaker = {"failure_rate": 0.5, "min_calls": 10, "window_s": 10, "cooldown_s": cooldown}
        with _app(tmp_path, servers, retries=0, breaker=breaker) as app:
            load = RunLoad(
                app, dspy.Predict("question -> answer"), threads=8, inputs=lambda n: {"question": f"q{n}"}
            ).start()

            def opened() -> bool:
                return any(
                    b["state"] == "open" and dead.url in b["endpoint"]
                    for b in app.resilience.status()["breakers"]
                )

            wait_for(opened, timeout=20, what="the dead endpoint's breaker to open")
            time.sleep(0.3)  # calls in flight when it opened land now
            before, t0 = dead.stats().statuses.get(500, 0), time.monotonic()
            time.sleep(4 * cooldown + 0.1)
            probes, elapsed = dead.stats().statuses.get(500, 0) - before, time.monotonic() - t0
            load.stop()
    assert load.unexpected == []
    assert load.failed == []  # every call went on to a fallback
    assert 1 <= probes <= elapsed / cooldown + 1, f"{probes} probes in {elapsed:.2f} s"
