"""Round trip through a real consumer: runs exported over OTLP/HTTP to Arize Phoenix, read back through
Phoenix's own REST API (span names, parent links, token counts, models, and Phoenix's reading of the
GenAI attributes as LLM and TOOL spans).

Phoenix runs from its own virtualenv (see ``phoenix_server``); the first run on a machine installs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from phoenix_server import Phoenix, PhoenixUnavailable, running_phoenix

from dspex.pipeline import Pipeline, step
from dspex.runtime import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine

PROJECT = "dspex-roundtrip"


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    try:
        with running_phoenix(tmp_path_factory.mktemp("phoenix")) as server:
            yield server
    except PhoenixUnavailable as exc:
        pytest.skip(str(exc))


def _pipeline() -> Pipeline:
    """A research step that calls a tool, then two predictors on two different models."""
    alpha = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs['question']}"}).lm("alpha")
    beta = ScriptedEngine({"summary": "a short summary"}).lm("beta")
    lookup = dspy.Tool(lambda question: f"facts about {question}", name="lookup")

    def research(question: str) -> dict[str, Any]:
        return {"facts": lookup(question=question)}

    answer, summarise = dspy.Predict("question -> answer"), dspy.ChainOfThought("answer, facts -> summary")
    answer.lm, summarise.predict.lm = alpha, beta
    return Pipeline([step(research, outputs=["facts"]), step(answer), step(summarise)], name="two")


def test_a_pipeline_run_reads_back_from_phoenix(
    phoenix: Phoenix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    # Phoenix files spans under the project their resource names (OpenInference's attribute).
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={PROJECT}")
    settings = Settings.load(
        database_url=f"sqlite:///{tmp_path / 'rt.db'}",
        trace="full",  # the whole tree, adapter spans too, through Phoenix
        telemetry={"endpoint": phoenix.url, "service_name": "dspex-test"},
    )
    with App(settings) as app:  # the real path: settings -> OTLP/HTTP exporter -> Phoenix
        result = app.run(_pipeline(), {"question": "what is OTLP?"}, program_name="two-models")
        assert app.flush()
        record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.trace_id == result.trace_id
    assert result.trace_id is not None
    spans = phoenix.spans(PROJECT, result.trace_id, expect=15)

    by_id = {span["context"]["span_id"]: span for span in spans}  # type: ignore[index]

    def parent(span: dict[str, Any]) -> str | None:
        above = by_id.get(span["parent_id"])
        return None if above is None else str(above["name"])

    tree = sorted((str(s["name"]), parent(s)) for s in spans)
    assert tree == sorted(
        [
            ("run two-models", None),
            ("two", "run two-models"),
            ("research", "two"),
            ("execute_tool lookup", "research"),
            ("predict", "two"),
            ("Predict", "predict"),
            ("format ChatAdapter", "Predict"),
            ("chat scripted/alpha", "Predict"),
            ("parse ChatAdapter", "Predict"),
            ("chainofthought", "two"),
            ("ChainOfThought", "chainofthought"),
            ("Predict", "ChainOfThought"),
            ("format ChatAdapter", "Predict"),
            ("chat scripted/beta", "Predict"),
            ("parse ChatAdapter", "Predict"),
        ]
    )
    (run,) = [s for s in spans if s["name"] == "run two-models"]
    assert run["parent_id"] is None
    assert run["attributes"]["dspex.execution_id"] == result.execution_id  # type: ignore[index]
    for model in ("scripted/alpha", "scripted/beta"):
        (lm,) = [s for s in spans if s["name"] == f"chat {model}"]
        attributes: dict[str, Any] = lm["attributes"]  # type: ignore[assignment]
        usage = result.usage[model]
        assert lm["span_kind"] == "LLM"  # Phoenix read the GenAI attributes as an LLM call
        assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == model
        assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        assert attributes["llm.token_count.prompt"] == usage["prompt_tokens"]  # Phoenix's own reading
        assert attributes["llm.model_name"] == model
    (tool,) = [s for s in spans if s["name"] == "execute_tool lookup"]
    assert tool["span_kind"] == "TOOL"
    assert time.monotonic() - started < 60
