"""Run a pipeline coroutine from synchronous code, in this thread's context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result.

    With no event loop in this thread it gets a fresh one; inside a running loop (a sync call from async
    code) it runs on a fresh loop in a worker thread, because blocking the running loop would deadlock.
    Either way it sees this context's variables, so ``dspy.context(...)`` settings apply.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dspex-pipeline") as pool:
        return pool.submit(context.run, asyncio.run, coro).result()
