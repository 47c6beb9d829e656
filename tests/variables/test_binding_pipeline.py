"""Bindings inside dspex pipelines: nested steps, parallel branches, a map's inner step, function steps."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError
from dspex.pipeline import ModuleStep, Pipeline, map, parallel, step
from dspex.testing import ScriptedEngine
from dspex.variables.binding import AdaptedPredict, apply, bind

CORPUS = ["Paris is in France.", "Lima is in Peru.", "Rome is in Italy.", "Oslo is in Norway."]


def retrieve(query: str, k: int = 2) -> list[str]:
    return CORPUS[:k]


def keywords(query: str, limit: int = 1) -> list[str]:
    return query.split()[:limit]


def build() -> Pipeline:
    return Pipeline(
        [
            step(retrieve, outputs="passages"),
            parallel(
                step(dspy.Predict("query -> topic"), name="topic"),
                step(keywords, outputs="terms"),
                name="enrich",
            ),
            map(step(dspy.Predict("passage -> summary"), name="summarise"), over="passages", item="passage"),
            step(dspy.Predict("query, passages: list[str] -> answer"), name="answer"),
        ],
        name="qa",
    )


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: f"{len(inputs['passages'])} passages", "topic": "geo"})


def predictor_names(program: Any) -> list[str]:
    return [n for n, _ in program.named_predictors()]


def test_parameter_binding_sets_a_function_steps_k(engine: ScriptedEngine) -> None:
    pipeline = build()
    configured = apply(pipeline, {"k": 3}, [bind.parameter("k", at="steps[0]", name="k")])
    with dspy.context(lm=engine.lm()):
        result = configured(query="capital")
        # The bound value wins over a state field of the same name.
        overridden = configured(query="capital", k=1)
        original = pipeline(query="capital")
    assert len(result.passages) == 3
    assert result.answer == "3 passages"
    assert len(overridden.passages) == 3
    assert len(original.passages) == 2
    assert pipeline.steps[0].fn is retrieve
    assert "k" in pipeline.steps[0].local_inputs


def test_parameter_binding_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown keyword parameter 'kk'; did you mean 'k'"):
        apply(build(), {"k": 3}, [bind.parameter("k", at="steps[0]", name="kk")])
    with pytest.raises(ConfigurationError, match=r"parameter 'query' of step 'retrieve' has no default"):
        apply(build(), {"q": "x"}, [bind.parameter("q", at="steps[0]", name="query")])
    with pytest.raises(ConfigurationError, match=r"steps\[3\] is a ModuleStep, not a function"):
        apply(build(), {"k": 3}, [bind.parameter("k", at="steps[3]", name="k")])


def test_parameter_inside_a_parallel_branch(engine: ScriptedEngine) -> None:
    configured = apply(build(), {"n": 2}, [bind.parameter("n", at="steps[1].branches[1]", name="limit")])
    with dspy.context(lm=engine.lm()):
        assert configured(query="capital of France").terms == ["capital", "of"]


def test_unknown_paths_list_what_is_there() -> None:
    message = r"steps has no item \[7\]; it holds \[0\] retrieve, \[1\] enrich, \[2\] map, \[3\] answer"
    with pytest.raises(ConfigurationError, match=message):
        apply(build(), {"k": 3}, [bind.attribute("k", "steps[7].k")])
    with pytest.raises(
        ConfigurationError, match=r"steps\[1\] \(Parallel\) has no attribute 'branch'.*'branches'"
    ):
        apply(build(), {"k": 3}, [bind.attribute("k", "steps[1].branch[0]")])


def test_attribute_by_path_reaches_a_map_step(engine: ScriptedEngine) -> None:
    pipeline = build()
    configured = apply(pipeline, {"c": 1}, [bind.attribute("c", "steps[2].concurrency")])
    assert (configured.steps[2].concurrency, pipeline.steps[2].concurrency) == (1, 4)


def test_temperature_and_demos_across_nested_steps(engine: ScriptedEngine) -> None:
    pipeline = build()
    names = predictor_names(pipeline)
    assert names == ["steps[1].branches[0].module", "steps[2].inner.module", "steps[3].module"]
    pipeline.steps[3].module.demos = [dspy.Example(query="q", passages=["p"], answer="a")] * 2
    bindings = [
        bind.temperature("t", predictors="steps[1].*"),
        bind.temperature("t2", predictors=["steps[2].inner.module"]),
        bind.demos("shots"),
    ]
    configured = apply(pipeline, {"t": 0.6, "t2": 0.2, "shots": 1}, bindings)
    temperatures = {n: p.config.get("temperature") for n, p in configured.named_predictors()}
    assert temperatures == dict(zip(names, [0.6, 0.2, None], strict=True))
    with dspy.context(lm=engine.lm()):
        configured(query="capital")
    answer_call = next(c for c in engine.history if "answer" in c.prompt.output_names)
    assert answer_call.prompt.demos == 1
    assert len(pipeline.steps[3].module.demos) == 2
    assert all(p.config == {} for _, p in pipeline.named_predictors())


def test_adapter_for_a_pipeline_keeps_it_a_pipeline_and_the_specific_binding_wins(
    engine: ScriptedEngine,
) -> None:
    pipeline = build()
    bindings = [bind.adapter("format"), bind.adapter("branch_format", at="steps[1]")]
    configured = apply(pipeline, {"format": "json", "branch_format": "xml"}, bindings)
    assert isinstance(configured, Pipeline)
    assert predictor_names(configured) == predictor_names(pipeline)
    assert all(isinstance(s.module, AdaptedPredict) for s in (configured.steps[2].inner, configured.steps[3]))
    with dspy.context(lm=engine.lm()):
        configured(query="capital")
    formats = {c.prompt.output_names[0]: c.prompt.format for c in engine.history}
    assert formats == {"topic": "xml", "summary": "json", "answer": "json"}
    assert not any(isinstance(s, ModuleStep) and isinstance(s.module, AdaptedPredict) for s in pipeline.steps)


def test_module_type_replaces_a_steps_module_and_a_map_inner_module(engine: ScriptedEngine) -> None:
    pipeline = build()
    bindings = [bind.module_type("final", at="steps[3]"), bind.module_type("each", at="steps[2].inner")]
    configured = apply(pipeline, {"final": "chain_of_thought", "each": "chain_of_thought"}, bindings)
    assert isinstance(configured.steps[3].module, dspy.ChainOfThought)
    assert type(pipeline.steps[3].module) is dspy.Predict
    assert predictor_names(configured) == [
        "steps[1].branches[0].module",
        "steps[2].inner.module.predict",
        "steps[3].module.predict",
    ]
    with dspy.context(lm=engine.lm()):
        result = configured(query="capital")
    assert result.answer == "2 passages"
    outputs = {c.prompt.output_names for c in engine.history}
    assert ("reasoning", "answer") in outputs
    assert ("reasoning", "summary") in outputs


def test_module_type_on_a_function_step_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"steps\[0\] is a FunctionStep; module_type rebuilds a DSPy"
    ):
        apply(build(), {"m": "predict"}, [bind.module_type("m", at="steps[0]")])


def test_model_per_step_from_a_registry() -> None:
    small = ScriptedEngine({"answer": "small", "topic": "small"})
    large = ScriptedEngine({"answer": "large", "topic": "large"})
    lms = {"small": small.lm("small"), "large": large.lm("large")}
    bindings = [
        bind.model("m_answer", predictors=["steps[3].module"]),
        bind.model("m_rest", predictors=["steps[1].*", "steps[2].*"]),
    ]
    configured = apply(build(), {"m_answer": "large", "m_rest": "small"}, bindings, lms=lms)
    result = configured(query="capital")
    assert (result.answer, result.topic) == ("large", "small")
    assert large.calls == 1
    assert small.calls == 1 + 2
