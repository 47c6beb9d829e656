"""A worker's memory is measured on the worker itself, also in a process forked after a first reading."""

from __future__ import annotations

import os

import pytest

from dspex.pools.worker import rss_bytes


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/statm"), reason="Linux")
def test_a_forked_child_measures_its_own_memory_not_its_parents() -> None:
    before = rss_bytes()  # the parent reads (and keeps its descriptor) before forking
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: grow by 200 MB, touched, and report what it measures before and after
        os.close(read)
        start = rss_bytes()
        held = bytearray(200 * 1024 * 1024)
        for i in range(0, len(held), 4096):
            held[i] = 1
        os.write(write, f"{start} {rss_bytes()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        start, end = (int(x) for x in pipe.read().split())
    os.waitpid(pid, 0)
    assert end - start > 150 * 1024 * 1024  # the child's growth, seen by the child (not its parent's memory)
    assert rss_bytes() < before + 50 * 1024 * 1024  # the parent's reading is still its own
