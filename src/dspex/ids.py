"""Execution ids: random (version 4) UUIDs drawn from a buffer of the OS's randomness.

``uuid.uuid4()`` reads 16 bytes from ``os.urandom`` for every id, and ``os.urandom`` lets go of the GIL
around its system call. In a process recording runs, the execution writer's thread is usually waiting for
the GIL; it took it there, once per run, and the run's thread then waited to get it back. Each handover
cost about 50 us of CPU per recorded run (``benchmarks/recording_overhead.py``: 1.0 voluntary context
switch per run before, 0.3 after). Here one ``os.urandom`` call serves 256 ids, formatted in one pass
(``str(uuid.UUID(...))`` per id cost 4-5 us of each run). The bytes are the same cryptographic
randomness, and the ids not yet handed out are dropped in a forked child, so parent and child never hand
out the same id.
"""

from __future__ import annotations

import os
import threading

__all__ = ["new_id"]

_IDS_PER_DRAW = 256
_lock = threading.Lock()
_ids: list[str] = []  # formatted ids not handed out yet, popped from the end

# The bits uuid.UUID(..., version=4) sets: the version (4) and the RFC 4122 variant.
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


def _draw() -> list[str]:
    """``_IDS_PER_DRAW`` ids from one ``os.urandom`` call, formatted as ``str(uuid.UUID(...))`` does."""
    raw = os.urandom(16 * _IDS_PER_DRAW)
    ids = []
    for start in range(0, len(raw), 16):
        h = "%032x" % ((int.from_bytes(raw[start : start + 16], "big") & _CLEAR) | _SET)
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def new_id() -> str:
    """A random UUID (version 4) as a string, like ``str(uuid.uuid4())``."""
    global _ids
    try:
        return _ids.pop()  # atomic under the GIL: no two threads get the same id
    except IndexError:
        pass
    with _lock:
        if not _ids:
            _ids = _draw()
        return _ids.pop()


def _forget() -> None:
    global _ids
    _ids = []


os.register_at_fork(after_in_child=_forget)
