"""What the SQLite page size costs the execution writer: CPU per row and file size, 4 KiB pages against
the 16 KiB pages a new DSPex database gets (``dspex.store._engine``), in one process.

Run: ``python benchmarks/sqlite_pages.py [--runs 1000] [--rows 20000] [--batch 100]``.

``--runs`` recorded ``dspy.ChainOfThought`` runs (the scripted LM of ``recording_overhead.py``) give the
terminal rows the writer would store: inputs, outputs, usage, cost and the ``lean`` span tree, about 2 KB
of JSON each. They are then upserted with :meth:`ExecutionRepository.upsert` (the writer's own call, one
transaction per batch) into databases that differ only in their page size: SQLite's default 4 KiB (a
file created before DSPex set its size), 8 KiB and DSPex's 16 KiB. Batches alternate between the
databases (the order reversed every other batch), ``--rows`` rows each, new ids every batch, so every
table grows alike under the same machine load (the same rows, under the same random ids). Printed per page size: the calling thread's CPU time per
row (user and system: the WAL's page writes are system time, which an instruction count misses) and the
database file after a WAL checkpoint, each against 4 KiB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dspex.ids import new_id
from dspex.lm.pricing import Price, Prices
from dspex.runtime import App
from dspex.settings import Settings
from dspex.store import open_database
from dspex.store._engine import SQLITE_PAGE_SIZE
from dspex.store.executions import ExecutionRepository
from dspex.testing import ScriptedEngine


def terminal_rows(runs: int, home: Path) -> list[dict]:
    """The terminal execution rows of ``runs`` recorded ChainOfThought runs, as the writer receives them."""
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()}, keep_history=1)
    lm = engine.lm("bench")
    program = dspy.ChainOfThought("question -> answer")
    settings = Settings.load(home=home, database_url=f"sqlite:///{home}/source.db")
    submitted: list[dict] = []
    with App(settings, lm=lm, prices=Prices({"bench": Price(0.5, 1.5)})) as app:
        writer = app._open().writer  # the benchmark's own look inside: keep what the runs submit
        submit, writer.submit = writer.submit, submitted.append  # type: ignore[method-assign]
        try:
            for i in range(runs):
                app.run(program, {"question": f"question {i}"})
        finally:
            writer.submit = submit  # type: ignore[method-assign]
    return [row for row in submitted if isinstance(row, dict) and row["status"] != "running"]


def database(path: Path, page_size: int) -> ExecutionRepository:
    """A migrated database at ``path`` with ``page_size`` pages (DSPex's own size: created by DSPex)."""
    if page_size != SQLITE_PAGE_SIZE:  # as SQLite (or an older DSPex) created it
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute(f"PRAGMA page_size = {page_size}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("CREATE TABLE created_before (x)")
            connection.commit()
    repository = ExecutionRepository(open_database(f"sqlite:///{path}"))
    repository.count()
    return repository


def file_size(path: Path) -> tuple[int, int]:
    """The page size and the file's bytes once the WAL is checkpointed into it."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    return page_size, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    sizes = [4096, 8192, SQLITE_PAGE_SIZE]
    with tempfile.TemporaryDirectory() as tmp:
        rows = terminal_rows(args.runs, Path(tmp))
        if not rows:
            raise SystemExit("the runs left no terminal rows to write")
        paths = {size: Path(tmp) / f"pages-{size}.db" for size in sizes}
        repositories = {size: database(path, size) for size, path in paths.items()}
        cpu = dict.fromkeys(sizes, 0.0)
        written = 0
        for number in range(args.rows // args.batch):
            start = (number * args.batch) % len(rows)
            chunk = (rows * 2)[start : start + args.batch]
            batch = [{**row, "id": new_id()} for row in chunk]  # random, as every run's id is
            for size in sizes if number % 2 else sizes[::-1]:
                began = time.thread_time()
                repositories[size].upsert(batch)
                cpu[size] += time.thread_time() - began
            written += len(batch)
        for repository in repositories.values():
            repository.db.dispose()
        measured = {size: file_size(path) for size, path in paths.items()}
    print(f"{written} terminal ChainOfThought rows per database, batches of {args.batch}")
    print(f"{'page':>8} {'cpu us/row':>11} {'ratio':>7} {'file MB':>9} {'ratio':>7}")
    for size in sizes:
        page_size, size_bytes = measured[size]
        print(
            f"{page_size:8d} {cpu[size] / written * 1e6:11.1f} {cpu[size] / cpu[4096]:7.3f}"
            f" {size_bytes / 1e6:9.1f} {size_bytes / measured[4096][1]:7.3f}"
        )


if __name__ == "__main__":
    main()
