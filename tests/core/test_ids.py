"""Execution ids: time-ordered version-7 UUIDs, unique, sorted by time, and never repeated across a fork."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from dspex.ids import new_id


def test_ids_are_version_7_uuids_unique_and_ordered_by_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(5000)]  # several draws of the buffer
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: the time in milliseconds
    # Made one after another, they sort by their time; within one millisecond, in any order.
    times = [uuid.UUID(value).int >> 80 for value in ids]
    assert times == sorted(times)
    assert sorted(ids, key=lambda v: uuid.UUID(v).int >> 80) == sorted(ids, key=lambda v: v[:13])
    # The random bits vary in every position (74 of them: not a counter).
    randoms = {uuid.UUID(value).int & ((1 << 74) - 1) for value in ids}
    assert len(randoms) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    new_id()  # the buffer holds ids the parent has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read)
        os.write(write, ",".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent
