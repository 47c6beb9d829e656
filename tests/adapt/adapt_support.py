"""Shared pieces of the adaptive-program tests: a program, a space of two models, scripted LMs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspex.testing import ScriptedEngine
from dspex.variables import Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document

QA_SPEC = {"module": "predict", "signature": "question -> answer"}
MODELS = ("scripted/right", "scripted/wrong", "scripted/broken")


def document() -> dict[str, Any]:
    space = VariableSpace([Variable.model("model", list(MODELS)), Variable.float("temperature", 0.0, 1.0)])
    from dspex.variables import Bindings

    return space_document(space, Bindings([bind.model("model"), bind.temperature("temperature")]))


def lms() -> dict[str, Any]:
    """``right`` answers ``4``, ``wrong`` answers ``5``, ``broken`` raises."""

    def broken(inputs: Mapping[str, Any]) -> str:
        raise RuntimeError("the model is down")

    return {
        "scripted/right": ScriptedEngine({"answer": "4"}).lm("right"),
        "scripted/wrong": ScriptedEngine({"answer": "5"}).lm("wrong"),
        "scripted/broken": ScriptedEngine({"answer": broken}).lm("broken"),
    }


def is_four(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
    return 1.0 if str(outputs.get("answer")) == "4" else 0.0
