"""Helpers of the job tests, imported by bare name (tests/jobs has no __init__.py, like tests/cli)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from dspex.variables import Bindings, Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document

T = TypeVar("T")

# Float temperatures without a step: two trials practically never share a configuration.
SPACE_DOCUMENT: dict[str, Any] = space_document(
    VariableSpace([Variable.float("temperature", 0.0, 1.5)]), Bindings([bind.temperature("temperature")])
)


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.05) -> T:
    """``probe()`` once it returns something truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
