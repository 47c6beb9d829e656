"""Load a YAML spec together with the line of every value, so spec errors can point at a line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from dspex.errors import SpecError

__all__ = ["load_yaml", "nearest_line"]


def nearest_line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path`` in a spec's line map; a missing key has none, so its nearest parent's."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = _child(path, str(key_node.value))
                # The key's line: for a nested block the value starts on the next line.
                lines[child] = key_node.start_mark.line + 1
                _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = _child(path, i)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines)


def load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """The document and a map from paths (``options.tools[1]``) to 1-based line numbers.

    >>> load_yaml("module: react\\noptions:\\n  max_iters: 3\\n")[1]
    {'': 1, 'module': 1, 'options': 2, 'options.max_iters': 3}
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise SpecError(f"invalid YAML: {problem}", line=mark.line + 1 if mark else None) from e
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}") from e
    lines: dict[str, int] = {}
    if node is not None:
        lines[""] = node.start_mark.line + 1
        _walk(node, "", lines)
    return data, lines
