"""Execution ids: random version-4 UUIDs, unique, and never repeated across a fork."""

from __future__ import annotations

import os
import uuid

import pytest

from dspex.ids import new_id


def test_ids_are_version_4_uuids_and_unique() -> None:
    ids = [new_id() for _ in range(5000)]  # several draws of the buffer
    assert len(set(ids)) == len(ids)
    for value in ids[:300]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


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
