"""Execution ids: random (version 4) UUIDs drawn from a buffer of the OS's randomness.

``uuid.uuid4()`` reads 16 bytes from ``os.urandom`` for every id, and ``os.urandom`` lets go of the GIL
around its system call. In a process recording runs, the execution writer's thread is usually waiting for
the GIL; it took it there, once per run, and the run's thread then waited to get it back. Each handover
cost about 50 us of CPU per recorded run (``benchmarks/recording_overhead.py``: 1.0 voluntary context
switch per run before, 0.3 after). Here one ``os.urandom`` call serves 256 ids. The bytes are the same
cryptographic randomness, and the buffer is dropped in a forked child, so parent and child never hand
out the same id.
"""

from __future__ import annotations

import os
import threading
import uuid

__all__ = ["new_id"]

_IDS_PER_DRAW = 256
_lock = threading.Lock()
_buffer = b""
_position = 0


def new_id() -> str:
    """A random UUID (version 4) as a string, like ``str(uuid.uuid4())``."""
    global _buffer, _position
    with _lock:
        if _position >= len(_buffer):
            _buffer, _position = os.urandom(16 * _IDS_PER_DRAW), 0
        raw = _buffer[_position : _position + 16]
        _position += 16
    return str(uuid.UUID(bytes=raw, version=4))


def _forget() -> None:
    global _buffer, _position
    _buffer, _position = b"", 0


os.register_at_fork(after_in_child=_forget)
