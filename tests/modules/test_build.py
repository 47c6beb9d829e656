"""build_module from Python: option checking, signatures, tools, wrapped modules and interpreters."""

from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from typing import Any

import dspy
import pytest
from modules_sample_tools import add

from dspex.errors import ConfigurationError, SignatureError, SpecError
from dspex.modules import ToolRegistry, build_module, catalog, module_entry
from dspex.modules._signature import _to_signature


def test_unknown_option_names_the_valid_ones_with_a_hint() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_module("react", "question -> answer", max_iter=3)
    assert (
        str(info.value)
        == "unknown react option 'max_iter'; did you mean 'max_iters'? valid: max_iters, tools"
    )


def test_unknown_module_name() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean 'chain_of_thought'\?"):
        build_module("chain_of_thougt", "question -> answer")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("react", {"max_iters": "3"}, "react option 'max_iters' expects int, got '3' (str)"),
        ("react", {"max_iters": True}, "react option 'max_iters' expects int, got True (bool)"),
        (
            "predict",
            {"temperature": "hot"},
            "predict option 'temperature' expects float | None, got 'hot' (str)",
        ),
        (
            "rlm",
            {"interpreter": "docker"},
            "rlm option 'interpreter' expects 'sandbox' | 'local', got 'docker'",
        ),
        ("react", {"tools": "add"}, "react option 'tools' expects list[str | callable], got 'add' (str)"),
        ("predict", {"config": {1: 2}}, "predict option 'config' expects dict[str, any value] | None"),
    ],
)
def test_bad_option_type_names_option_expected_type_and_value(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_module(name, "question -> answer", **options)
    assert str(info.value).startswith(message)


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert build_module("predict", "question -> answer", temperature=1).config == {"temperature": 1}


def test_missing_required_option() -> None:
    with pytest.raises(ConfigurationError, match=r"best_of_n needs option 'N' \(int\)"):
        build_module("best_of_n", "q -> a", module="predict", reward_fn=len, threshold=1.0)


def test_signature_required_and_refused_where_it_makes_no_sense() -> None:
    with pytest.raises(ConfigurationError, match="module 'predict' needs a signature"):
        build_module("predict")
    with pytest.raises(ConfigurationError, match="module 'parallel' takes no signature"):
        build_module("parallel", "question -> answer")


def test_bad_signature_string_raises_signature_error() -> None:
    # The message is the parser's (DSPy's today, dspex.signatures' once it exports `signature`).
    with pytest.raises(SignatureError):
        build_module("predict", "question answer")


def test_signatures_go_through_dspex_signatures_when_it_exports_a_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []

    def signature(spec: str) -> Any:
        parsed.append(spec)
        return dspy.Signature(spec, "Parsed by dspex.")

    monkeypatch.setitem(sys.modules, "dspex.signatures", types.SimpleNamespace(signature=signature))
    module = build_module("predict", "question -> answer")
    assert parsed == ["question -> answer"]
    assert module.signature.instructions == "Parsed by dspex."
    monkeypatch.setitem(sys.modules, "dspex.signatures", None)  # not importable: DSPy's parser is used
    assert _to_signature("q -> a").input_fields.keys() == {"q"}


def test_signature_class_is_accepted() -> None:
    class QA(dspy.Signature):  # type: ignore[misc]  # dspy is untyped, so its base class is Any
        """Answer briefly."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    module = build_module("chain_of_thought", QA)
    assert module.predict.signature.instructions == "Answer briefly."
    assert _to_signature(QA) is QA


def test_lm_config_cannot_repeat_an_option() -> None:
    with pytest.raises(ConfigurationError, match="set 'temperature' as the predict option 'temperature'"):
        build_module("predict", "q -> a", config={"temperature": 0.1})


def test_dspy_rejections_become_configuration_errors() -> None:
    # ReActV2 reserves the output name 'history'; DSPy raises ValueError, we say which module and why.
    with pytest.raises(ConfigurationError, match=r"dspy.ReActV2 rejected the react_v2 options: .*history"):
        build_module("react_v2", "question -> history")


def test_tools_from_callables_and_dspy_tools_without_a_registry() -> None:
    module = build_module("react", "question -> answer", tools=[add, dspy.Tool(str.upper, name="upper")])
    assert set(module.tools) == {"add", "upper", "finish"}


def test_registered_name_becomes_the_tool_name() -> None:
    registry = ToolRegistry({"plus": add})
    module = build_module("react", "question -> answer", registry=registry, tools=["plus"])
    assert module.tools["plus"].func is add


def test_duplicate_tool_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tool 'add' is listed twice"):
        build_module("react", "q -> a", tools=[add, "modules_sample_tools:add"])


def test_unknown_tool_lists_registered_names(registry: ToolRegistry) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_module("react", "q -> a", registry=registry, tools=["ad"])
    assert str(info.value).startswith("unknown tool 'ad'; did you mean 'add'? valid: add, one_if_good, shout")


def test_tool_by_import_path() -> None:
    module = build_module("react", "question -> answer", tools=["modules_sample_tools:shout"])
    assert module.tools["shout"](text="hi") == "HI"


def test_code_act_tools_must_be_named_after_their_function() -> None:
    registry = ToolRegistry({"plus": add})
    with pytest.raises(ConfigurationError, match="must be registered under its function name 'add'"):
        build_module("code_act", "q -> a", registry=registry, tools=["plus"])
    with pytest.raises(ConfigurationError, match="must be plain functions"):
        build_module("code_act", "q -> a", tools=[lambda x: x])


CODE_MODULES = ["code_act", "flex", "program_of_thought", "rlm"]


def test_code_modules_are_the_ones_with_an_interpreter_option() -> None:
    assert sorted(e.name for e in catalog().values() if e.executes_code) == CODE_MODULES


@pytest.mark.parametrize("name", CODE_MODULES)
def test_code_runs_in_the_sandbox_unless_local_is_chosen(name: str) -> None:
    deprecated = module_entry(name).stability == "deprecated"
    with pytest.warns(DeprecationWarning, match="deprecated") if deprecated else nullcontext():
        default = build_module(name, "question -> answer")
        local = build_module(name, "question -> answer", interpreter="local")
    # DSPy keeps the factory it was given here and creates one interpreter per call from it.
    assert default._interpreter_factory is dspy.PythonInterpreter
    assert local._interpreter_factory is dspy.LocalInterpreter


@pytest.mark.parametrize("legacy", ["interpreter_factory", "allow_local_interpreter"])
def test_the_local_opt_in_is_only_the_interpreter_option(legacy: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown rlm option"):
        build_module("rlm", "question -> answer", **{legacy: dspy.LocalInterpreter})


def test_wrapped_module_from_a_nested_spec_inherits_the_signature() -> None:
    module = build_module(
        "best_of_n",
        "question -> answer",
        module={"module": "chain_of_thought"},
        N=2,
        reward_fn=len,
        threshold=1,
    )
    assert isinstance(module.module, dspy.ChainOfThought)
    assert list(module.module.predict.signature.output_fields) == ["reasoning", "answer"]


def test_wrapped_module_errors_report_the_nested_path() -> None:
    with pytest.raises(SpecError) as info:
        build_module(
            "refine",
            "q -> a",
            module={"module": "react", "options": {"max_iters": "2"}},
            N=2,
            reward_fn=len,
            threshold=1.0,
        )
    assert info.value.path == "module.options.max_iters"


def test_wrapping_a_built_module_and_refusing_an_unused_signature() -> None:
    inner = dspy.Predict("question -> answer")
    assert build_module("best_of_n", module=inner, N=2, reward_fn=len, threshold=1.0).module is inner
    with pytest.raises(ConfigurationError, match="both a signature and a built module"):
        build_module("best_of_n", "q -> a", module=inner, N=2, reward_fn=len, threshold=1.0)


def test_wrapper_refuses_a_non_module_inner() -> None:
    with pytest.raises(ConfigurationError, match=r"best_of_n wraps a dspy\.Module; Parallel is not one"):
        build_module("best_of_n", module="parallel", N=2, reward_fn=len, threshold=1.0)


def test_reward_function_by_import_path() -> None:
    module = build_module(
        "best_of_n",
        "q -> a",
        module="predict",
        N=2,
        reward_fn="modules_sample_tools:one_if_good",
        threshold=1.0,
    )
    assert module.reward_fn({}, dspy.Prediction(answer="good")) == 1.0


def test_refine_needs_a_reward_function_with_source() -> None:
    # Refine shows the reward function's source code to the LM, so a builtin cannot be used.
    with pytest.raises(ConfigurationError, match=r"dspy\.Refine rejected the refine options"):
        build_module("refine", "q -> a", module="predict", N=2, reward_fn=len, threshold=1.0)
