"""Chaos: what the resilience layer and the pools do when things break, as one table.

Run: ``python benchmarks/chaos.py [--runs 1000] [--threads 16] [--rows storm,probes,...]``.

Every LM scenario runs ``dspy.ChainOfThought("question -> answer")`` through ``App.run`` (recorded to
SQLite) against three simulated OpenAI-compatible endpoints on 127.0.0.1 (``dspex.testing.SimServer``,
real HTTP through DSPy's LM client), the first one the program's LM with the other two as its fallback
chain. For each: runs attempted, succeeded, failed cleanly (a terminal ``failed`` record and an error the
caller saw), lost (no terminal record, or not exactly one), and p50/p99 latency against the fault-free run.

Rows:

- ``baseline``: no faults; the reference p50/p99.
- ``storm``: 20% faults on every live endpoint (5% each of 429 with Retry-After, 500, a hang past the
  client timeout, malformed output) with the primary endpoint down (stopped) for the whole run.
  Targets: >= 99.5% succeed, 0 lost, p99 <= 3x the baseline p99.
- ``probes``: the primary answers 500 to everything for ``--probe-seconds``; once its breaker is open it
  must see at most one probe per cooldown.
- ``restart``: the primary's server is killed mid-load and started again on the same port 1 s later.
- ``database``: PostgreSQL (a private cluster) restarted mid-load (``benchmarks/_chaos_db.py``).
- ``rpm``: an RPM limit shared by 4 processes through Redis, held over 60 s (``benchmarks/rate_limits.py``).
- ``pool-kills``: 30 ``kill -9`` of random pool workers during 600 idempotent runs.
- ``pool-memory``: a task that allocates past ``kill_rss_mb`` among normal ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # pool workers import _pool_programs by name

import dspy

from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing import SimServer

LATENCY_S = 0.05  # every simulated call: 50 ms (+ up to 10 ms of jitter)
CLIENT_TIMEOUT_S = 0.15  # the LM client gives up on a hung request after this
STORM = {"rate_limit_rate": 0.05, "error_rate": 0.05, "timeout_rate": 0.05, "malformed_rate": 0.05}

Row = dict[str, Any]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def _endpoints(**knobs: Any) -> Iterator[list[SimServer]]:
    servers = [
        SimServer(
            latency=LATENCY_S,
            latency_scale=0,
            jitter=0.01,
            retry_after=0.05,
            timeout_seconds=5.0,
            seed=seed,
            **knobs,
        ).start()
        for seed in (1, 2, 3)
    ]
    try:
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


def _app(home: Path, servers: list[SimServer], **resilience: Any) -> App:
    config: dict[str, Any] = {
        "retries": 2,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "breaker": {"failure_rate": 0.5, "min_calls": 10, "window_s": 10, "cooldown_s": 2},
        "models": {"openai/sim-small": {"fallbacks": ["b", "c"]}},
    }
    config.update(resilience)
    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/chaos.db",
        lm="openai/sim-small",
        api_base=servers[0].url,
        api_key="sim",
        lm_cache=False,
        timeout=CLIENT_TIMEOUT_S,
        models={
            name: {"model": "openai/sim-small", "api_base": server.url, "api_key": "sim"}
            for name, server in zip(("b", "c"), servers[1:], strict=True)
        },
        resilience=config,
    )
    return App(settings)


def _drive(
    app: App,
    runs: int | None,
    threads: int,
    *,
    seconds: float | None = None,
    during: Callable[[], None] | None = None,
    run: Callable[..., Any] | None = None,
) -> Row:
    """``runs`` runs (or as many as fit in ``seconds``) from ``threads`` threads; ``during`` runs beside."""
    program = dspy.ChainOfThought("question -> answer")
    latencies: list[float] = []
    ids: list[str | None] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    counter = iter(range(runs if runs is not None else 10**12))
    stop = time.monotonic() + seconds if seconds is not None else None

    def one(i: int) -> None:
        t0 = time.perf_counter()
        execution_id = None
        try:
            result = (run or app.run)(program, {"question": f"What is the capital of country {i}?"})
            execution_id = result.execution_id
            ok = True
        except Exception as exc:
            execution_id = getattr(exc, "execution_id", None)
            ok = False
            with lock:
                errors[getattr(exc, "code", type(exc).__name__)] += 1
        took = time.perf_counter() - t0
        with lock:
            ids.append(execution_id)
            if ok:
                latencies.append(took)

    def worker() -> None:
        while stop is None or time.monotonic() < stop:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            one(i)

    helper = threading.Thread(target=during, daemon=True) if during is not None else None
    if helper is not None:
        helper.start()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if helper is not None:
        helper.join()
    return _tally(app, ids, latencies, errors)


def _tally(app: App, ids: list[str | None], latencies: list[float], errors: Counter[str]) -> Row:
    app.flush()
    lost = 0
    statuses: Counter[str] = Counter()
    for execution_id in ids:
        record = app.executions.get(execution_id) if execution_id else None
        if record is None or record.status not in ("succeeded", "failed", "cancelled"):
            lost += 1
        else:
            statuses[record.status] += 1
    return {
        "attempted": len(ids),
        "succeeded": len(latencies),
        "failed": statuses["failed"],
        "lost": lost,
        "p50": _percentile(latencies, 0.5) * 1000,
        "p99": _percentile(latencies, 0.99) * 1000,
        "errors": dict(errors),
    }


def baseline(home: Path, runs: int, threads: int) -> Row:
    with _endpoints() as servers, _app(home, servers) as app:
        _drive(app, 50, threads)  # warm: connections, prices
        return {"row": "baseline", **_drive(app, runs, threads)}


def storm(home: Path, runs: int, threads: int) -> Row:
    with _endpoints(**STORM) as servers:
        servers[0].stop()  # the primary endpoint is down for the whole run
        with _app(home, servers) as app:
            row = _drive(app, runs, threads)
            breakers = {b["endpoint"].split("@")[1]: b["state"] for b in app.resilience.status()["breakers"]}
        row["note"] = f"primary down; breakers {sorted(breakers.values())}"
        return {"row": "storm", **row}


def probes(home: Path, seconds: float, threads: int) -> Row:
    """The dead endpoint's requests once its breaker opened: counted from 0.5 s after the first opening
    (calls already in flight when it opened land before that), per cooldown."""
    cooldown = 1.0
    with _endpoints() as servers:
        dead = servers[0]
        dead.configure(error_rate=1.0)
        with _app(
            home,
            servers,
            retries=0,
            breaker={"failure_rate": 0.5, "min_calls": 10, "window_s": 10, "cooldown_s": cooldown},
        ) as app:
            marks: dict[str, float] = {}

            def watch() -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    states = app.resilience.status()["breakers"]
                    if "opened" not in marks and any(
                        b["state"] == "open" for b in states if dead.url in b["endpoint"]
                    ):
                        marks["opened"] = time.monotonic()
                    if "opened" in marks and "from" not in marks and time.monotonic() > marks["opened"] + 0.5:
                        marks["from"] = time.monotonic()
                        marks["count_from"] = dead.stats().statuses.get(500, 0)
                    time.sleep(0.005)

            row = _drive(app, None, threads, seconds=seconds, during=watch)
            end = time.monotonic()
            state = next(b for b in app.resilience.status()["breakers"] if dead.url in b["endpoint"])
        total = dead.stats().statuses.get(500, 0)
        probes_seen = total - int(marks.get("count_from", total))
        windows = (end - marks.get("from", end)) / cooldown
        row.update(
            row="probes",
            note=f"dead endpoint: {total} requests; after its breaker opened, {probes_seen} probes in "
            f"{windows:.1f} cooldowns of {cooldown:.0f} s = {probes_seen / max(windows, 1e-9):.2f} per cooldown "
            f"(target <= 1); opened {state['opens']} times",
        )
        return row


def restart(home: Path, runs: int, threads: int) -> Row:
    with _endpoints() as servers, _app(home, servers) as app:
        primary = servers[0]

        def kill_and_restart() -> None:
            time.sleep(1.0)
            before.update(primary.stats().statuses)
            primary.restart(downtime=1.0)  # the same port: the LM's base URL stays valid

        before: Counter[int] = Counter()
        row = _drive(app, runs, threads, during=kill_and_restart)
        served = primary.stats().statuses.get(200, 0) - before.get(200, 0)
        row.update(
            row="restart", note=f"primary down 1 s mid-load; it served {served} requests after its restart"
        )
        return row


def database(runs: int) -> Row:
    try:
        import _chaos_db
    except ImportError as exc:
        return {"row": "database", "note": f"not run: {exc}"}
    result: Row = _chaos_db.database_restart(runs)
    return {"row": "database", **result}


def rpm(seconds: float) -> Row:
    try:
        import rate_limits
    except ImportError as exc:
        return {"row": "rpm", "note": f"not run: {exc}"}
    measure = getattr(rate_limits, "measure", None)
    if measure is None:
        return {"row": "rpm", "note": "benchmarks/rate_limits.py has no measure(); run it directly"}
    result: Row = measure(processes=4, seconds=seconds)
    return {
        "row": "rpm",
        "note": f"rpm {result['rpm']} shared by {result['processes']} processes through Redis for "
        f"{result['seconds']:g} s: admitted {result['admitted']}, busiest 60 s window {result['busiest_window']} "
        f"(ratio {result['ratio']:.3f}, target within 5%)",
    }


def pool_kills(home: Path, runs: int = 600, kills: int = 30) -> Row:
    import _pool_programs  # noqa: F401  # the workers import it by name too

    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/pool.db",
        pools={"general": {"size": 2, "initializer": "_pool_programs:scripted_50ms", "heartbeat_s": 0.05}},
    )
    with App(settings) as app:
        app.programs.register("cot", "_pool_programs:build_cot")
        app.run("cot", {"question": "warm"}, pool="general")
        pool = app.pools.get("general")
        done = threading.Event()

        def killer() -> None:
            for _ in range(kills):
                if done.wait(random.uniform(0.05, 0.15)):
                    return
                busy = [w.pid for w in pool.status().workers if w.state == "busy" and w.pid]
                if busy:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(random.choice(busy), signal.SIGKILL)

        def run(program: Any, inputs: dict[str, Any]) -> Any:
            return app.run("cot", inputs, pool="general", idempotent=True)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        row = _drive(app, runs, 8, run=run)
        done.set()
        thread.join()
        replaced = dict(pool.status().replaced)
    row.update(row="pool-kills", note=f"workers replaced {replaced}")
    return row


def pool_memory(home: Path, runs: int = 200) -> Row:
    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/memory.db",
        pools={
            "general": {
                "size": 1,
                "initializer": "_pool_programs:scripted",
                "kill_rss_mb": 600,
                "heartbeat_s": 0.02,
            }
        },
    )
    with App(settings) as app:
        app.programs.register("cot", "_pool_programs:build_cot")
        app.programs.register("hog", "_pool_programs:build_hog")

        def run(program: Any, inputs: dict[str, Any]) -> Any:
            if int(inputs["question"].split()[-1].rstrip("?")) % 20 == 0:
                return app.run("hog", {"mb": 800, "hold_s": 1.0}, pool="general")
            return app.run("cot", inputs, pool="general")

        row = _drive(app, runs, 4, run=run)
        replaced = dict(app.pools.get("general").status().replaced)
    row.update(row="pool-memory", note=f"1 in 20 tasks allocates past kill_rss_mb=600; replaced {replaced}")
    return row


ROWS = ("baseline", "storm", "probes", "restart", "database", "rpm", "pool-kills", "pool-memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    parser.add_argument("--rpm-seconds", type=float, default=60.0)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    args = parser.parse_args()
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            home = Path(tmp) / name
            home.mkdir()
            if name == "baseline":
                rows.append(baseline(home, args.runs, args.threads))
            elif name == "storm":
                rows.append(storm(home, args.runs, args.threads))
            elif name == "probes":
                rows.append(probes(home, args.probe_seconds, args.threads))
            elif name == "restart":
                rows.append(restart(home, args.runs, args.threads))
            elif name == "database":
                rows.append(database(args.runs))
            elif name == "rpm":
                rows.append(rpm(args.rpm_seconds))
            elif name == "pool-kills":
                rows.append(pool_kills(home))
            elif name == "pool-memory":
                rows.append(pool_memory(home))
            _print(rows[-1], rows)


def _print(row: Row, rows: list[Row]) -> None:
    base = next((r for r in rows if r.get("row") == "baseline"), None)
    if "attempted" in row:
        ratio = ""
        if base is not None and row.get("row") in ("storm", "probes", "restart") and base.get("p99"):
            ratio = f"  p99 {row['p99'] / base['p99']:.2f}x baseline"
        share = 100.0 * row["succeeded"] / max(1, row["attempted"])
        print(
            f"{row['row']:<12} attempted {row['attempted']:6d}  succeeded {row['succeeded']:6d} ({share:6.2f}%)  "
            f"failed cleanly {row['failed']:5d}  lost {row['lost']:3d}  p50 {row['p50']:7.1f} ms  "
            f"p99 {row['p99']:7.1f} ms{ratio}"
        )
        if row.get("errors"):
            print(f"{'':12} errors {row['errors']}")
    else:
        print(
            f"{row['row']:<12} " + "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("row", "note"))
        )
    if row.get("note"):
        print(f"{'':12} {row['note']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
