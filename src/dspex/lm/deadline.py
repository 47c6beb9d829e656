"""The run's deadline (``timeout=`` on a run), kept in DSPy's context so it reaches every thread and task
DSPy starts for the run (``dspy.Parallel``, ``asyncify``)::

    with deadline_scope(5.0):
        ...                        # check_deadline("step x") raises DeadlineExceeded once 5 s have passed
        remaining()                # seconds left (negative once passed), None without a deadline
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import dspy
from dspy.dsp.utils.settings import thread_local_overrides

from dspex.errors import ConfigurationError, DeadlineExceeded

__all__ = ["DEADLINE_KEY", "check_deadline", "deadline", "deadline_scope", "remaining"]

DEADLINE_KEY = "dspex_deadline"
"""The ``dspy.context`` key holding the run's deadline (``time.monotonic()`` seconds)."""


def deadline() -> float | None:
    """The deadline of the run this code executes in (``time.monotonic()`` seconds), or None."""
    value = thread_local_overrides.get().get(DEADLINE_KEY)
    return value if isinstance(value, float) else None


def remaining() -> float | None:
    """Seconds left before the run's deadline (negative once passed), or None without one."""
    when = deadline()
    return None if when is None else when - time.monotonic()


@contextlib.contextmanager
def deadline_scope(timeout_s: float | None) -> Iterator[float | None]:
    """Run the block under a deadline ``timeout_s`` from now (an enclosing earlier one still wins)."""
    if timeout_s is None:
        yield deadline()
        return
    if timeout_s <= 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout_s}")
    when = time.monotonic() + timeout_s
    outer = deadline()
    if outer is not None:
        when = min(when, outer)
    with dspy.context(**{DEADLINE_KEY: when}):
        yield when


def check_deadline(what: str, *, waited_s: float | None = None) -> None:
    """Raise :class:`DeadlineExceeded` if the run's deadline has passed (``what`` names the boundary)."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(
            f"the run's deadline passed {-left:.3f} s ago, at {what}; raise timeout= or make the run cheaper",
            waited_s=waited_s,
        )
