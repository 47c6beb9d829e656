"""Bindings on plain DSPy modules: every target kind reaches the LM call, and the original stays as it was."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError, SpecError
from dspex.testing import ScriptedEngine
from dspex.variables.binding import AdaptedPredict, AdapterScope, Binding, Bindings, apply, bind


class RecordingEngine(ScriptedEngine):
    """A scripted engine that also keeps the raw requests, whose ``config`` carries the LM settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[Any] = []

    def answer(self, request: Any) -> Any:
        self.requests.append(request)
        return super().answer(request)


class TwoStep(dspy.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> answer")
        self.review = dspy.ChainOfThought("answer -> verdict")

    def forward(self, question: str) -> dspy.Prediction:
        answer = self.draft(question=question).answer
        return self.review(answer=answer)


def demos(n: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"q{i}", answer=f"a{i}") for i in range(n)]


def snapshot(program: Any) -> tuple[Any, ...]:
    return (
        program.dump_state(),
        [
            (n, dict(p.config), p.lm, p.signature.instructions, len(p.demos))
            for n, p in program.named_predictors()
        ],
        type(program),
    )


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine({"answer": "Paris", "verdict": "ok"})


def test_temperature_reaches_every_selected_predictor(engine: RecordingEngine) -> None:
    program = TwoStep()
    before = snapshot(program)
    configured = apply(program, {"temp": 0.7}, [bind.temperature("temp")])
    with dspy.context(lm=engine.lm()):
        configured(question="capital of France?")
    assert [r.config.temperature for r in engine.requests] == [0.7, 0.7]
    assert snapshot(program) == before
    assert all(p.config == {} for _, p in program.named_predictors())


def test_predictor_selection_by_name_and_glob(engine: RecordingEngine) -> None:
    program = TwoStep()
    assert [n for n, _ in program.named_predictors()] == ["draft", "review.predict"]
    by_name = apply(program, {"t": 0.3}, [bind.temperature("t", predictors=["review.predict"])])
    by_glob = apply(program, {"t": 0.3}, [bind.temperature("t", predictors="dr*")])
    assert by_name.draft.config == {}
    assert by_name.review.predict.config == {"temperature": 0.3}
    assert by_glob.draft.config == {"temperature": 0.3}
    assert by_glob.review.predict.config == {}


def test_max_tokens_and_any_lm_setting_and_config_beats_the_predictors_own_lm(
    engine: RecordingEngine,
) -> None:
    program = dspy.Predict("question -> answer")
    program.lm = engine.lm(temperature=0.1)
    bindings = [bind.max_tokens("budget"), bind.lm_setting("p", "top_p"), bind.temperature("t")]
    configured = apply(program, {"budget": 64, "p": 0.5, "t": 0.9}, bindings)
    configured(question="q")
    config = engine.requests[-1].config
    assert (config.max_tokens, config.top_p, config.temperature) == (64, 0.5, 0.9)
    program(question="q")
    assert engine.requests[-1].config.temperature == 0.1


def test_model_switches_which_lm_answers_and_keeps_the_predictors_settings() -> None:
    small, large = ScriptedEngine({"answer": "small"}), ScriptedEngine({"answer": "large"})
    lms = {"small": small.lm("small"), "large": large.lm("large")}
    program = dspy.Predict("question -> answer")
    program.lm = small.lm("own", temperature=0.4)
    program.config["max_tokens"] = 32
    configured = apply(program, {"model": "large"}, [bind.model("model")], lms=lms)
    assert configured(question="q").answer == "large"
    assert configured.lm.kwargs["temperature"] == 0.4  # carried over from the predictor's own LM
    assert configured.config == {"max_tokens": 32}
    assert program(question="q").answer == "small"
    with pytest.raises(ConfigurationError, match=r"did you mean 'large'"):
        apply(program, {"model": "lareg"}, [bind.model("model")], lms=lms)


def test_model_without_registry_builds_a_dspy_lm_shared_by_predictors() -> None:
    configured = apply(TwoStep(), {"model": "openai/gpt-4o-mini"}, [bind.model("model")])
    lms = [p.lm for _, p in configured.named_predictors()]
    assert lms[0].model == "openai/gpt-4o-mini"
    assert lms[0] is lms[1]


def test_instructions_reach_the_system_prompt(engine: RecordingEngine) -> None:
    program = TwoStep()
    text = "Answer in one word, like an encyclopedia."
    configured = apply(program, {"style": text}, [bind.instructions("style", predictors=["draft"])])
    with dspy.context(lm=engine.lm()):
        configured(question="q")
    assert engine.history[0].prompt.instructions == text
    assert engine.history[1].prompt.instructions != text
    assert program.draft.signature.instructions != text


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_number_of_demos_keeps_the_first_k(engine: RecordingEngine, k: int) -> None:
    program = dspy.Predict("question -> answer")
    program.demos = demos(3)
    configured = apply(program, {"shots": k}, [bind.demos("shots")])
    with dspy.context(lm=engine.lm()):
        configured(question="q")
    assert engine.history[-1].prompt.demos == min(k, 3)
    assert [d.question for d in configured.demos] == [f"q{i}" for i in range(min(k, 3))]
    assert len(program.demos) == 3


@pytest.mark.parametrize("adapter", ["chat", "json", "xml"])
async def test_adapter_for_the_whole_program_sync_and_async(engine: RecordingEngine, adapter: str) -> None:
    program = TwoStep()
    configured = apply(program, {"format": adapter}, [bind.adapter("format")])
    assert isinstance(configured, AdapterScope)
    # Transparent to DSPy: same predictor names and saved state as the unwrapped program.
    assert [n for n, _ in configured.named_predictors()] == ["draft", "review.predict"]
    assert configured.dump_state() == program.dump_state()
    with dspy.context(
        lm=engine.lm(), adapter=dspy.ChatAdapter() if adapter != "chat" else dspy.JSONAdapter()
    ):
        configured(question="q")
        await configured.acall(question="q")
    assert [c.prompt.format for c in engine.history] == [adapter] * 4


def test_adapter_on_a_sub_module_only(engine: RecordingEngine) -> None:
    configured = apply(TwoStep(), {"format": "xml"}, [bind.adapter("format", at="review")])
    with dspy.context(lm=engine.lm()):
        configured(question="q")
    assert [c.prompt.format for c in engine.history] == ["chat", "xml"]
    assert [n for n, _ in configured.named_predictors()] == ["draft", "review.predict"]


def test_adapter_on_a_predictor_keeps_its_name_and_state(engine: RecordingEngine) -> None:
    program = TwoStep()
    configured = apply(program, {"format": "json"}, [bind.adapter("format", at="draft")])
    assert isinstance(configured.draft, AdaptedPredict)
    assert configured.dump_state() == program.dump_state()
    with dspy.context(lm=engine.lm()):
        configured(question="q")
    assert [c.prompt.format for c in engine.history] == ["json", "chat"]

    class MyPredict(dspy.Predict):  # type: ignore[misc]
        pass

    program.draft = MyPredict("question -> answer")
    with pytest.raises(
        ConfigurationError, match=r"MyPredict is a Predict subclass; bind the adapter on the module"
    ):
        apply(program, {"format": "json"}, [bind.adapter("format", at="draft")])


def test_module_type_adds_reasoning_and_keeps_demos_and_config(engine: RecordingEngine) -> None:
    program = dspy.Predict("question -> answer", temperature=0.2)
    program.demos = demos(2)
    configured = apply(program, {"strategy": "chain_of_thought"}, [bind.module_type("strategy")])
    assert isinstance(configured, dspy.ChainOfThought)
    assert configured.predict.config == {"temperature": 0.2}
    assert len(configured.predict.demos) == 2
    with dspy.context(lm=engine.lm()):
        assert configured(question="q").reasoning
        program(question="q")
    assert [f.name for f in engine.history[0].prompt.output_fields] == ["reasoning", "answer"]
    assert [f.name for f in engine.history[1].prompt.output_fields] == ["answer"]
    back = apply(configured, {"strategy": "predict"}, [bind.module_type("strategy")])
    assert type(back) is dspy.Predict
    assert list(back.signature.output_fields) == ["answer"]


def test_module_type_of_a_sub_module_then_predictor_bindings_see_the_new_names() -> None:
    bindings = [bind.module_type("strategy", at="draft"), bind.temperature("t", predictors="draft.*")]
    configured = apply(TwoStep(), {"strategy": "chain_of_thought", "t": 0.5}, bindings)
    assert isinstance(configured.draft, dspy.ChainOfThought)
    assert configured.draft.predict.config == {"temperature": 0.5}


def test_attribute_by_path_and_its_errors() -> None:
    class Retriever(dspy.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.k = 3
            self.options = {"mode": "bm25"}

    program = Retriever()
    configured = apply(
        program,
        {"k": 7, "mode": "dense"},
        [bind.attribute("k", "k"), bind.attribute("mode", "options['mode']")],
    )
    assert (configured.k, configured.options, program.k, program.options) == (
        7,
        {"mode": "dense"},
        3,
        {"mode": "bm25"},
    )
    with pytest.raises(ConfigurationError, match=r"binding 'k' -> attribute at kk: .*did you mean 'k'"):
        apply(program, {"k": 1}, [bind.attribute("k", "kk")])
    with pytest.raises(ConfigurationError, match=r"does not parse"):
        bind.attribute("k", "steps[x]")


def test_lms_are_shared_and_the_original_is_untouched_by_every_kind() -> None:
    program = TwoStep()
    lm = dspy.LM("openai/gpt-4o-mini", temperature=0.0)  # saveable (dump_state), never called here
    program.draft.lm = lm
    program.draft.demos = demos(2)
    before = snapshot(program)
    bindings = [
        bind.temperature("t"),
        bind.instructions("style"),
        bind.demos("shots"),
        bind.adapter("format"),
        bind.module_type("strategy", at="review"),
    ]
    configuration = {"t": 1.0, "style": "Be brief.", "shots": 0, "format": "json", "strategy": "predict"}
    configured = apply(program, configuration, bindings)
    assert configured.module.draft.lm is lm
    assert snapshot(program) == before
    assert isinstance(program.review, dspy.ChainOfThought)


def test_inactive_variables_skip_and_unknown_ones_fail() -> None:
    bindings = Bindings([bind.temperature("t"), bind.demos("shots")])
    configured = apply(TwoStep(), {"t": 0.5}, bindings)  # "shots" is inactive: absent
    assert configured.draft.config == {"temperature": 0.5}
    with pytest.raises(
        ConfigurationError, match=r"configuration sets unknown variable 'shot'; did you mean 'shots'"
    ):
        apply(TwoStep(), {"shot": 1}, bindings)
    assert apply(TwoStep(), {"shot": 1}, bindings, strict=False).draft.config == {}


@pytest.mark.parametrize(
    ("binding", "value", "message"),
    [
        (bind.temperature("v"), "hot", r"expects a number >= 0"),
        (bind.max_tokens("v"), 0, r"expects an integer >= 1"),
        (bind.demos("v"), -1, r"expects a number of demos >= 0"),
        (bind.adapter("v"), "yaml", r"one of chat, json, xml"),
        (bind.module_type("v"), "chain_of_thougt", r"did you mean 'chain_of_thought'"),
        (bind.instructions("v"), 3, r"expects a string"),
        (
            bind.temperature("v", predictors=["drafts"]),
            0.1,
            r"unknown predictor 'drafts'; did you mean 'draft'",
        ),
        (bind.temperature("v", predictors="nothing*"), 0.1, r"no predictor matches 'nothing\*'"),
    ],
)
def test_bad_values_and_unknown_predictors_name_the_binding(
    binding: Binding, value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        apply(TwoStep(), {"v": value}, [binding])
    assert info.value.message.startswith("binding 'v' -> ")


def test_two_variables_on_one_target_conflict() -> None:
    bindings = [bind.temperature("a"), bind.temperature("b", predictors=["draft"])]
    with pytest.raises(ConfigurationError, match=r"both set draft"):
        apply(TwoStep(), {"a": 0.1, "b": 0.2}, bindings)
    with pytest.raises(ConfigurationError, match=r"listed twice"):
        Bindings([bind.demos("a"), bind.demos("a")])


def test_bindings_describe_themselves_as_json_and_are_hashable() -> None:
    bindings = Bindings(
        [
            bind.temperature("t", predictors=["draft", "review.predict"]),
            bind.parameter("k", at="steps[1]", name="k"),
            bind.adapter("format", at="steps[2]"),
        ]
    )
    data = bindings.to_json()
    assert data["bindings"][0] == {
        "variable": "t",
        "target": "lm_setting",
        "predictors": ["draft", "review.predict"],
        "setting": "temperature",
    }
    assert Bindings.from_json(data) == bindings
    assert hash(Bindings.from_json(data)) == hash(bindings)
    assert bindings.variables == ("t", "k", "format")
    assert bindings.for_variable("k") == (bind.parameter("k", at="steps[1]", name="k"),)
    with pytest.raises(SpecError, match=r"did you mean 'predictors'") as info:
        Bindings.from_json(
            {"version": 1, "bindings": [{"variable": "t", "target": "demos", "predictor": "*"}]}
        )
    assert info.value.path == "bindings[0].predictor"
    with pytest.raises(SpecError, match=r"unknown binding target 'temprature'"):
        Bindings.from_json({"version": 1, "bindings": [{"variable": "t", "target": "temprature"}]})
