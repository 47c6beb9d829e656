"""The program ``benchmarks/service_load.py`` serves: a ``dspy.Predict`` on a saveable scripted engine.

A registered program version stores its LM's state, and the server process rebuilds the LM from it;
``EchoEngine`` is the scripted engine of ``dspex.testing`` with the ``dump_state``/``load_state`` pair
DSPy needs to rebuild a custom engine. The server finds this module through ``PYTHONPATH``.
"""

from __future__ import annotations

from typing import Any

import dspy

from dspex.testing import ScriptedEngine


class EchoEngine:
    """Answers the question upper-cased, instantly."""

    def __init__(self) -> None:
        self.scripted = ScriptedEngine(
            {"answer": lambda inputs: str(inputs["question"]).upper()}, keep_history=1
        )

    def complete(self, request: Any) -> Any:
        return self.scripted.complete(request)

    def close(self) -> None:
        self.scripted.close()

    def dump_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> EchoEngine:
        return cls()


class AsyncEchoEngine:
    """The async twin (the service runs programs with ``acall``)."""

    def __init__(self) -> None:
        self.scripted = ScriptedEngine(
            {"answer": lambda inputs: str(inputs["question"]).upper()}, keep_history=1
        )
        self.aio = self.scripted.aio()

    async def complete(self, request: Any) -> Any:
        return await self.aio.complete(request)

    async def aclose(self) -> None:
        await self.aio.aclose()

    def dump_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncEchoEngine:
        return cls()


def build() -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.lm = dspy.LM("scripted/echo", engine=EchoEngine(), async_engine=AsyncEchoEngine(), cache=False)
    return program
