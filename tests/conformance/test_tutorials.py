"""DSPy programs run through DSPex unchanged: the same outputs as bare DSPy, and a recorded run.

Each program of :mod:`tutorial_programs` runs bare (``program(**inputs)`` under ``dspy.context``) and then
through every path DSPex offers: ``App.run``, ``App.arun``, the registry (import path, and a spec where
the program is one), a pipeline step and the REST run endpoint. The LM derives every answer from the
exact request (a hash of every message), so equal outputs mean DSPex sent exactly the prompts DSPy sends;
every path must also leave a succeeded record whose span tree holds the program's modules and LM calls.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from dspy.lm15 import Request

from dspex import ValidationError
from dspex.jsonable import to_jsonable
from dspex.modules import ToolRegistry
from dspex.pipeline import ModuleStep, Pipeline
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.testing._prompt import Field, Prompt, default_value

sys.path.insert(0, str(Path(__file__).parent))
import tutorial_programs as tp


class PromptHashEngine(ScriptedEngine):
    """A prompt-exact LM: every output value is derived from a hash of the whole request.

    ``str`` fields answer ``"<field>-<hash>"``, numbers and the ``Person`` model are computed from the hash;
    a ReAct step calls the first tool once, then finishes.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()  # dspy.Parallel calls the LM from several threads at once

    def answer(self, request: Request) -> Any:
        text = repr((request.system, [(m.role, m.text) for m in request.messages]))
        self._local.digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return super().answer(request)

    def _value(self, name: str, prompt: Prompt) -> Any:
        digest: str = self._local.digest
        number = int(digest[:6], 16)
        kind = next(f for f in prompt.output_fields if f.name == name).type
        tool_called = "observation_0" in prompt.text
        if name == "next_tool_name":
            tools = [t for t in re.findall(r"'(\w+)'", kind) if t != "finish"]
            return tools[0] if tools and not tool_called else "finish"
        if name == "next_tool_args":
            return {"query": f"query-{digest}"} if not tool_called else {}
        if kind == "str":
            return f"{name}-{digest}"
        if kind == "Person":
            return {"name": f"name-{digest}", "age": number % 90}
        if kind == "float":
            return round((number % 1000) / 1000, 3)
        if kind == "bool":
            return number % 2 == 0
        return default_value(Field(name, kind))


# -- the programs and how each path reaches them ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A tutorial program: how to build it, its inputs, and how the registry and pipelines name it."""

    name: str
    build: Callable[[Path], Any]  # a fresh program (the directory is for files it saves)
    inputs: Callable[[], dict[str, Any]]
    factory: str  # the import path the registry builds it from
    json_inputs: dict[str, Any] | None = None  # the REST body's inputs, when ``inputs`` are not JSON
    spec: dict[str, Any] | None = None  # a spec of the same program, when it is one catalog module
    spec_bare: Callable[[], Any] | None = None  # what bare DSPy builds from that spec's signature
    step: dict[str, Any] = field(default_factory=dict)  # ModuleStep options
    saved: bool = False  # the registry path saves the built program's state as a version


SAVED_FILE = "rag.json"
EMOTION = "sentence -> sentiment: Literal['sadness', 'joy', 'love', 'anger', 'fear', 'surprise']"
CHAT = "question: str, history: dspy.History -> answer: str"
HISTORY = {"messages": [{"question": "Where is Paris?", "answer": "In France."}]}


def _saved_rag(directory: Path) -> Any:
    path = directory / SAVED_FILE
    if not path.exists():
        tp.saved_rag(str(path))
    return tp.loaded_rag(str(path))


CASES = [
    Case(
        "rag",
        lambda _: tp.RAG(),
        lambda: {"question": "What is the capital of France?"},
        "tutorial_programs:build_rag",
    ),
    Case(
        "multihop",
        lambda _: tp.MultiHop(),
        lambda: {"claim": "The Seine flows through Berlin."},
        "tutorial_programs:build_multihop",
        step={"input_fields": ["claim"], "output_fields": ["verdict"]},
    ),
    Case(
        "agent",
        lambda _: tp.build_agent(),
        lambda: {"question": "Which river flows through Paris?"},
        "tutorial_programs:build_agent",
        spec={
            "module": "react",
            "signature": "question -> answer",
            "options": {"tools": ["lookup"], "max_iters": 3},
        },
        spec_bare=tp.build_agent,
    ),
    Case(
        "classify",
        lambda _: tp.build_classify(),
        lambda: {"sentence": "I am so happy today"},
        "tutorial_programs:build_classify",
        spec={"module": "predict", "signature": EMOTION},
        spec_bare=lambda: dspy.Predict(dspy.Signature(EMOTION)),
    ),
    Case(
        "typed",
        lambda _: tp.build_extract(),
        lambda: {"text": "Ada Lovelace was 36 when she died."},
        "tutorial_programs:build_extract",
    ),
    Case(
        "history",
        lambda _: tp.Conversation(),
        lambda: {"question": "And its river?", "history": dspy.History(**HISTORY)},
        "tutorial_programs:build_conversation",
        json_inputs={"question": "And its river?", "history": HISTORY},
        spec={"module": "predict", "signature": CHAT},
        spec_bare=lambda: dspy.Predict(dspy.Signature(CHAT)),
    ),
    Case(
        "async",
        lambda _: tp.AsyncQA(),
        lambda: {"question": "What is DSPy?"},
        "tutorial_programs:build_async_qa",
    ),
    Case(
        "parallel",
        lambda _: tp.BatchQA(),
        lambda: {"questions": ["What is DSPy?", "Where is Paris?", "What is the Seine?"]},
        "tutorial_programs:build_batch",
        step={"output_fields": ["answers"]},
    ),
    Case(
        "saved",
        _saved_rag,
        lambda: {"question": "What is the capital of France?"},
        "tutorial_programs:build_rag",
        saved=True,
    ),
]
PATHS = ("run", "arun", "import", "spec", "pipeline", "rest")
COMBOS = [(case, path) for case in CASES for path in PATHS if path != "spec" or case.spec is not None]


@pytest.fixture
def engine() -> PromptHashEngine:
    return PromptHashEngine()


@pytest.fixture
def lm(engine: PromptHashEngine) -> Any:
    return engine.lm(cache=False)


@pytest.fixture
def app(tmp_path: Path, lm: Any) -> Iterator[App]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}")
    with App(settings, lm=lm, tools=ToolRegistry([tp.lookup])) as app:
        yield app


def _bare(program: Any, lm: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    with dspy.context(lm=lm):
        outputs: dict[str, Any] = to_jsonable(dict(program(**inputs).items()))
    return outputs


def _recorded(app: App, execution_id: str) -> dict[str, Any]:
    """The run's record: succeeded, with a span tree that holds at least one module and one LM call."""
    app.flush()
    record = app.executions.get(execution_id)
    assert record.status == "succeeded", record.error
    assert record.trace is not None
    kinds = {span["kind"] for span in record.trace["spans"]}
    assert {"module", "lm"} <= kinds, kinds
    trace: dict[str, Any] = record.trace
    return trace


async def _through(path: str, case: Case, app: App, lm: Any, workdir: Path) -> tuple[dict[str, Any], str]:
    """Run the case's program along ``path``: (outputs, execution id). A pipeline's outputs are the
    fields its steps write: a module step writes its signature's outputs (ReAct's ``trajectory`` and
    ``reasoning`` stay inside the step)."""
    inputs = case.inputs()
    if path == "run":  # the LM passed to the call
        result = app.run(case.build(workdir), inputs, lm=lm)
    elif path == "arun":  # the LM set the DSPy way
        with dspy.context(lm=lm):
            result = await app.arun(case.build(workdir), inputs)
    elif path in ("import", "spec"):  # the App's LM
        app.programs.register(case.name, case.factory if path == "import" else case.spec)
        if case.saved:
            app.programs.save_version(case.name, case.build(workdir), note="loaded from a save() file")
        result = await app.arun(case.name, inputs)
    elif path == "pipeline":
        step = ModuleStep(case.build(workdir), **case.step)
        result = app.run(Pipeline([step], name=case.name), inputs)
        assert set(result.outputs) == set(step.writes)
    else:  # rest: the service in front of the App, over its ASGI interface
        from dspex.server import create_app

        app.programs.register(case.name, case.factory)
        if case.saved:
            app.programs.save_version(case.name, case.build(workdir), note="loaded from a save() file")
        body = {"inputs": case.json_inputs if case.json_inputs is not None else inputs}
        transport = httpx.ASGITransport(app=create_app(app, auth=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://dspex.test") as client:
            response = await client.post(f"/v1/programs/{case.name}/runs", json=body)
        assert response.status_code == 200, response.text
        data = response.json()
        return data["outputs"], data["execution_id"]
    return to_jsonable(result.outputs), result.execution_id


@pytest.mark.parametrize(("case", "path"), COMBOS, ids=[f"{c.name}-{p}" for c, p in COMBOS])
async def test_outputs_equal_bare_dspy(app: App, lm: Any, tmp_path: Path, case: Case, path: str) -> None:
    bare = case.spec_bare() if path == "spec" and case.spec_bare is not None else case.build(tmp_path)
    expected = _bare(bare, lm, case.inputs())
    outputs, execution_id = await _through(path, case, app, lm, tmp_path)
    if path == "pipeline":
        expected = {name: value for name, value in expected.items() if name in outputs}
        assert expected
    assert {name: outputs.get(name) for name in expected} == expected
    _recorded(app, execution_id)


def test_the_lm_derives_answers_from_the_exact_prompt(lm: Any, tmp_path: Path) -> None:
    """Guards the suite itself: another prompt gives other outputs, so equal outputs prove equal prompts."""
    question = {"question": "What is the capital of France?"}
    plain = _bare(tp.RAG(), lm, question)
    saved = _bare(_saved_rag(tmp_path), lm, question)
    assert plain["answer"].startswith("answer-")
    assert saved["answer"] != plain["answer"]  # the saved demo and instructions are in the prompt
    assert saved == _bare(tp.saved_rag(str(tmp_path / "again.json")), lm, question)  # save/load is exact
    assert _bare(tp.AsyncQA(), lm, {"question": "q"}) != _bare(
        tp.AsyncQA(), lm, {"question": "q", "style": "x"}
    )


def test_a_parallel_batch_records_every_call_under_the_program(app: App, lm: Any) -> None:
    questions = ["a?", "b?", "c?", "d?"]
    result = app.run(tp.BatchQA(), {"questions": questions}, lm=lm)
    spans = _recorded(app, result.execution_id)["spans"]
    assert len([s for s in spans if s["kind"] == "lm"]) == len(questions)
    root = next(s for s in spans if s["parent"] is None)
    assert root["name"] == "BatchQA"
    assert all(s["parent"] is not None for s in spans if s is not root)


def test_inputs_are_checked_against_forward(app: App, lm: Any) -> None:
    with pytest.raises(ValidationError, match=r"RAG.forward\(question\): question: missing"):
        app.run(tp.RAG(), {}, lm=lm)
    with pytest.raises(ValidationError, match="context: unknown input"):
        app.run(tp.RAG(), {"question": "q", "context": ["x"]}, lm=lm)
    # An optional parameter may be given or not; a catalog module still checks its signature.
    assert app.run(tp.AsyncQA(), {"question": "q", "style": "long"}, lm=lm).outputs["answer"]
    with pytest.raises(ValidationError, match="question: missing"):
        app.run(dspy.ChainOfThought("question -> answer"), {}, lm=lm)


def test_annotations_of_forward_check_and_coerce_inputs(app: App, lm: Any, engine: PromptHashEngine) -> None:
    # JSON-shaped inputs become the annotated types (what the REST path relies on for dspy.History)...
    result = app.run(tp.Conversation(), {"question": "q", "history": HISTORY}, lm=lm)
    history = dspy.History(**HISTORY)
    assert (
        result.outputs["answer"]
        == _bare(tp.Conversation(), lm, {"question": "q", "history": history})["answer"]
    )
    # ...and values that cannot be are refused, naming the field, before any LM call.
    calls = engine.calls
    with pytest.raises(ValidationError, match=r"questions: expected list\[str\]"):
        app.run(tp.BatchQA(), {"questions": "not a list"}, lm=lm)
    with pytest.raises(ValidationError, match=r"history: expected dspy\.History, got int"):
        app.run(tp.Conversation(), {"question": "q", "history": 3}, lm=lm)
    assert engine.calls == calls


def test_the_lm_comes_from_where_dspy_users_put_it(app: App, lm: Any) -> None:
    other = PromptHashEngine(model="other").lm("other", cache=False)
    with dspy.context(lm=other):
        via_context = app.run(dspy.Predict("question -> answer"), {"question": "q"})
        via_argument = app.run(dspy.Predict("question -> answer"), {"question": "q"}, lm=lm)
    via_app = app.run(dspy.Predict("question -> answer"), {"question": "q"})
    own = dspy.Predict("question -> answer")
    own.lm = other  # a predictor that carries its own LM uses it, whatever the run's LM is
    via_predictor = app.run(own, {"question": "q"}, lm=lm)
    assert set(via_context.usage) == {"scripted/other"}
    assert set(via_argument.usage) == {"scripted/default"}
    assert set(via_app.usage) == {"scripted/default"}
    assert set(via_predictor.usage) == {"scripted/other"}
