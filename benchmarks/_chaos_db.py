"""PostgreSQL restarted mid-load, as a measurement: the ``database`` row of ``benchmarks/chaos.py``.

Run alone: ``python benchmarks/_chaos_db.py [--runs 1000] [--threads 4] [--mode fast|immediate]``.

A private PostgreSQL cluster (``dspex.testing.postgres``: ``initdb`` in a temporary directory, a free
port; the machine's own server is never touched) holds the store of an App that runs
``dspy.Predict("question -> answer")`` on the offline scripted LM (``--lm-latency`` per call, every
eighth question failing on purpose) from ``--threads`` threads, with the REST service over it on uvicorn.
A tenth of the way into the load the database is stopped (``pg_ctl stop -m fast``, or ``immediate``: a
crash), kept down ``--outage`` seconds and started again; the load keeps going until ``--runs`` runs
ended and the service answered again. Then the same number of runs on a fresh database without faults.

Reported: runs attempted, succeeded, failed cleanly (a ``failed`` record and an error the caller saw),
lost (a run the caller saw without exactly one terminal record once the writer flushed), p50/p99 latency
of the runs against the fault-free run, how many runs ended while the database was down, and the
seconds from the database accepting connections again until the service answered ``/health`` and an
authenticated read (target: < 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # after the environment default above
import httpx
import sqlalchemy as sa

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store.schema import executions
from dspex.testing import ScriptedEngine
from dspex.testing.postgres import PostgresCluster, StopMode, unavailable_reason

Row = dict[str, Any]
TERMINAL = ("succeeded", "failed", "cancelled", "abandoned")


def _answer(inputs: dict[str, Any]) -> str:
    question = str(inputs["question"])
    if question.endswith("/fail"):
        raise RuntimeError(f"the scripted LM refuses {question!r}")
    return question.upper()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Load:
    """Threads running the program back to back; what each caller saw and how long each run took."""

    def __init__(self, app: App, threads: int, runs: int) -> None:
        self.app = app
        self.runs = runs
        self.program = dspy.Predict("question -> answer")
        self.lock = threading.Lock()
        self.issued = 0
        self.ids: list[str] = []  # every run the caller saw an execution id for
        self.failed_ids: list[str] = []
        self.latencies: list[float] = []  # seconds, every run that ended
        self.errors: Counter[str] = Counter()  # errors without an execution id: unaccounted for
        self.keep_going = threading.Event()  # set: run past ``runs`` (until the outage is over)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    @property
    def ended(self) -> int:
        with self.lock:
            return len(self.latencies)

    def _loop(self) -> None:
        while True:
            with self.lock:
                if self.issued >= self.runs and not self.keep_going.is_set():
                    return
                self.issued += 1
                n = self.issued
            inputs = {"question": f"q{n}/fail" if n % 8 == 0 else f"q{n}"}
            started = time.perf_counter()
            try:
                result = self.app.run(self.program, inputs)
            except Exception as exc:
                elapsed = time.perf_counter() - started
                execution_id = getattr(exc, "execution_id", None)
                with self.lock:
                    self.latencies.append(elapsed)
                    if execution_id:
                        self.ids.append(execution_id)
                        self.failed_ids.append(execution_id)
                    else:
                        self.errors[type(exc).__name__] += 1
            else:
                elapsed = time.perf_counter() - started
                with self.lock:
                    self.latencies.append(elapsed)
                    self.ids.append(result.execution_id)

    def run(self) -> None:
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            thread.join()


def _tally(app: App, load: _Load) -> Row:
    if not app.flush(timeout=60):
        raise RuntimeError("the execution writer did not catch up within 60 s of the end of the load")
    statuses: dict[str, str] = {}
    with app._open().db.read() as connection:
        for start in range(0, len(load.ids), 500):
            chunk = load.ids[start : start + 500]
            query = sa.select(executions.c.id, executions.c.status).where(executions.c.id.in_(chunk))
            statuses.update({row.id: row.status for row in connection.execute(query)})
    lost = sum(1 for execution_id in load.ids if statuses.get(execution_id) not in TERMINAL)
    failed = set(load.failed_ids)
    return {
        "attempted": len(load.latencies),
        "succeeded": len(load.ids) - len(failed),
        "failed": sum(1 for execution_id in failed if statuses.get(execution_id) == "failed"),
        "lost": lost,
        "p50": _percentile(load.latencies, 0.5) * 1000,
        "p99": _percentile(load.latencies, 0.99) * 1000,
        "errors": dict(load.errors),
    }


@contextmanager
def _service(app: App) -> Iterator[str]:
    """The REST service over ``app`` on uvicorn in a thread (127.0.0.1, a free port)."""
    import uvicorn

    from dspex.server import create_app

    config = uvicorn.Config(create_app(app), host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the REST service did not start")
        thread.join(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def _until_answers(http: httpx.Client, timeout: float) -> float:
    """Seconds until ``/health`` and an authenticated read both answer 200."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http.get("/health").status_code == 200 and http.get("/v1/programs").status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass  # the service itself is up; a dropped connection is retried like a 503
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not answer within {timeout:g} s of the database coming back")
        time.sleep(0.01)


def _app(url: str, home: Path, latency: float) -> App:
    engine = ScriptedEngine({"answer": _answer}, latency=latency)
    return App(Settings(database_url=url, home=home), lm=engine.lm())


def database_restart(
    runs: int,
    *,
    threads: int = 4,
    outage_s: float = 2.0,
    mode: StopMode = "fast",
    lm_latency_s: float = 0.02,
) -> Row:
    """Run the scenario (see the module docstring); a row for ``benchmarks/chaos.py``'s table.

    Keys: ``attempted``, ``succeeded``, ``failed``, ``lost``, ``p50``/``p99`` (ms), ``errors``, the
    fault-free ``baseline_p50``/``baseline_p99`` (ms), ``during_outage`` (runs that ended while the
    database was down), ``service_recovery_s``, and ``note`` (a sentence of all that). Without
    PostgreSQL's server binaries: only ``note``, saying why it was not run.
    """
    reason = unavailable_reason()
    if reason is not None:
        return {"note": f"not run: {reason}"}
    with PostgresCluster.create() as pg, tempfile.TemporaryDirectory() as tmp:
        chaos_url = pg.create_database("chaos")
        with _app(chaos_url, Path(tmp) / "chaos", lm_latency_s) as app:
            key = app.keys.create("bench", ["programs:read"])[1]
            load = _Load(app, threads, runs)
            timeline: dict[str, float] = {}

            def fault() -> None:
                while load.ended < max(1, runs // 10):
                    time.sleep(0.005)
                load.keep_going.set()  # keep the load on until the service is back
                try:
                    with httpx.Client(
                        base_url=service, headers={"Authorization": f"Bearer {key}"}, timeout=10
                    ) as http:
                        before = load.ended
                        pg.stop(mode)
                        time.sleep(outage_s)  # the outage itself
                        timeline["during"] = load.ended - before
                        pg.start()  # returns once the database accepts connections
                        timeline["recovery"] = _until_answers(http, timeout=60)
                finally:
                    load.keep_going.clear()

            with _service(app) as service:
                helper = threading.Thread(target=fault, daemon=True)
                helper.start()
                load.run()
                helper.join()
            row = _tally(app, load)
            writer = app._open().writer
            row["writer"] = {
                "outages": writer.outages,
                "spilled": writer.spilled,
                "replayed": writer.replayed,
            }
        base_url = pg.create_database("baseline")
        with _app(base_url, Path(tmp) / "baseline", lm_latency_s) as app:
            base_load = _Load(app, threads, row["attempted"])
            base_load.run()
            base = _tally(app, base_load)
    if "recovery" not in timeline:
        raise RuntimeError("the database restart did not complete; see the log above")
    row.update(
        baseline_p50=base["p50"],
        baseline_p99=base["p99"],
        during_outage=int(timeline["during"]),
        service_recovery_s=round(timeline["recovery"], 3),
    )
    row["note"] = (
        f"pg_ctl stop -m {mode}, down {outage_s:g} s: {row['during_outage']} runs ended meanwhile; "
        f"fault-free p50 {base['p50']:.1f} ms, p99 {base['p99']:.1f} ms "
        f"(p99 {row['p99'] / base['p99']:.2f}x); service answered {row['service_recovery_s']:.3f} s after "
        f"the database was back (target < 5 s); writer {row['writer']}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the database stays down")
    parser.add_argument("--mode", choices=["fast", "immediate"], default="fast")
    parser.add_argument("--lm-latency", type=float, default=0.02, help="seconds per scripted LM call")
    args = parser.parse_args()
    row = database_restart(
        args.runs, threads=args.threads, outage_s=args.outage, mode=args.mode, lm_latency_s=args.lm_latency
    )
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
