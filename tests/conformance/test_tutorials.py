"""DSPy programs run through DSPex unchanged: the same outputs as bare DSPy, and a recorded run.

The LM derives every string answer from the exact prompt (a hash of every message), so equal outputs
mean DSPex sent exactly the prompts DSPy sends.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.lm15 import Request

from dspex import ValidationError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.testing._prompt import Field, Prompt, default_value

sys.path.insert(0, str(Path(__file__).parent))
import tutorial_programs as tp


class PromptHashEngine(ScriptedEngine):
    """Answers each ``str`` output field with a hash of the whole request: a prompt-exact LM."""

    def answer(self, request: Request) -> Any:
        text = repr((request.system, [(m.role, m.text) for m in request.messages]))
        self._digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return super().answer(request)

    def _value(self, name: str, prompt: Prompt) -> Any:
        field = next(f for f in prompt.output_fields if f.name == name)
        if field.type == "str" and name != "reasoning":
            return f"{name}-{self._digest}"
        return default_value(Field(field.name, field.type))


@pytest.fixture
def lm() -> Any:
    return PromptHashEngine().lm(cache=False)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with App(Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}")) as app:
        yield app


def _bare(program: Any, lm: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    with dspy.context(lm=lm):
        return dict(program(**inputs).items())


def _recorded(app: App, execution_id: str) -> None:
    app.flush()
    record = app.executions.get(execution_id)
    assert record.status == "succeeded"
    assert record.trace is not None
    assert record.trace["spans"]


PROGRAMS: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
    ("rag", tp.RAG, {"question": "What is the capital of France?"}),
    ("multihop", tp.MultiHop, {"claim": "The Seine flows through Berlin."}),
    ("classify", lambda: dspy.Predict(tp.Emotion), {"sentence": "I am so happy today"}),
    ("async", tp.AsyncQA, {"question": "What is DSPy?"}),
]


@pytest.mark.parametrize(("name", "build", "inputs"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
async def test_outputs_equal_bare_dspy_in_every_path(
    app: App, lm: Any, name: str, build: Callable[[], Any], inputs: dict[str, Any]
) -> None:
    expected = _bare(build(), lm, inputs)
    if name in ("rag", "async"):  # free-text answers: derived from the exact prompt
        assert expected["answer"].startswith("answer-")

    result = app.run(build(), inputs, lm=lm)
    assert {k: result.outputs[k] for k in expected} == expected
    _recorded(app, result.execution_id)

    with dspy.context(lm=lm):  # the DSPy way of setting the LM
        result = await app.arun(build(), inputs)
    assert {k: result.outputs[k] for k in expected} == expected
    _recorded(app, result.execution_id)


def test_a_registered_tutorial_program_runs_by_name(app: App, lm: Any) -> None:
    inputs = {"question": "Where does the Seine flow?"}
    expected = _bare(tp.RAG(), lm, inputs)
    app.programs.register("rag", "tutorial_programs:build_rag")
    with dspy.context(lm=lm):
        result = app.run("rag", inputs)
    assert {k: result.outputs[k] for k in expected} == expected
    _recorded(app, result.execution_id)


def test_inputs_are_checked_against_forward(app: App, lm: Any) -> None:
    with pytest.raises(ValidationError, match=r"RAG.forward\(question\): question: missing"):
        app.run(tp.RAG(), {}, lm=lm)
    with pytest.raises(ValidationError, match="context: unknown input"):
        app.run(tp.RAG(), {"question": "q", "context": ["x"]}, lm=lm)
    # An optional parameter may be given or not; a catalog module still checks its signature.
    assert app.run(tp.AsyncQA(), {"question": "q", "style": "long"}, lm=lm).outputs["answer"]
    with pytest.raises(ValidationError, match="question: missing"):
        app.run(dspy.ChainOfThought("question -> answer"), {}, lm=lm)


def test_the_lm_comes_from_where_dspy_users_put_it(app: App, lm: Any) -> None:
    other = PromptHashEngine(model="other").lm("other", cache=False)
    with dspy.context(lm=lm):
        via_context = app.run(dspy.Predict("question -> answer"), {"question": "q"})
        via_argument = app.run(dspy.Predict("question -> answer"), {"question": "q"}, lm=other)
    assert set(via_context.usage) == {"scripted/default"}
    assert set(via_argument.usage) == {"scripted/other"}
