"""module_from_spec: dict and YAML specs, and errors that point at the path and line."""

from __future__ import annotations

import pickle
import textwrap

import dspy
import pytest

from dspex.errors import SpecError
from dspex.modules import ToolRegistry, module_from_spec
from dspex.testing.engine import ScriptedEngine


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def test_dict_spec_builds_and_runs() -> None:
    module = module_from_spec(
        {"module": "chain_of_thought", "signature": "question -> answer", "options": {"temperature": 0.5}}
    )
    assert isinstance(module, dspy.ChainOfThought)
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"][::-1]})
    with dspy.context(lm=engine.lm()):
        assert module(question="abc").answer == "cba"


def test_yaml_spec_with_registered_and_imported_tools(registry: ToolRegistry) -> None:
    module = module_from_spec(
        _yaml("""
            module: react
            signature: "question -> answer"
            options:
              tools:
                - add
                - modules_sample_tools:shout
              max_iters: 4
            """),
        registry=registry,
    )
    assert isinstance(module, dspy.ReAct)
    assert (module.max_iters, set(module.tools)) == (4, {"add", "shout", "finish"})


def test_nested_yaml_spec_for_a_wrapper(registry: ToolRegistry) -> None:
    module = module_from_spec(
        _yaml("""
            module: refine
            signature: question -> answer
            options:
              module:
                module: chain_of_thought
                options: {max_tokens: 100}
              N: 2
              reward_fn: modules_sample_tools:one_if_good
              threshold: 1.0
            """),
    )
    assert isinstance(module, dspy.Refine)
    assert module.module.predict.config == {"max_tokens": 100}


def test_empty_options_in_yaml_mean_none() -> None:
    assert isinstance(module_from_spec("module: predict\nsignature: q -> a\noptions:\n"), dspy.Predict)


def _spec_error(spec: object, registry: ToolRegistry | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        module_from_spec(spec, registry=registry)  # type: ignore[arg-type]  # some tests pass bad specs
    return info.value


def test_unknown_module_name_in_yaml_points_at_the_line() -> None:
    error = _spec_error("signature: q -> a\nmodule: chain_of_thougt\n")
    assert (error.path, error.line) == ("module", 2)
    assert "did you mean 'chain_of_thought'?" in error.message


def test_unknown_option_in_yaml() -> None:
    error = _spec_error(
        _yaml("""
            module: react
            signature: question -> answer
            options:
              tools: []
              max_iter: 3
            """)
    )
    assert (error.path, error.line) == ("options.max_iter", 5)
    assert str(error) == (
        "unknown react option 'max_iter'; did you mean 'max_iters'? valid: max_iters, tools "
        "at options.max_iter (line 5)"
    )


def test_bad_option_type_in_yaml() -> None:
    error = _spec_error("module: react\nsignature: q -> a\noptions:\n  max_iters: three\n")
    assert (error.path, error.line) == ("options.max_iters", 4)
    assert error.message == "react option 'max_iters' expects int, got 'three' (str)"


def test_nested_error_path_and_line() -> None:
    error = _spec_error(
        _yaml("""
            module: best_of_n
            signature: q -> a
            options:
              N: 2
              threshold: 1.0
              reward_fn: len
              module:
                module: predict
                options:
                  temprature: 0.3
            """),
        registry=ToolRegistry({"len": len}),
    )
    assert (error.path, error.line) == ("options.module.options.temprature", 10)
    assert "did you mean 'temperature'?" in error.message


def test_unknown_tool_points_at_the_list_item(registry: ToolRegistry) -> None:
    error = _spec_error(
        "module: react\nsignature: q -> a\noptions:\n  tools:\n    - add\n    - shot\n", registry
    )
    assert (error.path, error.line) == ("options.tools[1]", 6)
    assert error.message.startswith("unknown tool 'shot'; did you mean 'shout'?")


def test_import_paths_can_be_turned_off() -> None:
    error = _spec_error(
        {"module": "react", "signature": "q -> a", "options": {"tools": ["modules_sample_tools:add"]}},
        ToolRegistry(allow_import_paths=False),
    )
    assert error.path == "options.tools[0]"
    assert "does not allow import paths" in error.message


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("module: predict\n  signature: q -> a\noptions: {}\n", 2, "mapping values are not allowed here"),
        ("module: predict\nsignature: [q -> a\noptions: {}\n", 3, "expected ',' or ']', but got ':'"),
    ],
)
def test_yaml_syntax_error_has_a_line(text: str, line: int, problem: str) -> None:
    error = _spec_error(text)
    assert error.line == line
    assert error.path is None
    assert error.message.startswith("invalid YAML:")
    assert problem in error.message


def test_missing_required_option_points_at_options() -> None:
    error = _spec_error("module: best_of_n\nsignature: q -> a\noptions:\n  N: 2\n")
    assert (error.path, error.line) == ("options", 3)
    assert error.message.startswith("best_of_n needs option 'module'")


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"modul": "predict"}, "modul", "unknown module spec key 'modul'; did you mean 'module'?"),
        ({"signature": "q -> a"}, None, "a module spec needs 'module'"),
        ({"module": 3}, "module", "'module' is a catalog name, got 3 (int)"),
        ({"module": "predict", "signature": "q -> a", "options": [1]}, "options", "options is a mapping"),
        (["module", "predict"], None, "a module spec is a mapping with keys module, signature, options"),
    ],
)
def test_malformed_specs(spec: object, path: str | None, message: str) -> None:
    error = _spec_error(spec)
    assert error.path == path
    assert error.message.startswith(message)


def test_bad_signature_in_yaml_points_at_its_line() -> None:
    error = _spec_error("module: predict\nsignature: q a\n")
    assert (error.path, error.line) == ("signature", 2)
    assert error.message


def test_spec_errors_survive_pickling() -> None:
    error = _spec_error("module: predict\nsignature: q -> a\noptions:\n  n: 2\n")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.line) == (str(error), "options.n", 4)
