"""pipeline_from_spec errors: each names the path of the offending value and, for text, its line."""

from __future__ import annotations

import pickle
import textwrap

import pytest

from dspex.errors import SpecError
from dspex.modules import ToolRegistry
from dspex.pipeline.spec import pipeline_from_spec

FN = "pipeline_spec_sample"


def _error(text: str, registry: ToolRegistry | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        pipeline_from_spec(textwrap.dedent(text).lstrip(), registry=registry)
    return info.value


CASES = [
    pytest.param(
        """
        name: p
        step:
          - {name: a, module: predict, signature: "q -> a"}
        """,
        "step",
        2,
        "unknown pipeline key 'step'; did you mean 'steps'?",
        id="unknown-top-level-key",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            module: predict
            function: {FN}:count
            outputs: n
        """,
        "steps[0]",
        2,
        "either 'module' (a catalog module) or 'function' (an import path), not both",
        id="module-and-function",
    ),
    pytest.param(
        """
        steps:
          - name: a
            signature: "q -> a"
        """,
        "steps[0]",
        2,
        "a step needs 'module' (a catalog module) or 'function'",
        id="neither-module-nor-function",
    ),
    pytest.param(
        """
        steps:
          - name: a
            modul: predict
        """,
        "steps[0].modul",
        3,
        "unknown step key 'modul'; did you mean 'module'?",
        id="misspelt-step-key",
    ),
    pytest.param(
        """
        steps:
          - {name: a, module: predict, signature: "q -> a", retries: 3}
        """,
        "steps[0].retries",
        2,
        "unknown module step key 'retries'; did you mean 'retry'?",
        id="unknown-module-step-key",
    ),
    pytest.param(
        """
        steps:
          - name: a
            function: no_such_module_xyz:fn
            outputs: x
        """,
        "steps[0].function",
        3,
        "cannot import module 'no_such_module_xyz'",
        id="import-path-module-not-found",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:no_such_fn
            outputs: x
        """,
        "steps[0].function",
        3,
        f"'{FN}' has no attribute 'no_such_fn'",
        id="import-path-attribute-not-found",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:NOT_CALLABLE
            outputs: x
        """,
        "steps[0].function",
        3,
        "is not callable: int",
        id="import-path-not-callable",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:count
        """,
        "steps[0]",
        2,
        "a function step must declare what it returns",
        id="function-without-outputs",
    ),
    pytest.param(
        """
        steps:
          - name: a
            module: predict
            signature: "q -> a"
            options:
              temperatur: 0.3
        """,
        "steps[0].options.temperatur",
        6,
        "unknown predict option 'temperatur'; did you mean 'temperature'?",
        id="module-option-typo",
    ),
    pytest.param(
        """
        steps:
          - name: a
            module: predict
            signature: "q -> -> a"
        """,
        "steps[0].signature",
        4,
        "",
        id="bad-signature",
    ),
    pytest.param(
        """
        steps:
          - {name: a, module: chain_of_thougt, signature: "q -> a"}
        """,
        "steps[0].module",
        2,
        "did you mean 'chain_of_thought'?",
        id="unknown-catalog-module",
    ),
    pytest.param(
        f"""
        steps:
          - {{name: parse, function: "{FN}:parse_query", outputs: [query, keywords]}}
          - parallel:
              name: retrieve
              branches:
                - {{name: bm25, function: "{FN}:bm25", outputs: passages}}
                - name: kw
                  function: {FN}:nope
                  outputs: passages
        """,
        "steps[1].parallel.branches[1].function",
        8,
        "has no attribute 'nope'",
        id="bad-function-in-a-parallel-branch",
    ),
    pytest.param(
        f"""
        steps:
          - parallel:
              name: retrieve
              branches:
                - {{name: bm25, function: "{FN}:bm25", outputs: passages}}
                - {{name: kw, function: "{FN}:keywords", outputs: passages}}
        """,
        "steps[0].parallel",
        2,
        "branches ['bm25', 'kw'] all write 'passages'",
        id="merge-conflict",
    ),
    pytest.param(
        f"""
        steps:
          - parallel:
              branches:
                - {{name: bm25, function: "{FN}:bm25", outputs: passages}}
                - {{name: kw, function: "{FN}:keywords", outputs: passages}}
              merge:
                passages: concatenate
        """,
        "steps[0].parallel.merge.passages",
        7,
        "unknown merge rule 'concatenate'; did you mean 'concat'?",
        id="unknown-merge-rule",
    ),
    pytest.param(
        f"""
        inputs: [text]
        steps:
          - {{name: parse, function: "{FN}:parse_query", outputs: [query, keywords]}}
          - name: answer
            module: predict
            signature: "query, context -> answer"
        """,
        "steps[1]",
        4,
        "step 'answer' reads 'context', which is neither a pipeline input nor written by an earlier step",
        id="reads-a-field-nobody-writes",
    ),
    pytest.param(
        f"""
        steps:
          - {{name: a, function: "{FN}:count", outputs: n}}
          - name: a
            function: {FN}:shout
            outputs: loud
        """,
        "steps[1].name",
        3,
        "step name 'a' is already used by steps[0]",
        id="duplicate-step-names",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:count
            outputs: n
            retry:
              attempts: 0
        """,
        "steps[0].retry.attempts",
        6,
        "RetryPolicy.attempts must be >= 1",
        id="retry-attempts",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:count
            outputs: n
            retry:
              retry_on: [TimeoutError, "{FN}:count"]
        """,
        "steps[0].retry.retry_on[1]",
        6,
        "is not an exception class",
        id="retry-on-not-an-exception",
    ),
    pytest.param(
        f"""
        steps:
          - name: a
            function: {FN}:count
            inputs: {{passagez: items}}
            outputs: n
        """,
        "steps[0].inputs.passagez",
        4,
        "names no input of the step",
        id="rename-of-an-unknown-input",
    ),
    pytest.param(
        f"""
        steps:
          - map:
              over: passages
              item: text
              step: {{name: loud, function: "{FN}:shout", outputs: loud}}
        """,
        "steps[0].map.item",
        4,
        "does not read the item field 'text'",
        id="map-item-not-read",
    ),
    pytest.param(
        f"""
        steps:
          - when:
              condition: "{FN}:is_long"
              then: {{name: n, function: "{FN}:count", outputs: n}}
        """,
        "steps[0].when.condition",
        3,
        "for a predicate write condition: {function:",
        id="condition-import-path-as-a-string",
    ),
    pytest.param(
        f"""
        steps:
          - map:
              over: passages
              step: {{name: loud, function: "{FN}:shout", inputs: {{passage: item}}, outputs: loud}}
            timeout: 3
        """,
        "steps[0].timeout",
        5,
        "a map step holds all its keys under 'map:'; move 'timeout' there",
        id="key-beside-a-construct",
    ),
    pytest.param(
        """
        steps:
          - name: a
            module: predict
            signature: "q -> a"
            timeout: soon
        """,
        "steps[0].timeout",
        5,
        "expected a number, got a string 'soon'",
        id="timeout-not-a-number",
    ),
    pytest.param(
        """
        steps: []
        """,
        "steps",
        1,
        "'steps' is a non-empty list of steps",
        id="no-steps",
    ),
]


@pytest.mark.parametrize(("text", "path", "line", "message"), CASES)
def test_error_names_path_and_line(text: str, path: str, line: int, message: str) -> None:
    error = _error(text)
    assert (error.path, error.line) == (path, line), str(error)
    assert message in error.message
    assert f"at {path} (line {line})" in str(error)


def test_mapping_specs_report_paths_without_lines() -> None:
    with pytest.raises(SpecError) as info:
        pipeline_from_spec({"steps": [{"name": "a", "function": f"{FN}:count"}, {"nme": "b"}]})
    assert (info.value.path, info.value.line) == ("steps[0]", None)


def test_invalid_yaml_and_json_point_at_the_line() -> None:
    with pytest.raises(SpecError) as info:
        pipeline_from_spec("name: p\nsteps:\n  - {name: a\n  - b\n")
    assert info.value.line is not None
    assert "invalid YAML" in info.value.message
    with pytest.raises(SpecError) as info:
        pipeline_from_spec('{\n  "name": "p",\n  "steps": [\n    {"name": "a",}\n  ]\n}')
    assert (info.value.line, info.value.message.split(":")[0]) == (4, "invalid JSON")


def test_json_specs_carry_lines_too() -> None:
    text = '{\n  "steps": [\n    {"name": "a",\n     "modul": "predict"}\n  ]\n}'
    error = _error(text)
    assert (error.path, error.line) == ("steps[0].modul", 4)


def test_registry_without_import_paths_refuses_them() -> None:
    error = _error(
        f"""
        steps:
          - {{name: a, function: "{FN}:count", outputs: n}}
        """,
        registry=ToolRegistry(allow_import_paths=False),
    )
    assert (error.path, error.line) == ("steps[0].function", 2)
    assert "does not allow import paths" in error.message


def test_spec_errors_survive_pickling() -> None:
    error = _error("steps:\n  - {name: a, modul: predict}\n")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.line, again.message) == (error.path, error.line, error.message)
