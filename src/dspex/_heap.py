"""Keep a long-running process's start-up heap out of the garbage collector's full passes.

A process that imported DSPy (with LiteLLM, pydantic's models, the settings) holds about 130,000
tracked objects before it runs anything. CPython's full collection walks every one of them: 75-92 ms on
this project's 2-core benchmark machine, a stall of every thread of the process, each time the young
objects that survived earlier passes add up to a quarter of that heap (a pool worker running 64
ChainOfThought calls at once got there about once per 3,000 runs). Objects alive at the end of start-up
live as long as the process: :func:`gc.freeze` moves them to a generation the collector never walks, so
its full passes only see what the process allocated since (CPython's advice for long-running and forked
processes). The start-up garbage is collected first, so freezing keeps nothing that was already dead.

Only for processes DSPex owns, once, at the end of their start-up: a pool worker, ``dspex serve``. A
library call (``App``) never does it: what the embedding process's heap holds is not DSPex's to pin.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect the start-up garbage, then freeze what is left; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
