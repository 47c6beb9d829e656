"""DSPy's settings read the way ``dspy.settings.NAME`` reads them, for the per-run path.

``dspy.settings.NAME`` first fails the normal attribute lookup (Python builds and drops an
``AttributeError``) before ``Settings.__getattr__`` looks in the context's overrides, then in the
process's configuration: about 7,000 instructions a read (callgrind), and a run read three. This
looks in the same two places, in the same order, without the failed lookup: about 1,500.
"""

from __future__ import annotations

from typing import Any

from dspy.dsp.utils.settings import main_thread_config, thread_local_overrides

__all__ = ["setting"]


def setting(name: str) -> Any:
    """``dspy.settings.<name>`` here (this thread or task's ``dspy.context``, else the configuration);
    None for a name DSPy does not know (where ``dspy.settings`` raises ``AttributeError``)."""
    overrides = thread_local_overrides.get()
    if name in overrides:
        return overrides[name]
    return main_thread_config.get(name)
