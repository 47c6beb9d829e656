"""Imported by the pools' forkserver only, after :mod:`dspex.pools.worker` (``set_forkserver_preload``):
freezes the server's heap (DSPy, LiteLLM, pydantic's models, dspex) once, so that every worker forked
from it starts with those objects out of the collector's full passes, and shares their memory pages with
the server instead of copying them when a pass would touch them. See :mod:`dspex._heap`.

Never import it anywhere else: importing it freezes the importing process's heap.
"""

from __future__ import annotations

from dspex._heap import freeze_startup_heap

freeze_startup_heap()
