"""Distributed execution: Ray evaluation against the local evaluator, parallel optimization trials, and the
job queue's claim rate on PostgreSQL, in one run (issue 17).

    python benchmarks/distributed.py                 # all three
    python benchmarks/distributed.py --quick         # smaller sizes, for development

1. Evaluation: 400 examples, a scripted LM with 50 ms latency, on a Ray pool of 4 actors (a local
   2-CPU cluster, 0.5 CPU per actor) against the in-process Evaluator at the same total concurrency
   (32). Target: Ray at most 1.15x the local wall time.
2. Optimization: the holistic optimizer's trials with 2 at once against 1 at once, equal trials, on the
   simulated LM server (40 ms a call). Target: at least 1.7x faster.
3. Job queue: claim + complete rate with 8 concurrent workers (processes) on PostgreSQL
   (DSPEX_TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test; in a schema of
   its own, dropped afterwards).
4. Drivers: one optimization driven by 2 processes (an owner and a joiner, 1 trial at once each, sharing
   the run through its trial rows) against 1 process, equal trials, on SQLite. (No target in the issue;
   the ideal is 2x.)

Figures are ratios against a baseline measured in the same process; the load average is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).parent))

import dspy

from dspex.optimize import Evaluator
from dspex.optimize.metrics import exact_match

QA = {"module": "predict", "signature": "question -> answer"}


def _devset(n: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"q{i}", answer=f"Q{i}").with_inputs("question") for i in range(n)]


def evaluation(n: int, repeats: int) -> dict[str, float]:
    import ray

    from _pool_programs import scripted_lm
    from dspex.runtime.app import App
    from dspex.settings import Settings

    concurrency, actors = 32, 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                home=Path(tmp),
                database_url=f"sqlite:///{tmp}/bench.db",
                pools={
                    "ray4": {
                        "backend": "ray",
                        "size": actors,
                        "actor_cpus": 0.5,
                        "initializer": "_pool_programs:scripted_50ms",
                    }
                },
            )
            with App(settings) as app:
                app.programs.register("qa", QA)
                remote = app.pooled("qa", pool="ray4")
                evaluator = Evaluator(exact_match, concurrency=concurrency, cache=False)
                evaluator.run(remote, _devset(64))  # warm: actors built the program once
                devset = _devset(n)
                local_program, lm = app.programs.load("qa"), scripted_lm(latency=0.05)
                evaluator.run(local_program, devset[:64], lm=lm)
                ray_s, local_s = [], []
                for _ in range(repeats):
                    started = time.perf_counter()
                    on_ray = evaluator.run(remote, devset)
                    ray_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    local = evaluator.run(local_program, devset, lm=lm)
                    local_s.append(time.perf_counter() - started)
                    assert on_ray.score == local.score == 1.0, (on_ray.score, local.score)
    finally:
        ray.shutdown()
    ideal = n * 0.05 / concurrency
    ray_m, local_m = statistics.median(ray_s), statistics.median(local_s)
    print(
        f"evaluation: {n} examples, 50 ms LM, concurrency {concurrency}: Ray {actors} actors {ray_m:.2f} s, "
        f"local {local_m:.2f} s (ideal {ideal:.2f} s): Ray/local = {ray_m / local_m:.2f}x (target <= 1.15x)"
    )
    return {"ray_s": ray_m, "local_s": local_m, "ratio": ray_m / local_m}


def optimization(n_trials: int) -> dict[str, float]:
    from dspex.distributed.optimize import ParallelOptimizer
    from dspex.testing.server import SimServer
    from dspex.variables import Variable, VariableSpace, bind

    times: dict[int, float] = {}
    with SimServer(latency_scale=1.0, task_size=60) as sim:
        devset = sim.task.examples()[:16]
        for parallel in (1, 2):
            optimizer = ParallelOptimizer(
                VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
                [bind.temperature("temperature")],
                exact_match,
                n_trials=n_trials,
                pruning=False,
                lm=sim.lm("sim-large"),
                concurrency=4,
                parallel=parallel,
                cache=False,
            )
            started = time.perf_counter()
            result = optimizer.optimize(dspy.Predict("question -> answer"), devset)
            times[parallel] = time.perf_counter() - started
            assert result.finished == n_trials
    speedup = times[1] / times[2]
    print(
        f"optimization: {n_trials} trials x 16 examples, 40 ms LM: 1 at once {times[1]:.2f} s, 2 at once "
        f"{times[2]:.2f} s: {speedup:.2f}x faster (target >= 1.7x)"
    )
    return {"one_s": times[1], "two_s": times[2], "speedup": speedup}


def _driver(url: str, run_id: str, n_trials: int, join: bool, ready: Any, go: Any, out: Any) -> None:
    """One driver process of :func:`drivers`: built and warm before the clock starts."""
    from dspex.distributed.optimize import ParallelOptimizer
    from dspex.errors import ConfigurationError
    from dspex.store import open_database
    from dspex.store.optimizations import OptimizationRepository
    from dspex.testing.server import SimServer
    from dspex.variables import Variable, VariableSpace, bind

    with SimServer(latency_scale=1.0, task_size=60) as sim:
        optimizer = ParallelOptimizer(
            VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
            [bind.temperature("temperature")],
            exact_match,
            n_trials=n_trials,
            pruning=False,
            lm=sim.lm("sim-large"),
            concurrency=4,
            parallel=1,
            join=join,
            cache=False,
            poll_s=0.05,
        )
        devset = sim.task.examples()[:16]
        ready.put(os.getpid())
        go.wait()
        if join:  # the owner creates the run; a joiner starts once it exists
            db = open_database(url)
            repo = OptimizationRepository(db)
            while True:
                try:
                    repo.get(run_id)
                    break
                except ConfigurationError:
                    time.sleep(0.005)
            db.dispose()
        result = optimizer.optimize(
            dspy.Predict("question -> answer"), devset, db=url, optimization_id=run_id
        )
        mine = sum(1 for t in result.trials if t.driver and f"/{os.getpid()}/" in t.driver)
    out.put((time.time(), result.finished, mine))


def drivers(n_trials: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    walls: dict[int, float] = {}
    shares: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 2):
            url = f"sqlite:///{tmp}/drivers{count}.db"
            from dspex.store import open_database

            open_database(url).dispose()  # migrated before the clock starts
            ready, out, go = context.Queue(), context.Queue(), context.Event()
            processes = [
                context.Process(target=_driver, args=(url, "bench", n_trials, i > 0, ready, go, out))
                for i in range(count)
            ]
            for process in processes:
                process.start()
            for _ in processes:
                ready.get(timeout=120)
            started = time.time()
            go.set()
            finished = [out.get(timeout=300) for _ in processes]
            for process in processes:
                process.join()
            walls[count] = max(t for t, _, _ in finished) - started
            assert all(n == n_trials for _, n, _ in finished), finished
            if count == 2:
                shares = [m for _, _, m in finished]
    speedup = walls[1] / walls[2]
    print(
        f"drivers: {n_trials} trials x 16 examples, 40 ms LM, one trial at a time per process: 1 process "
        f"{walls[1]:.2f} s, 2 processes {walls[2]:.2f} s (trials per process {shares}): {speedup:.2f}x faster"
    )
    return {"one_s": walls[1], "two_s": walls[2], "speedup": speedup}


def _claimer(url: str, ready: Any, go: Any, out: Any) -> None:
    from dspex.store._engine import Database
    from dspex.store.jobs import JobRepository

    db = Database(url)
    repo = JobRepository(db)
    name, done = f"w{os.getpid()}", 0
    repo.get("warm-up")  # a connection open before the clock starts
    ready.put(os.getpid())
    go.wait()
    while True:
        job = repo.claim(name)
        if job is None:
            break
        repo.complete(job.id, name, {"ok": True})
        done += 1
    out.put((done, time.time()))
    db.dispose()


def claim_rate(jobs: int, workers: int = 8) -> dict[str, float]:
    import sqlalchemy as sa

    from dspex.store import open_database
    from dspex.store.jobs import JobRepository

    base = os.environ.get("DSPEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        db = open_database(url)
        repo = JobRepository(db)
        for i in range(jobs):
            repo.enqueue("bench", {"i": i})
        db.dispose()
        context = multiprocessing.get_context("spawn")
        ready, out, go = context.Queue(), context.Queue(), context.Event()
        processes = [context.Process(target=_claimer, args=(url, ready, go, out)) for _ in range(workers)]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)  # every worker imported and connected: the clock starts now
        started = time.time()
        go.set()
        finished = [out.get(timeout=180) for _ in processes]
        wall = max(t for _, t in finished) - started
        counts = [n for n, _ in finished]
        for process in processes:
            process.join()
        assert sum(counts) == jobs, counts
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    rate = jobs / wall
    print(
        f"job queue: {jobs} jobs claimed and completed by {workers} worker processes on PostgreSQL in "
        f"{wall:.2f} s: {rate:.0f} jobs/s (each worker {min(counts)}-{max(counts)} jobs)"
    )
    return {"rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (development)")
    parser.add_argument(
        "--only", choices=["evaluation", "optimization", "claims", "drivers"], help="one part"
    )
    parser.add_argument("--trials", type=int, help="trials of the drivers part (default 8, 4 with --quick)")
    args = parser.parse_args()
    if args.only is not None:
        parts = {
            "evaluation": lambda: evaluation(100 if args.quick else 400, 1 if args.quick else 3),
            "optimization": lambda: optimization(4 if args.quick else 8),
            "claims": lambda: claim_rate(200 if args.quick else 2000),
            "drivers": lambda: drivers(args.trials or (4 if args.quick else 8)),
        }
        parts[args.only]()
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    evaluation(100 if args.quick else 400, 1 if args.quick else 3)
    optimization(4 if args.quick else 8)
    claim_rate(200 if args.quick else 2000)
    drivers(args.trials or (4 if args.quick else 8))
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
