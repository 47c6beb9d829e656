"""An RPM limit shared by N processes through Redis: does it hold?

Run: ``python benchmarks/rate_limits.py [--processes 4] [--seconds 60] [--rpm 600] [--redis-url URL]``
(quick: ``--seconds 10 --rpm 120``).

Each process (``multiprocessing`` spawn) builds its own :class:`dspex.lm.limits.Limits` on the same Redis
and calls ``acquire()`` / ``release()`` on one shared limiter in a loop, with calls that take no time, from
a common start for ``--seconds``; a wait that would end after the run's end is cut by the acquire's
deadline. Every process records the wall time of each admission. Printed: requests admitted per process
and in total, the admitted rate per minute against the limit, and the most admitted in any 60 s moving
window (from the recorded times of all processes) with its ratio to the limit. Target: within 5%.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import statistics
import time
import uuid
from multiprocessing.queues import Queue
from typing import Any

WINDOW_S = 60.0


def hammer(
    index: int, redis_url: str, prefix: str, rpm: int, start_at: float, seconds: float, out: Queue[Any]
) -> None:
    """One process: admit as many calls as the shared limit allows until the run ends; report the times."""
    from dspex.errors import DeadlineExceeded
    from dspex.lm.limits import Limits, LimitSpec

    limits = Limits(redis_url, prefix=prefix)
    limiter = limits.limiter("bench/model", LimitSpec(rpm=rpm))
    admitted: list[float] = []
    waits: list[float] = []
    time.sleep(max(start_at - time.time(), 0))
    deadline = time.monotonic() + (start_at + seconds - time.time())
    while time.monotonic() < deadline:
        try:
            lease = limiter.acquire(deadline=deadline)
        except DeadlineExceeded:
            break
        admitted.append(time.time())
        waits.append(lease.waited_s)
        lease.release()
    limits.close()
    out.put((index, admitted, waits))


def max_in_window(times: list[float], window_s: float) -> int:
    """The most timestamps in any half-open span [t, t + window_s)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)), default=0)


def measure(
    processes: int = 4, seconds: float = 60.0, rpm: int = 600, redis_url: str | None = None
) -> dict[str, Any]:
    """Run the benchmark; the figures ``main`` prints (and ``benchmarks/chaos.py``'s ``rpm`` row)."""
    redis_url = redis_url or os.environ.get("DSPEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"dspex-bench-{uuid.uuid4().hex}"
    context = multiprocessing.get_context("spawn")
    out: Queue[Any] = context.Queue()
    start_at = time.time() + 3.0  # time for every process to start and import dspex
    workers = [
        context.Process(target=hammer, args=(i, redis_url, prefix, rpm, start_at, seconds, out))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = sorted(out.get(timeout=seconds + 120) for _ in workers)
    for worker in workers:
        worker.join(30)
        if worker.exitcode != 0:
            raise SystemExit(f"benchmark process {worker.pid} exited with {worker.exitcode}")

    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()

    times = [t for _, admitted, _ in results for t in admitted]
    busiest = max_in_window(times, WINDOW_S)
    return {
        "processes": processes,
        "seconds": seconds,
        "rpm": rpm,
        "admitted": len(times),
        "busiest_window": busiest,
        "ratio": round(busiest / rpm, 3),
        "per_process": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--redis-url", default=os.environ.get("DSPEX_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    figures = measure(args.processes, args.seconds, args.rpm, args.redis_url)
    results = figures["per_process"]
    total = figures["admitted"]
    per_minute = total * 60.0 / args.seconds
    busiest = figures["busiest_window"]
    ratio = busiest / args.rpm

    print(
        f"RPM limit {args.rpm} shared through Redis by {args.processes} processes "
        f"for {args.seconds:g} s (calls take ~0 s)"
    )
    print(f"{'process':>10} {'admitted':>9} {'median wait s':>14} {'max wait s':>11}")
    for index, admitted, waits in results:
        median = statistics.median(waits) if waits else 0.0
        print(f"{index:>10} {len(admitted):>9} {median:>14.3f} {max(waits, default=0.0):>11.3f}")
    print(f"{'total':>10} {total:>9}")
    print()
    print(f"{'measure':<42} {'value':>10} {'limit':>7} {'ratio':>7}")
    print(
        f"{'admitted per minute (total / run length)':<42} {per_minute:>10.1f} {args.rpm:>7} "
        f"{per_minute / args.rpm:>7.3f}"
    )
    print(f"{'most admitted in any 60 s moving window':<42} {busiest:>10} {args.rpm:>7} {ratio:>7.3f}")
    if args.seconds < WINDOW_S:
        print("(a run shorter than 60 s admits a whole window's worth at once: read the moving-window row)")
    verdict = "holds" if abs(ratio - 1) <= 0.05 else "MISSES"
    print(f"target: the busiest 60 s window within 5% of the limit: {verdict} ({(ratio - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
