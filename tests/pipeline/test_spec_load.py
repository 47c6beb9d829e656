"""pipeline_from_spec: every construct from YAML, JSON, a mapping and a file, run on a scripted LM."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import dspy
import pipeline_spec_sample as sample
import yaml

from dspex.modules import ToolRegistry
from dspex.pipeline import Map, ModuleStep, Parallel, Pipeline, RetryPolicy, StepRetried, When
from dspex.pipeline.spec import pipeline_from_spec
from dspex.testing.engine import ScriptedEngine

RESEARCH = textwrap.dedent(
    """
    name: research
    inputs: [text]
    outputs: [answer, notes, summary, count]
    steps:
      - name: parse
        function: pipeline_spec_sample:parse_query
        outputs: [query, keywords]
      - name: refine
        module: chain_of_thought
        signature: "query -> refined_query"
        options: {temperature: 0.2}
        outputs: {reasoning: null}
        timeout: 30
        retry: {attempts: 3, backoff: 0, jitter: 0, retry_on: [TimeoutError]}
        fallback: {name: refine_plain, module: predict, signature: "query -> refined_query"}
      - parallel:
          name: retrieve
          branches:
            - {name: bm25, function: "pipeline_spec_sample:bm25", outputs: passages,
               inputs: {query: refined_query}}
            - [{name: kw, function: "pipeline_spec_sample:keywords", outputs: passages}]
          merge: {passages: concat}
      - when:
          name: maybe_summarise
          condition: {function: "pipeline_spec_sample:is_long"}
          then: {name: summarise, module: predict, signature: "passages: list[str] -> summary"}
          otherwise:
            - {name: first, function: "pipeline_spec_sample:longest", inputs: {values: passages},
               outputs: summary}
      - map:
          name: per_passage
          over: passages
          item: passage
          into: notes
          concurrency: 2
          step: {name: note, module: predict, signature: "passage -> note"}
      - pipeline:
          name: inner
          sequential: true
          steps:
            - {name: count, function: "pipeline_spec_sample:count", outputs: count}
            - {name: answer, module: predict, signature: "query, notes: list[str] -> answer"}
    """
)


def _lm() -> Any:
    return ScriptedEngine(
        {
            "refined_query": lambda i: i["query"] + "?",
            "summary": lambda i: f"{len(i['passages'])} passages",
            "note": lambda i: i["passage"].upper(),
            "answer": lambda i: " | ".join(i["notes"]),
        }
    ).lm()


def _run(pipeline: Pipeline, **inputs: Any) -> dict[str, Any]:
    with dspy.context(lm=_lm()):
        return dict(pipeline(**inputs).items())


def test_yaml_spec_builds_every_construct_and_runs() -> None:
    pipeline = pipeline_from_spec(RESEARCH)
    assert pipeline.name == "research"
    names = [s.name for s in pipeline.steps]
    assert names == ["parse", "refine", "retrieve", "maybe_summarise", "per_passage", "inner"]
    _, refine, retrieve, gate, per, inner = pipeline.steps
    assert isinstance(refine, ModuleStep)
    assert isinstance(refine.module, dspy.ChainOfThought)
    assert refine.module.predict.config == {"temperature": 0.2}
    assert refine.writes == ("refined_query",)
    assert refine.timeout == 30
    assert refine.retry == RetryPolicy(attempts=3, backoff=0, jitter=0, retry_on=(TimeoutError,))
    assert refine.fallback is not None
    assert refine.fallback.name == "refine_plain"
    assert isinstance(retrieve, Parallel)
    assert retrieve.reads == ("refined_query", "keywords")
    assert isinstance(retrieve.branches[1], Pipeline)  # a list of steps is a sub-pipeline
    assert retrieve.merge == {"passages": "concat"}
    assert isinstance(gate, When)
    assert gate.condition is sample.is_long
    assert isinstance(gate.otherwise, Pipeline)
    assert isinstance(per, Map)
    assert (per.over, per.item, per.into, per.concurrency) == ("passages", "passage", "notes", 2)
    assert isinstance(inner, Pipeline)
    assert inner.sequential

    result = _run(pipeline, text="Hello big world")
    assert result == {
        "answer": "BM25:HELLO BIG WORLD? | KW:HELLO | KW:BIG",
        "notes": ["BM25:HELLO BIG WORLD?", "KW:HELLO", "KW:BIG"],
        "summary": "3 passages",
        "count": 3,
    }
    # Two passages take the other branch: the longest passage, from a function step.
    assert _run(pipeline, text="Hello")["summary"] == "bm25:hello?"


def test_json_text_mapping_and_file_give_the_same_pipeline(tmp_path: Path) -> None:
    data = yaml.safe_load(RESEARCH)
    expected = pipeline_from_spec(RESEARCH).describe()
    assert pipeline_from_spec(data).describe() == expected
    assert pipeline_from_spec(json.dumps(data, indent=2)).describe() == expected
    (tmp_path / "research.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "research.yaml").write_text(RESEARCH, encoding="utf-8")
    assert pipeline_from_spec(tmp_path / "research.json").describe() == expected
    assert pipeline_from_spec(tmp_path / "research.yaml").describe() == expected


def test_retry_on_an_imported_exception_retries_and_emits_events() -> None:
    pipeline = pipeline_from_spec(
        {
            "steps": [
                {
                    "name": "flaky",
                    "function": "pipeline_spec_sample:flaky_once",
                    "outputs": "result",
                    "retry": {
                        "attempts": 2,
                        "backoff": 0,
                        "jitter": 0,
                        "retry_on": ["pipeline_spec_sample:Flaky"],
                    },
                }
            ]
        }
    )

    async def collect() -> list[Any]:
        return [event async for event in pipeline.stream(query="retry-test-1")]

    events = asyncio.run(collect())
    assert [e.attempt for e in events if isinstance(e, StepRetried)] == [1]
    assert events[-1].result.result == "ok:retry-test-1"


def test_continue_on_error_and_fallback_from_a_spec() -> None:
    pipeline = pipeline_from_spec(
        """
        steps:
          - name: fails
            function: pipeline_spec_sample:flaky_once
            outputs: result
            continue_on_error: true
          - {name: after, function: "pipeline_spec_sample:shout", inputs: {passage: result}, outputs: loud}
          - name: rescued
            function: pipeline_spec_sample:flaky_once
            inputs: {query: other}
            outputs: rescued
            fallback: {name: plain, function: "pipeline_spec_sample:shout", inputs: {passage: other},
                       outputs: rescued}
        """
    )
    result = pipeline(query="continue-test", other="x-continue-test")
    assert set(result.step_errors) == {"fails", "after"}
    assert result.rescued == "X-CONTINUE-TEST"


def test_registry_names_merge_by_import_path_and_field_conditions() -> None:
    registry = ToolRegistry({"split": sample.parse_query})
    pipeline = pipeline_from_spec(
        """
        name: reg
        steps:
          - {name: parse, function: split, outputs: [query, keywords]}
          - parallel:
              branches:
                - {name: a, function: "pipeline_spec_sample:bm25", outputs: passages}
                - {name: b, function: "pipeline_spec_sample:keywords", outputs: passages}
              merge: {passages: "pipeline_spec_sample:longest"}
          - when: {condition: flag, then: {name: n, function: "pipeline_spec_sample:count", outputs: count}}
        """,
        registry=registry,
    )
    assert pipeline.steps[0].fn is sample.parse_query
    assert pipeline.steps[1].name == "parallel"
    assert pipeline.steps[1].merge == {"passages": sample.longest}
    assert pipeline.steps[2].field_condition == "flag"
    result = pipeline(text="one two three", flag=True)
    assert result.passages == ["kw:one", "kw:two"]
    assert result.count == 2
    assert "count" not in pipeline(text="one", flag=False)


def test_catalog_modules_take_tools_by_import_path() -> None:
    pipeline = pipeline_from_spec(
        """
        steps:
          - name: agent
            module: react
            signature: "question -> answer"
            options: {tools: ["pipeline_spec_sample:count"], max_iters: 2}
        """
    )
    agent = pipeline.steps[0]
    assert isinstance(agent.module, dspy.ReAct)
    assert list(agent.module.tools) == ["count", "finish"]
    assert agent.reads == ("question",)
    assert agent.writes == ("answer",)
