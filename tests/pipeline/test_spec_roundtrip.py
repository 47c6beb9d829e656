"""pipeline_to_spec: a pipeline built in Python written back and loaded again is the same pipeline."""

from __future__ import annotations

import json
from typing import Any

import dspy
import pipeline_spec_sample as sample
import pytest
import yaml

from dspex.errors import ConfigurationError
from dspex.modules import ToolRegistry
from dspex.pipeline import Pipeline, Step, parallel, step
from dspex.pipeline.spec import pipeline_from_spec, pipeline_to_spec, to_yaml
from dspex.testing.engine import ScriptedEngine


def _options(s: Step) -> list[Any]:
    """Every step's run options and construct settings, depth first, for comparing two pipelines."""
    own = [s.name, type(s).__name__, s.reads, s.writes, s.timeout, s.retry, s.continue_on_error]
    own += [dict(s.input_map), dict(s.output_map)]
    for attr in (
        "sequential",
        "merge",
        "over",
        "item",
        "into",
        "concurrency",
        "field_condition",
        "condition",
    ):
        own.append(getattr(s, attr, None))
    if hasattr(s, "fn"):
        own.append(s.fn)
    if hasattr(s, "module"):
        predictors = s.module.named_predictors()
        own.append([(n, p.config, dict(p.signature.fields).keys()) for n, p in predictors])
    children = [*getattr(s, "steps", []), *getattr(s, "branches", [])]
    children += [
        c for c in (getattr(s, "then", None), getattr(s, "otherwise", None), getattr(s, "inner", None)) if c
    ]
    if s.fallback is not None:
        children.append(s.fallback)
    return [own, *(_options(c) for c in children)]


def _run(pipeline: Pipeline) -> dict[str, Any]:
    engine = ScriptedEngine(
        {"refined": lambda i: i["query"] + "!", "answer": lambda i: f"{len(i['louds'])} notes"}
    )
    with dspy.context(lm=engine.lm()):
        return dict(pipeline(text="Hello big world").items())


def test_round_trip_of_a_pipeline_with_every_construct() -> None:
    original = sample.build()
    spec = pipeline_to_spec(original)
    loaded = pipeline_from_spec(spec)
    assert loaded.describe() == original.describe()
    assert _options(loaded) == _options(original)
    assert pipeline_to_spec(loaded) == spec
    assert (
        _run(loaded)
        == _run(original)
        == {
            "answer": "3 notes",
            "louds": ["BM25:HELLO BIG WORLD!", "KW:HELLO", "KW:BIG"],
            "n": 3,
        }
    )
    # The same through text: YAML and JSON.
    assert pipeline_from_spec(to_yaml(original)).describe() == original.describe()
    assert pipeline_from_spec(json.dumps(spec)).describe() == original.describe()


def test_spec_reads_as_documented() -> None:
    spec = pipeline_to_spec(sample.build())
    assert spec["outputs"] == ["answer", "louds", "n"]
    refine = spec["steps"][1]
    assert refine == {
        "name": "refine",
        "module": "chain_of_thought",
        "signature": "query -> refined",
        "options": {"temperature": 0.2, "max_tokens": 300, "config": {"n": 1}},
        "outputs": {"reasoning": None},
        "timeout": 30,
        "retry": {
            "attempts": 2,
            "backoff": 0.0,
            "jitter": 0.0,
            "retry_on": ["TimeoutError", "pipeline_spec_sample:Flaky"],
        },
        "fallback": {"name": "refine_plain", "module": "predict", "signature": "query -> refined"},
    }
    retrieve = spec["steps"][2]["parallel"]
    assert retrieve["branches"][1] == [
        {"name": "kw", "function": "pipeline_spec_sample:keywords", "outputs": "passages"}
    ]
    assert spec["steps"][3]["when"]["condition"] == {"function": "pipeline_spec_sample:is_long"}
    assert yaml.safe_load(to_yaml(sample.build())) == spec


def test_declared_inputs_and_merge_callables_round_trip() -> None:
    original = Pipeline(
        [
            step(sample.parse_query, outputs=["query", "keywords"]),
            dspy.Predict("query, extra -> answer"),
        ],
        name="declared",
        inputs=["extra", "text"],
        sequential=True,
    )
    spec = pipeline_to_spec(original)
    assert spec["inputs"] == ["extra", "text"]
    assert spec["sequential"] is True
    assert pipeline_from_spec(spec).local_inputs == original.local_inputs

    merged = Pipeline(
        [
            step(sample.parse_query, outputs=["query", "keywords"]),
            parallel(
                step(sample.bm25, outputs="passages"),
                step(sample.keywords, outputs="passages"),
                merge={"passages": sample.longest},
            ),
        ]
    )
    spec = pipeline_to_spec(merged)
    assert spec["steps"][1]["parallel"]["merge"] == {"passages": "pipeline_spec_sample:longest"}
    assert pipeline_from_spec(spec).steps[1].merge == {"passages": sample.longest}


def test_catalog_modules_loaded_from_a_spec_round_trip_with_their_options() -> None:
    text = """
    steps:
      - name: agent
        module: react
        signature: "question -> answer"
        options: {tools: [count], max_iters: 2}
    """
    registry = ToolRegistry([sample.count])
    loaded = pipeline_from_spec(text, registry=registry)
    spec = pipeline_to_spec(loaded)
    assert spec["steps"][0]["options"] == {"tools": ["count"], "max_iters": 2}
    again = pipeline_from_spec(spec, registry=registry)
    assert again.describe() == loaded.describe()


def test_registered_functions_are_written_by_name() -> None:
    registry = ToolRegistry({"parse": sample.parse_query})
    pipeline = Pipeline([step(sample.parse_query, outputs=["query", "keywords"])])
    spec = pipeline_to_spec(pipeline, registry=registry)
    assert spec["steps"][0]["function"] == "parse"
    assert pipeline_from_spec(spec, registry=registry).steps[0].fn is sample.parse_query


def _local() -> Any:
    def helper(text: str) -> str:
        return text

    return helper


def _with_lm(module: Any) -> Any:
    module.lm = ScriptedEngine().lm()
    return module


class _Instructed(dspy.Signature):
    """Answer in French."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([step(lambda text: text, name="anon", outputs="out")], "function of step 'anon'"),
        ([step(_local(), outputs="out")], "a lambda or a function defined inside another function"),
        (
            [step(dspy.ReAct("question -> answer", tools=[sample.count]), name="agent")],
            "cannot write step 'agent' to a spec: its ReAct was built in Python",
        ),
        (
            [step(dspy.Predict(_Instructed), name="fr")],
            "cannot write step 'fr' to a spec: its signature has instructions ('Answer in French.')",
        ),
        ([step(_with_lm(dspy.Predict("question -> answer")), name="own")], "its predictor has its own LM"),
    ],
    ids=["lambda", "local-function", "python-built-react", "instructions", "own-lm"],
)
def test_what_a_spec_cannot_hold_is_refused_naming_the_step(steps: list[Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        pipeline_to_spec(Pipeline(steps))
    assert message in info.value.message


def test_non_strict_drops_instructions() -> None:
    pipeline = Pipeline([step(dspy.Predict(_Instructed), name="fr")])
    spec = pipeline_to_spec(pipeline, strict=False)
    assert spec["steps"][0]["signature"] == "question: str -> answer"
    assert pipeline_from_spec(spec).describe() == pipeline.describe()
