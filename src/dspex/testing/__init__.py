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

import typing as _typing

from dspex import _lazy

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


__getattr__, __dir__ = _lazy.attach("dspex.testing", _LAZY, globals(), __all__)
