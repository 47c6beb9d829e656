"""Spans for the steps of a pattern, and parallel execution that keeps them in the run's span tree.

An attempt of a self-correcting module or a node of a tree of thoughts runs as a call of a small
:class:`Node` module, so DSPex's instrumentation (which wraps ``dspy.Module.__call__``) records it as a
module span named after the step, holding the LM calls it made; :func:`annotate` adds what the step found
(passed, score, critique) to that span. Nodes are created per call and never assigned to the pattern, so
they are not predictors: optimizers and ``dump_state`` see only the pattern's real predictors.

:func:`run_parallel` runs thunks on threads, each in a copy of the caller's context: DSPy's settings
(the run's LM, callbacks and recorder) and the open span travel with it, so parallel branches nest under
the span that started them (``dspy.Parallel`` copies DSPy's settings but not the open span).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dspy

from dspex.errors import ConfigurationError
from dspex.telemetry.instrument import active

__all__ = ["Node", "annotate", "check_minimum", "run_parallel"]

T = TypeVar("T")


class Node(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """One step of a pattern (an attempt, a tree node): a span named ``name`` around ``fn()``."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.name = name
        self._fn = fn

    def forward(self) -> Any:
        return self._fn()


def annotate(**attrs: Any) -> None:
    """Add ``attrs`` to the innermost open module span of the active run (a no-op outside a run)."""
    recorder = active()
    if recorder is not None:
        recorder.annotate("module", **attrs)


def run_parallel(thunks: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """Results of ``thunks`` in order, run on up to ``threads`` threads in copies of this context.

    The first exception a thunk raises is raised here (after every thunk finished), never dropped."""
    if threads <= 1 or len(thunks) <= 1:
        return [thunk() for thunk in thunks]
    with ThreadPoolExecutor(max_workers=min(threads, len(thunks))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, thunk) for thunk in thunks]
        return [future.result() for future in futures]


def check_minimum(owner: str, name: str, value: Any, minimum: int) -> None:
    """``ConfigurationError`` naming ``owner``'s option ``name`` unless it is an int of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(
            f"{owner} option {name!r} must be an int of at least {minimum}, got {value!r}"
        )
