"""ToolRegistry: registering, resolving names and import paths, and making dspy.Tool objects."""

from __future__ import annotations

import os.path

import dspy
import pytest
from modules_sample_tools import add, shout

from dspex.errors import ConfigurationError
from dspex.modules import ToolRegistry


def test_register_by_decorator_with_and_without_a_name() -> None:
    registry = ToolRegistry()

    @registry.register
    def lookup(key: str) -> str:
        return key

    @registry.register(name="find")
    def search(query: str) -> str:
        return query

    assert registry.names() == ("find", "lookup")
    assert registry.resolve("lookup") is lookup
    assert registry.resolve("find") is search
    assert "find" in registry
    assert "search" not in registry
    assert (len(registry), list(registry)) == (2, ["find", "lookup"])


def test_add_returns_the_function_and_builds_from_a_mapping() -> None:
    registry = ToolRegistry({"plus": add})
    assert registry.add(shout) is shout
    assert registry.names() == ("plus", "shout")
    registry.add(shout)  # the same function again is a no-op
    with pytest.raises(ConfigurationError, match="'shout' is already registered to another function"):
        registry.add(add, name="shout")


@pytest.mark.parametrize(("fn", "name"), [(lambda: 1, None), (add, "two words"), (add, "")])
def test_tool_names_must_be_identifiers(fn: object, name: str | None) -> None:
    with pytest.raises(ConfigurationError, match="tool name must be a Python identifier"):
        ToolRegistry().add(fn, name=name)  # type: ignore[type-var]  # bad names come with any callable


def test_non_callables_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="a tool must be callable, got 42"):
        ToolRegistry().add(42, name="answer")  # type: ignore[type-var]  # the point of the test


def test_unknown_name_has_a_hint_and_mentions_import_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        ToolRegistry([add, shout]).resolve("shot")
    assert str(info.value) == (
        "unknown tool 'shot'; did you mean 'shout'? valid: add, shout (or an import path 'package.module:function')"
    )


def test_import_paths() -> None:
    registry = ToolRegistry()
    assert registry.resolve("os.path:join") is os.path.join
    assert registry.resolve("modules_sample_tools:add") is add
    assert registry.resolve("dspy:Predict.forward") is dspy.Predict.forward


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("modules_sample_tools:nope", "'modules_sample_tools' has no attribute 'nope'"),
        ("modules_sample_tools:NOT_CALLABLE", "is not callable: int"),
        ("modules_sample_tools:", "must look like 'package.module:function'"),
    ],
)
def test_import_path_errors(ref: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ToolRegistry().resolve(ref, what="function")


def test_tool_objects_keep_registered_names() -> None:
    registry = ToolRegistry({"plus": add})
    plus = registry.tool("plus")
    assert isinstance(plus, dspy.Tool)
    assert (plus.name, plus(a=1, b=2)) == ("plus", 3)
    assert registry.tool("modules_sample_tools:shout").name == "shout"
    assert registry.tool(shout).name == "shout"
    existing = dspy.Tool(add, name="adder")
    assert registry.tool(existing) is existing
    with pytest.raises(ConfigurationError, match="a tool is a name, an import path or a callable"):
        registry.tool(3)  # type: ignore[arg-type]  # the point of the test
