"""Batch runs: a registered program over many inputs, one recorded run per input, resumable.

::

    report = run_batch_file(app, "qa", "in.jsonl", "out.jsonl", pool="cluster", concurrency=32)
    report.succeeded, report.failed, report.skipped          # a rerun skips what succeeded

    lines = run_batch(app, "qa", [{"question": "a"}, {"question": "b"}], concurrency=8)   # in memory

Each input runs as :meth:`App.arun` runs it (on ``pool``, else where the router sends the program,
else inline), so each leaves its own execution record. On a pool (processes or Ray actors) the inputs
travel in shards (:meth:`App.arun_many`: several runs per message to a worker, one record each). Each
result is one JSON line::

    {"index": 0, "key": "0:9f2c...", "status": "succeeded", "execution_id": "...", "outputs": {...}}
    {"index": 1, "key": "1:07ab...", "status": "failed", "execution_id": "...", "error": {"code", "message"}}

Resume: an input's ``key`` is its line number and the hash of its content; a line of the output file
with that key and ``"status": "succeeded"`` means the input is done, and a rerun skips it (failed ones
run again; an edited input line has a new key and runs again). Lines are appended and flushed as runs
finish, so a batch killed at any point resumes where it stopped (a torn last line is ignored).
Inputs stream from the file: a million-line batch never holds its inputs in memory, only the keys done.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from dspex.errors import ConfigurationError, DSPexError
from dspex.jsonable import canonical_hash, to_jsonable
from dspex.pipeline._sync import run_coroutine

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.runtime.run import RunResult

__all__ = [
    "BatchLine",
    "BatchReport",
    "arun_batch",
    "done_keys",
    "input_key",
    "read_inputs",
    "run_batch",
    "run_batch_file",
]

BatchProgress = Callable[[int, int], None]  # (finished in this run, to run in this run)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One input's result: its run's record id, and its outputs or error."""

    index: int
    key: str
    status: Literal["succeeded", "failed"]
    execution_id: str | None
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "key": self.key,
            "status": self.status,
            "execution_id": self.execution_id,
        }
        if self.status == "succeeded":
            data["outputs"] = self.outputs
        else:
            data["error"] = self.error
        return data


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What a batch run did: inputs seen, skipped as done, and this run's successes and failures."""

    total: int
    skipped: int
    succeeded: int
    failed: int
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "wall_s": round(self.wall_s, 3),
        }


def input_key(index: int, inputs: Mapping[str, Any]) -> str:
    """The resume key of input ``index``: its position and the hash of its content."""
    return f"{index}:{canonical_hash(dict(inputs))[:16]}"


def read_inputs(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line; a bad line is a ConfigurationError naming
    it and what to change."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigurationError(f"--input {str(path)!r}: cannot read it ({exc.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"--input {str(path)!r} line {number}: not JSON ({exc}); each line must be one JSON "
                    'object of the program\'s inputs, e.g. {"question": "..."}'
                ) from None
            if not isinstance(value, dict):
                raise ConfigurationError(
                    f"--input {str(path)!r} line {number}: a {type(value).__name__}, not a JSON object of "
                    'the program\'s inputs, e.g. {"question": "..."}'
                )
            yield value


def done_keys(path: str | Path) -> set[str]:
    """The keys of the output file's succeeded lines (none when the file does not exist)."""
    path = Path(path)
    done: set[str] = set()
    if not path.exists():
        return done
    with path.open("rb") as handle:
        for raw in handle:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a line torn by a crash mid-write: its input runs again
            if (
                isinstance(line, dict)
                and line.get("status") == "succeeded"
                and isinstance(line.get("key"), str)
            ):
                done.add(line["key"])
    return done


def _error(exc: DSPexError) -> dict[str, Any]:
    return {"code": exc.code, "message": str(exc)}


async def arun_batch(
    app: App,
    program: str,
    inputs: Iterable[Mapping[str, Any]],
    *,
    version_id: str | None = None,
    pool: str | None = None,
    concurrency: int = 8,
    skip: Collection[str] = (),
    on_line: Callable[[BatchLine], None] | None = None,
    progress: BatchProgress | None = None,
    total: int | None = None,
    shard_size: int | None = None,
) -> BatchReport:
    """Run registered ``program`` on each input, ``concurrency`` at a time; see the module docstring.

    On a pool (process workers or Ray actors), inputs go to the workers in shards of ``shard_size``
    runs (1 sends each run alone), with at least two shards per worker in flight (``concurrency`` runs,
    when that is more). By
    default a shard starts at :data:`SHARD_START` runs and doubles, up to :data:`SHARD_SIZE`, each time
    one comes back within :data:`SHARD_FAST_S`: fast runs travel in few messages (less work for this
    process and fewer wake-ups that preempt the workers), while slow ones (an LM's latency) keep
    reporting progress every few runs.

    ``skip``: keys already done; ``on_line`` receives each result as it finishes (in finishing order;
    ``index`` tells the input); ``progress(done, to_run)`` after each (``to_run`` is ``total`` minus the
    skipped, when ``total`` is given, else -1). A run's failure is its line's error; misuse (an unknown
    program or pool) stops the batch before it starts.
    """
    if not isinstance(program, str):
        raise ConfigurationError(
            f"program must be a registered program's name, not a {type(program).__name__}: batch runs are "
            "recorded by name and version (app.programs.register(name, ...))"
        )
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
    await asyncio.to_thread(app.programs.resolve, program, version_id)  # unknown: ConfigurationError
    if pool is not None:
        app.pools.setting(pool)  # unknown: ConfigurationError listing the pools
    started = time.perf_counter()
    counts = {"total": 0, "skipped": 0, "succeeded": 0, "failed": 0}
    pending: Iterator[tuple[int, str, Mapping[str, Any]]] = _pending(inputs, skip, counts)

    async def one(index: int, key: str, values: Mapping[str, Any]) -> BatchLine:
        try:
            result: RunResult | BaseException = await app.arun(
                program, dict(values), version_id=version_id, pool=pool
            )
        except DSPexError as exc:
            result = exc
        return _line(index, key, result)

    async def worker() -> None:
        for index, key, values in pending:  # one shared iterator: inputs start in file order
            finish(await one(index, key, values))

    shard = _shard_size(app, pool, shard_size)

    async def shards(pool: str) -> None:  # a process pool: up to ``shard`` runs per message to a worker
        size = shard if shard_size is not None else min(SHARD_START, shard)
        while chunk := list(itertools.islice(pending, size)):
            values = [dict(v) for _, _, v in chunk]
            sent = time.perf_counter()
            results = await app.arun_many(program, values, version_id=version_id, pool=pool)
            if size < shard and time.perf_counter() - sent < SHARD_FAST_S:
                size = min(shard, 2 * size)
            for (index, key, _), result in zip(chunk, results, strict=True):
                finish(_line(index, key, result))

    def finish(line: BatchLine) -> None:
        counts[line.status] += 1
        if on_line is not None:
            on_line(line)
        if progress is not None:
            to_run = -1 if total is None else total - counts["skipped"]
            progress(counts["succeeded"] + counts["failed"], to_run)

    if shard > 1 and pool is not None:
        # Enough shards in flight to keep every worker fed (a worker holds its next shard in its pipe).
        size = app.pools.setting(pool).size or (os.cpu_count() or 1)
        in_flight = max(2 * size, -(-concurrency // shard))
        workers = [asyncio.create_task(shards(pool)) for _ in range(in_flight)]
    else:
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:  # a worker that raised (misuse, a failing callback) takes the others down with it
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return BatchReport(
        counts["total"],
        counts["skipped"],
        counts["succeeded"],
        counts["failed"],
        time.perf_counter() - started,
    )


def _line(index: int, key: str, result: RunResult | BaseException) -> BatchLine:
    """An input's line: its run's outputs, or its error (the run's record says why; the batch goes on)."""
    if isinstance(result, BaseException):
        if not isinstance(result, DSPexError):
            raise result
        if isinstance(result, ConfigurationError) and not getattr(result, "execution_id", None):
            raise result  # misuse that no record took (a pool that cannot start): stop the batch
        return BatchLine(index, key, "failed", getattr(result, "execution_id", None), error=_error(result))
    return BatchLine(index, key, "succeeded", result.execution_id, outputs=to_jsonable(result.outputs))


# Runs per message to a pool's worker (process or Ray actor) in a batch (see arun_batch): a shard starts
# at SHARD_START runs and doubles up to SHARD_SIZE while shards come back within SHARD_FAST_S. On benchmarks/pools.py's
# CPU-bound program, shards of 32 against 8 cut this process's CPU per run from about 155 to 115-145 us,
# and the workers' preemptions per run from 0.6 to 0.25 (their CPU per run from about 545 to 505 us).
SHARD_START = 8
SHARD_SIZE = 32
SHARD_FAST_S = 0.5


def _shard_size(app: App, pool: str | None, shard_size: int | None) -> int:
    """Runs per shard: ``shard_size`` (or SHARD_SIZE) on a named pool; 1 (one run a task) without one."""
    if shard_size is not None and shard_size < 1:
        raise ConfigurationError(f"shard_size must be >= 1, got {shard_size}")
    if pool is None:  # where the router sends each run: one by one
        return 1
    app.pools.setting(pool)  # unknown: ConfigurationError listing the pools
    return SHARD_SIZE if shard_size is None else shard_size


def _pending(
    inputs: Iterable[Mapping[str, Any]], skip: Collection[str], counts: dict[str, int]
) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    for index, values in enumerate(inputs):
        if not isinstance(values, Mapping):
            raise ConfigurationError(
                f"input {index} is a {type(values).__name__}, not a mapping of the program's input fields"
            )
        counts["total"] += 1
        key = input_key(index, values)
        if key in skip:
            counts["skipped"] += 1
            continue
        yield index, key, values


def run_batch(
    app: App,
    program: str,
    inputs: Iterable[Mapping[str, Any]],
    *,
    version_id: str | None = None,
    pool: str | None = None,
    concurrency: int = 8,
    skip: Collection[str] = (),
    progress: BatchProgress | None = None,
    shard_size: int | None = None,
) -> list[BatchLine]:
    """:func:`arun_batch` from synchronous code, collecting the lines (in input order)."""
    lines: list[BatchLine] = []
    run_coroutine(
        arun_batch(
            app,
            program,
            inputs,
            version_id=version_id,
            pool=pool,
            concurrency=concurrency,
            skip=skip,
            on_line=lines.append,
            progress=progress,
            shard_size=shard_size,
        )
    )
    return sorted(lines, key=lambda line: line.index)


def run_batch_file(
    app: App,
    program: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    version_id: str | None = None,
    pool: str | None = None,
    concurrency: int = 8,
    progress: BatchProgress | None = None,
    shard_size: int | None = None,
) -> BatchReport:
    """Run ``program`` on each line of ``input_path``, appending result lines to ``output_path`` and
    skipping the inputs it already holds as succeeded (see the module docstring)."""
    output = Path(output_path)
    skip = done_keys(output)
    total = sum(1 for _ in read_inputs(input_path)) if progress is not None else None  # also checks lines
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(output.open("a+b"))
        except OSError as exc:
            raise ConfigurationError(f"--output {str(output)!r}: cannot write it ({exc.strerror})") from None
        if handle.tell() > 0:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":  # a line torn by a crash: the next line starts on its own
                handle.write(b"\n")

        def write(line: BatchLine) -> None:
            handle.write(orjson.dumps(line.to_json()) + b"\n")
            handle.flush()  # a killed batch keeps every line written before it died

        return run_coroutine(
            arun_batch(
                app,
                program,
                read_inputs(input_path),
                version_id=version_id,
                pool=pool,
                concurrency=concurrency,
                skip=skip,
                on_line=write,
                progress=progress,
                total=total,
                shard_size=shard_size,
            )
        )
