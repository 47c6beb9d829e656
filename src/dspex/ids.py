"""Execution ids: time-ordered UUIDs (version 7, RFC 9562), their random bits drawn from a buffer of the
OS's randomness.

Version 7: the first 48 bits are the Unix time in milliseconds, the other 74 (but the version and variant
bits) random. Ids made one after another sort after one another, so a run's record goes in at the end of
the executions table's primary-key index instead of at a random leaf of it. On SQLite that halves the
system time a recorded run costs (about 20 to 10 us of ``pwrite`` per run in
``benchmarks/recording_overhead.py``'s full-record row: each batch of the writer dirtied one random leaf
page of the index per row); PostgreSQL's B-tree gains the same locality. The 74 random bits keep an id as
hard to guess as a version-4 one is for practical purposes; what an id reveals is its run's start time to
the millisecond, which the record shows anyway to whoever may read it.

The random part: ``uuid.uuid4()`` reads 16 bytes from ``os.urandom`` for every id, and ``os.urandom`` lets
go of the GIL around its system call. In a process recording runs, the execution writer's thread is
usually waiting for the GIL; it took it there, once per run, and the run's thread then waited to get it
back (about 50 us of CPU per recorded run: 1.0 voluntary context switch per run before, 0.3 after). Here
one ``os.urandom`` call serves 256 ids, their random part formatted in one pass; the time is formatted
per id. The random parts not yet handed out are dropped in a forked child, so parent and child never hand
out the same id.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id"]

_IDS_PER_DRAW = 256
_lock = threading.Lock()
_suffixes: list[str] = []  # random parts not handed out yet, popped from the end

_RAND_A = 0xFFF  # 12 random bits after the version nibble
_RAND_B = (1 << 62) - 1  # 62 random bits after the variant bits
_VARIANT = 0b10 << 62  # RFC 9562's variant


def _draw() -> list[str]:
    """``_IDS_PER_DRAW`` random parts (``7aaa-Vbbb-bbbbbbbbbbbb``: the version, 12 bits, the variant and
    62 bits) from one ``os.urandom`` call."""
    raw = os.urandom(10 * _IDS_PER_DRAW)
    suffixes = []
    for start in range(0, len(raw), 10):
        bits = int.from_bytes(raw[start : start + 10], "big")
        b = "%016x" % (_VARIANT | ((bits >> 12) & _RAND_B))
        suffixes.append(f"7{bits & _RAND_A:03x}-{b[:4]}-{b[4:]}")
    return suffixes


def new_id() -> str:
    """A time-ordered UUID (version 7) as a string, in ``str(uuid.UUID(...))``'s form."""
    global _suffixes
    try:
        suffix = _suffixes.pop()  # atomic under the GIL: no two threads get the same random part
    except IndexError:
        with _lock:
            if not _suffixes:
                _suffixes = _draw()
            suffix = _suffixes.pop()
    ms = "%012x" % (time.time_ns() // 1_000_000)
    return f"{ms[:8]}-{ms[8:]}-{suffix}"


def _forget() -> None:
    global _suffixes
    _suffixes = []


os.register_at_fork(after_in_child=_forget)
