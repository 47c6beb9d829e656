"""Worker pools against inline runs, in one process on this machine.

Run: ``python benchmarks/pools.py [--runs 2000] [--leak-tasks 500] [--only throughput --only ...]``.

Rows (each pool row runs against the same App's inline path in the same run):

- ``dispatch``: a no-op program, one run at a time, inline and on a 1-worker pool; the difference per run
  is what a pool adds (JSON both ways, two pipe hops, the caller's record of the worker's outcome).
  Target: at most 300 us.
- ``cpu throughput``: ``dspy.ChainOfThought`` on a scripted LM with no latency (pure DSPy CPU work), runs
  per second inline in this process (one caller: the GIL makes more callers no faster) and on a 2-worker
  pool fed by 2, 4, then 8 caller threads (each a plain loop of ``app.run``, as the inline caller is; a
  caller waits for its run, so the callers bound the runs in flight); ``--rounds``
  alternated rounds of each, the best of each kept, so load from other processes weighs on both sides
  alike. Target: at least 1.6x. Then the same runs as one batch (``run_batch(..., pool="general")``),
  which sends them to the workers in shards (several runs per message, one record each), and the
  machine's own ceiling: the work two processes of a pure-Python loop do side by side against one
  alone, measured in the same rounds (2.0 on two free cores; this VM's vCPUs often give less).
  Then the CPU time per run of each side (``cpu per run``): inline, this process's; on the pool, this
  process's (sending, waiting, recording) plus the workers'. Their ratio is what two cores allow at
  most, whatever the scheduling: ``2 x inline / (this process + workers)``.
- ``lm-bound``: ``dspy.ChainOfThought`` whose LM takes 50 ms, from 128 caller threads (each a loop of
  ``app.run``) for ``--lm-seconds``: runs per second inline against a 2-worker pool at its default
  ``concurrency`` (each worker runs many runs at once, on threads). Runs that wait on an LM are what a
  production pool serves; it should keep up with inline, and pass it where one process's CPU (the
  GIL) caps the inline runs.
- ``rest``: uncached ``POST /v1/programs/{name}/runs`` requests per second against ``dspex serve`` and
  ``dspex serve --pool general`` (2 workers), load from this process (``service_load.py``'s client, 32
  connections) on the same 2 cores. Both servers run at once; ``--rounds`` alternated rounds of
  ``--rest-seconds`` on each, the best of each kept. Then the CPU time per request of the client, the
  server process and the pool's workers (medians over rounds). Target: at least 1.5x.
- ``evaluation``: ``--examples`` examples of ``dspy.ChainOfThought`` at 50 ms of LM latency and
  concurrency 128: ``dspy.Evaluate(num_threads=128)`` in this process against the evaluation engine on a
  2-worker pool (``app.pooled(...)``, 64 threads per worker), ``--rounds`` alternated rounds, the best
  of each kept. Target: at least 1.6x.
- ``leak``: ``--leak-tasks`` runs of a program that leaks 50 MB per call on a 1-worker pool with
  ``max_rss_mb = 400``: the highest worker RSS seen and how many times the worker was recycled.

Every run is recorded (SQLite, async durability) in every row. The CPU-bound rows (dispatch, cpu
throughput, rest) run their pools at ``concurrency = 1``, the setting for programs that never wait on an
LM; ``--concurrency 64`` runs them at the default, which is for runs that wait (row ``lm-bound``).
At ``concurrency = 1`` queued runs go to a worker in groups of up to ``--coalesce`` (8, the default;
``--coalesce 1`` sends each run alone): a loaded server's queue is where that counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers import _pool_programs by name

from dspex.distributed.batch import SHARD_SIZE, run_batch
from dspex.runtime import App
from dspex.settings import Settings


def _app(home: Path, **pool: object) -> App:
    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/bench.db",
        pools={"general": {"initializer": "_pool_programs:scripted", **pool}},
    )
    import _pool_programs

    return App(settings, lm=_pool_programs.scripted_lm())


def _register(app: App) -> None:
    for name in ("noop", "cot", "leak"):
        if name not in {p.name for p in app.programs.list_programs()}:
            app.programs.register(name, f"_pool_programs:build_{name}")


def dispatch(home: Path, runs: int, concurrency: int) -> None:
    with _app(home, size=1, concurrency=concurrency) as app:
        _register(app)
        app.run("noop", {"question": "warm"}, pool="general")
        app.run("noop", {"question": "warm"})
        timings = {}
        for where in ("inline", "pool", "inline", "pool"):
            pool = "general" if where == "pool" else None
            t0 = time.perf_counter()
            for i in range(runs):
                app.run("noop", {"question": f"q{i}"}, pool=pool)
            app.flush()
            timings[where] = min(timings.get(where, 1e9), (time.perf_counter() - t0) / runs)
    added = (timings["pool"] - timings["inline"]) * 1e6
    print(
        f"dispatch        inline {timings['inline'] * 1e6:7.0f} us/run   pool {timings['pool'] * 1e6:7.0f} us/run"
        f"   added {added:6.0f} us/run (target <= 300)"
    )


def _timed_threads(app: App, threads: list[threading.Thread]) -> float:
    """Seconds from starting ``threads`` until all have ended and their records are written."""
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    app.flush()
    return time.perf_counter() - t0


CALLERS = (2, 4, 8)  # threads feeding the 2-worker pool in the cpu throughput row, one figure each


def throughput(
    home: Path,
    runs: int,
    rounds: int,
    callers: tuple[int, ...] = CALLERS,
    prefetch: int | None = None,
    concurrency: int | None = None,
    coalesce: int | None = None,
) -> None:
    tuning = {"prefetch": prefetch, "concurrency": concurrency, "coalesce": coalesce}
    with _app(home, size=2, **{k: v for k, v in tuning.items() if v is not None}) as app:
        _register(app)
        for _ in range(4):
            app.run("cot", {"question": "warm"}, pool="general")
        app.run("cot", {"question": "warm"})

        workers = [psutil.Process(w.pid) for w in app.pools.get("general").status().workers if w.pid]
        spent: dict[str, list[tuple[float, float]]] = {}  # row -> (this process, workers) CPU s per run

        def cpu_of(row: str, run: Callable[[], float]) -> float:
            """``run()``'s rate, noting the CPU time per run of this process and of the pool's workers."""
            mine, theirs = time.process_time(), sum(_cpu_s(w) for w in workers)
            rate = run()
            spent.setdefault(row, []).append(
                ((time.process_time() - mine) / runs, (sum(_cpu_s(w) for w in workers) - theirs) / runs)
            )
            return rate

        def inline_rate() -> float:
            t0 = time.perf_counter()
            for i in range(runs):
                app.run("cot", {"question": f"inline {i}"})
            app.flush()
            return runs / (time.perf_counter() - t0)

        def caller(first: int, step: int) -> None:  # a plain loop, as inline: no executor future per run
            for i in range(first, runs, step):
                app.run("cot", {"question": f"pool {i}"}, pool="general")

        def pool_rate(count: int) -> float:
            return runs / _timed_threads(
                app, [threading.Thread(target=caller, args=(k, count)) for k in range(count)]
            )

        def batch_rate() -> float:  # a batch on the pool: shards of SHARD_SIZE runs per message
            inputs = [{"question": f"batch {i}"} for i in range(runs)]
            t0 = time.perf_counter()
            lines = run_batch(app, "cot", inputs, pool="general")
            app.flush()
            rate = runs / (time.perf_counter() - t0)
            assert all(line.status == "succeeded" for line in lines), "a batch run failed"
            return rate

        # Alternated, best of each: load from other processes on the machine hits both sides alike.
        inline = batch = 0.0
        pooled = dict.fromkeys(callers, 0.0)
        ceiling = 0.0
        for _ in range(rounds):
            inline = max(inline, cpu_of("inline", inline_rate))
            for count in callers:
                pooled[count] = max(pooled[count], cpu_of(f"{count} callers", lambda: pool_rate(count)))  # noqa: B023
            batch = max(batch, cpu_of("batch", batch_rate))
            ceiling = max(ceiling, machine_scaling())
        held = app.pools.setting("general").concurrency
        grouped = app.pools.setting("general").coalesce
    for count, rate in pooled.items():
        print(
            f"cpu throughput  inline {inline:7.0f} runs/s   2-worker pool (concurrency {held}, coalesce {grouped}), {count} callers "
            f"{rate:7.0f} runs/s   "
            f"{rate / inline:.2f}x (target >= 1.6x; best of {rounds} alternated rounds each)"
        )
    print(
        f"cpu throughput  inline {inline:7.0f} runs/s   batch on the 2-worker pool, shards of {SHARD_SIZE} "
        f"{batch:7.0f} runs/s   {batch / inline:.2f}x (target >= 1.6x)"
    )
    # Where the CPU goes decides what two cores allow: a pooled run costs its worker's CPU plus this
    # process's (sending, waiting, the record), against one inline run in one process.
    median = {row: tuple(statistics.median(x[i] for x in xs) for i in (0, 1)) for row, xs in spent.items()}
    alone = median["inline"][0]
    for row, (mine, theirs) in median.items():
        if row == "inline":
            continue
        print(
            f"cpu per run     inline {alone * 1e6:5.0f} us   pool, {row}: this process {mine * 1e6:4.0f} us + "
            f"workers {theirs * 1e6:4.0f} us: two cores allow at most {2 * alone / (mine + theirs):.2f}x "
            f"(medians of {rounds} rounds)"
        )
    print(
        f"machine         2 processes of a pure-Python loop do {ceiling:.2f}x the work of one "
        f"(the most any 2-worker pool can reach on this machine now; best of {rounds})"
    )


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _children_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of ``process``'s children (a server's pool workers)."""
    return sum(_cpu_s(child) for child in process.children(recursive=True))


def _spin(seconds: float) -> int:
    """A pure-Python loop for ``seconds``: how many rounds it did (the machine's CPU, nothing shared)."""
    done, table = 0, {}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i in range(1000):
            table[i & 255] = i * 3
        done += 1
    return done


def machine_scaling(seconds: float = 1.0) -> float:
    """The work two processes spinning side by side do, against one alone: 2.0 on two free cores; less
    when the cores are busy with other work or the host gives the virtual CPUs less than two cores."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_spin, [0.05, 0.05])  # started
        alone = pool.apply(_spin, (seconds,))
        both = sum(pool.map(_spin, [seconds, seconds], chunksize=1))
    return both / alone


def rest(seconds: float, concurrency: int, rounds: int, coalesce: int) -> None:
    """Both servers up at once (one home, one database); ``rounds`` alternated rounds of ``seconds`` of
    load on each, the best of each kept, as the cpu throughput row: a phase of load from other processes
    weighs on both sides alike, where one sample of each let it decide the ratio."""
    import asyncio
    import subprocess

    import service_load as load

    rates: dict[str, float] = {}
    cpu: dict[str, list[tuple[float, float, float]]] = {}  # row -> (client, server, workers) us/request
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        key = load.prepare(home)
        env = {
            **os.environ,
            "DSPEX_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(load.HERE), os.environ.get("PYTHONPATH")])),
        }
        # The servers' dspex.toml (their working directory): the pool as set for CPU-bound programs.
        (Path(tmp) / "dspex.toml").write_text(
            f"[pools.general]\nconcurrency = {concurrency}\ncoalesce = {coalesce}\n"
        )
        servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        try:
            for row, extra in (("inline", []), ("pool", ["--pool", "general"])):
                port = load.free_port()
                command = [
                    sys.executable,
                    "-m",
                    "dspex.cli",
                    "serve",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
                servers[row] = (port, subprocess.Popen([*command, *extra], env=env, cwd=tmp))
            for port, server in servers.values():
                load.wait_until_up(port, server)
                asyncio.run(load.drive(port, "bench-uncached", key, False, 2.0, 32))  # warm
            for _ in range(rounds):
                for row, (port, server) in servers.items():
                    process = psutil.Process(server.pid)
                    mine, its = time.process_time(), _cpu_s(process)
                    workers = _children_cpu_s(process)
                    figures = asyncio.run(load.drive(port, "bench-uncached", key, False, seconds, 32))
                    requests = figures["requests"]
                    cpu.setdefault(row, []).append(
                        (
                            (time.process_time() - mine) / requests * 1e6,
                            (_cpu_s(process) - its) / requests * 1e6,
                            (_children_cpu_s(process) - workers) / requests * 1e6,
                        )
                    )
                    rates[row] = max(rates.get(row, 0.0), figures["rps"])
        finally:
            for _, server in servers.values():
                server.terminate()
            for _, server in servers.values():
                server.wait(timeout=30)

    def per_request(row: str) -> str:
        client, server, workers = (statistics.median(x[k] for x in cpu[row]) for k in range(3))
        return f"client {client:.0f} + server {server:.0f} + workers {workers:.0f}"

    print(
        f"rest            serve {rates['inline']:7.0f} req/s   serve --pool general (concurrency {concurrency}, "
        f"coalesce {coalesce}) "
        f"{rates['pool']:7.0f} req/s   "
        f"{rates['pool'] / rates['inline']:.2f}x (target >= 1.5x; best of {rounds} alternated rounds each)"
    )
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"  # what uvicorn picks ("auto")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(
        f"                uvicorn on {http} and {loop}; cpu per request, us (median of rounds): "
        f"serve {per_request('inline')}; "
        f"--pool {per_request('pool')}"
    )


def evaluation(home: Path, count: int, rounds: int) -> None:
    import dspy

    import _pool_programs
    from dspex.optimize import Evaluator
    from dspex.optimize.metrics import exact_match

    devset = [
        dspy.Example(question=f"question {i}", answer=f"QUESTION {i}").with_inputs("question")
        for i in range(count)
    ]
    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/bench.db",
        pools={"general": {"size": 2, "initializer": "_pool_programs:scripted_50ms"}},
    )
    program = dspy.ChainOfThought("question -> answer")

    def metric(example: object, prediction: object, trace: object = None) -> bool:
        return bool(example.answer == prediction.answer)  # type: ignore[attr-defined]

    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=128, display_progress=False)
    pool_rate = bare_rate = 0.0
    with App(settings) as app:
        _register(app)
        remote = app.pooled("cot", pool="general")
        Evaluator(exact_match, concurrency=128, cache=False).run(remote, devset[:200])  # warm
        # Alternated, best of each, as the cpu throughput row: load from other processes weighs on both.
        for _ in range(rounds):
            t0 = time.perf_counter()
            pooled = Evaluator(exact_match, concurrency=128, cache=False).run(remote, devset)
            pool_rate = max(pool_rate, count / (time.perf_counter() - t0))
            with dspy.context(lm=_pool_programs.scripted_lm(latency=0.05)):
                t0 = time.perf_counter()
                bare = evaluate(program)
                bare_rate = max(bare_rate, count / (time.perf_counter() - t0))
    print(
        f"evaluation      dspy.Evaluate {bare_rate:7.0f} ex/s ({bare.score:.0f}%)   pool {pool_rate:7.0f} ex/s "
        f"({pooled.score * 100:.0f}%)   {pool_rate / bare_rate:.2f}x (target >= 1.6x; best of {rounds} "
        "alternated rounds each)"
    )


LM_CALLERS = 128  # threads of the lm-bound row, each a loop of app.run


def lm_bound(home: Path, seconds: float) -> None:
    """Runs that wait 50 ms on their LM, from LM_CALLERS threads: inline against a 2-worker pool (its
    default concurrency: each worker runs many at once)."""
    import _pool_programs

    settings = Settings.load(
        home=home,
        database_url=f"sqlite:///{home}/bench.db",
        pools={"general": {"size": 2, "initializer": "_pool_programs:scripted_50ms"}},
    )
    with App(settings, lm=_pool_programs.scripted_lm(latency=0.05)) as app:
        _register(app)
        app.run("cot", {"question": "warm"}, pool="general")

        def rate(pool: str | None) -> float:
            done = [0] * LM_CALLERS
            end = time.perf_counter() + seconds

            def caller(k: int) -> None:
                while time.perf_counter() < end:
                    app.run("cot", {"question": f"{k} {done[k]}"}, pool=pool)
                    done[k] += 1

            elapsed = _timed_threads(
                app, [threading.Thread(target=caller, args=(k,)) for k in range(LM_CALLERS)]
            )
            return sum(done) / elapsed

        inline, pooled = rate(None), rate("general")
        concurrency = app.pools.setting("general").concurrency
    print(
        f"lm-bound        inline {inline:7.0f} runs/s   2-worker pool (concurrency {concurrency}) {pooled:7.0f} runs/s   "
        f"{pooled / inline:.2f}x ({LM_CALLERS} callers, 50 ms LM: at most {LM_CALLERS / 0.05:.0f} runs/s; "
        "the pool should keep up with inline)"
    )


def leak(home: Path, tasks: int) -> None:
    with _app(home, size=1, max_rss_mb=400, heartbeat_s=0.05) as app:
        _register(app)
        peak = 0.0
        for i in range(tasks):
            app.run("leak", {"question": f"q{i}"}, pool="general")
            status = app.pools.get("general").status()
            peak = max(peak, status.workers[0].rss_mb or 0.0)
        status = app.pools.get("general").status()
    print(
        f"leak            {tasks} tasks leaking 50 MB each under max_rss_mb=400: highest worker RSS "
        f"{peak:.0f} MB, recycled {sum(status.replaced.values())} times {dict(status.replaced)}"
    )


# The CPU-bound rows (dispatch, cpu throughput, rest: a scripted LM that never waits) run their pools
# at concurrency 1, the setting the README gives for programs that never wait on an LM; the default
# (64, for runs that wait on an LM, see lm-bound) costs them thread switches: --concurrency 64 shows it.
CPU_CONCURRENCY = 1
CPU_COALESCE = 8  # a CPU-bound pool under load: queued runs go to a worker 8 at a time at most

ROWS = ("dispatch", "throughput", "lm-bound", "rest", "evaluation", "leak")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--leak-tasks", type=int, default=500)
    parser.add_argument("--rest-seconds", type=float, default=5.0, help="per side and round of the rest row")
    parser.add_argument("--lm-seconds", type=float, default=5.0, help="per side of the lm-bound row")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternated rounds of the cpu throughput, rest and evaluation rows",
    )
    parser.add_argument(
        "--prefetch", type=int, default=None, help="the pools' prefetch (default: the setting's)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CPU_CONCURRENCY,
        help="the pools' concurrency in the CPU-bound rows (dispatch, cpu throughput, rest)",
    )
    parser.add_argument(
        "--coalesce",
        type=int,
        default=CPU_COALESCE,
        help="the pools' coalesce in the CPU-bound rows (cpu throughput, rest): queued runs sent as one message",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ROWS,
        help="run only this row (repeatable); every row by default",
    )
    args = parser.parse_args()
    rows = args.only or list(ROWS)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores (load average {load} at start); every run recorded to SQLite")
    with tempfile.TemporaryDirectory() as tmp:
        if "dispatch" in rows:
            dispatch(Path(tmp), args.runs, args.concurrency)
        if "throughput" in rows:
            throughput(
                Path(tmp),
                args.runs,
                args.rounds,
                prefetch=args.prefetch,
                concurrency=args.concurrency,
                coalesce=args.coalesce,
            )
        if "lm-bound" in rows:
            lm_bound(Path(tmp), args.lm_seconds)
        if "rest" in rows:
            rest(args.rest_seconds, args.concurrency, args.rounds, args.coalesce)
        if "evaluation" in rows:
            evaluation(Path(tmp), args.examples, args.rounds)
        if "leak" in rows:
            leak(Path(tmp), args.leak_tasks)


if __name__ == "__main__":
    main()
