"""Offline LMs for dspex's tests and yours: a scripted DSPy engine and a simulated OpenAI-compatible server.

::

    from dspex.testing import ScriptedEngine, SimServer

    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    with dspy.context(lm=engine.lm()):
        ...
    with SimServer() as server:                     # http://127.0.0.1:<free port>/v1
        lm = server.lm("sim-medium")                # a real dspy.LM over HTTP

Names load on first use: the pytest plugin imports this package in every test session of every project
that installs dspex, and must not pay for importing DSPy.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from dspex.testing.engine import AsyncScriptedEngine, ScriptedCall, ScriptedEngine
    from dspex.testing.server import SimConfig, SimServer, SimStats
    from dspex.testing.simtask import (
        DEFAULT_PROFILES,
        ModelProfile,
        SimExample,
        SimTask,
        cost_usd,
        expected_accuracy,
        load_task,
        optimum,
    )

_LAZY = {
    "AsyncScriptedEngine": "dspex.testing.engine",
    "ScriptedCall": "dspex.testing.engine",
    "ScriptedEngine": "dspex.testing.engine",
    "SimConfig": "dspex.testing.server",
    "SimServer": "dspex.testing.server",
    "SimStats": "dspex.testing.server",
    "DEFAULT_PROFILES": "dspex.testing.simtask",
    "ModelProfile": "dspex.testing.simtask",
    "SimExample": "dspex.testing.simtask",
    "SimTask": "dspex.testing.simtask",
    "cost_usd": "dspex.testing.simtask",
    "expected_accuracy": "dspex.testing.simtask",
    "load_task": "dspex.testing.simtask",
    "optimum": "dspex.testing.simtask",
}

__all__ = [
    "DEFAULT_PROFILES",
    "AsyncScriptedEngine",
    "ModelProfile",
    "ScriptedCall",
    "ScriptedEngine",
    "SimConfig",
    "SimExample",
    "SimServer",
    "SimStats",
    "SimTask",
    "cost_usd",
    "expected_accuracy",
    "load_task",
    "optimum",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex.testing' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
