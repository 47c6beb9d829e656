"""Read a DSPy-formatted chat back into fields, and write answers the way DSPy's adapters parse them.

Both offline LMs (the scripted engine and the simulated OpenAI-compatible server) receive exactly what a
real provider receives: a system message describing the input and output fields, optional few-shot demo
turns, and a last user message holding the input values. This module recovers the field names, types and
input values from that text, so the fakes can answer per output field, in the adapter's own format
(ChatAdapter ``[[ ## field ## ]]`` markers, JSONAdapter objects, XMLAdapter tags).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Field",
    "Prompt",
    "PromptFormat",
    "default_value",
    "literal_options",
    "read_chat_messages",
    "read_prompt",
    "render_answer",
]

PromptFormat = Literal["chat", "json", "xml"]

# "1. `question` (str): description" -- the type may contain brackets and quotes, never "):".
_FIELD_LINE = re.compile(r"^\d+\. `(?P<name>\w+)` \((?P<type>.*?)\)(?::|$)", re.MULTILINE)
_CHAT_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]\n?")


@dataclass(frozen=True, slots=True)
class Field:
    """A field as the prompt describes it: its name and the type text DSPy printed."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a DSPy request asks for."""

    input_fields: tuple[Field, ...]
    output_fields: tuple[Field, ...]
    inputs: dict[str, Any]
    format: PromptFormat
    demos: int = 0
    instructions: str = ""
    text: str = field(default="", repr=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.output_fields)


def _section(system: str, start: str, end: str) -> str:
    i = system.find(start)
    if i < 0:
        return ""
    j = system.find(end, i + len(start))
    return system[i + len(start) : j if j >= 0 else len(system)]


def _fields(section: str) -> tuple[Field, ...]:
    return tuple(Field(m["name"], m["type"]) for m in _FIELD_LINE.finditer(section))


def _decode(raw: str, type_text: str) -> Any:
    raw = raw.strip()
    if type_text == "str":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _chat_values(text: str, names: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    # Only input markers: DSPy's closing instruction names the output markers too.
    markers = [m for m in _CHAT_MARKER.finditer(text) if m.group(1) in names]
    for k, m in enumerate(markers):
        end = markers[k + 1].start() if k + 1 < len(markers) else len(text)
        values[m.group(1)] = text[m.end() : end]
    if markers:
        # DSPy closes the last user turn with an instruction ("Respond with ...") after the last field.
        last = markers[-1].group(1)
        cut = values[last].rfind("\n\nRespond with")
        if cut >= 0:
            values[last] = values[last][:cut]
    return values


def _xml_values(text: str, names: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in names:
        m = re.search(rf"<{name}>\n?(.*?)\n?</{name}>", text, re.DOTALL)
        if m:
            values[name] = m.group(1)
    return values


def read_prompt(system: str, messages: Sequence[tuple[str, str]]) -> Prompt:
    """Recover fields, inputs and format from a DSPy request's system text and (role, text) turns."""
    inputs_section = _section(system, "Your input fields are:", "Your output fields are:")
    outputs_section = _section(system, "Your output fields are:", "All interactions will be structured")
    input_fields = _fields(inputs_section)
    output_fields = _fields(outputs_section)
    fmt: PromptFormat = "chat"
    if "Outputs will be a JSON object" in system:
        fmt = "json"
    elif output_fields and f"<{output_fields[0].name}>" in system:
        fmt = "xml"
    last_user = next((text for role, text in reversed(messages) if role == "user"), "")
    names = [f.name for f in input_fields]
    raw = _xml_values(last_user, names) if fmt == "xml" else _chat_values(last_user, names)
    types = {f.name: f.type for f in input_fields}
    inputs = {name: _decode(raw[name], types[name]) for name in names if name in raw}
    demos = sum(1 for role, _ in messages if role == "assistant")
    instructions = _section(system, "your objective is:", "\x00").strip()
    text = "\n".join(str(v) for v in inputs.values())
    return Prompt(input_fields, output_fields, inputs, fmt, demos, instructions, text)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text parts carry DSPy's fields
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def read_chat_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """Split OpenAI chat messages into the system text and the (role, text) user/assistant turns.

    >>> read_chat_messages([{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "Q"}]}])
    ('S', [('user', 'Q')])
    """
    system = "\n".join(
        _content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    turns = [
        (str(m["role"]), _content_text(m.get("content")))
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]
    return system, turns


def literal_options(f: Field) -> list[str]:
    """The options of a ``Literal[...]`` field as DSPy printed its type (empty for other types)."""
    if not f.type.startswith("Literal["):
        return []
    options = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", f.type)
    return [a or b for a, b in options]


def default_value(f: Field) -> Any:
    """A plausible value of the field's type, for fields a script does not cover."""
    t = f.type
    if f.name == "reasoning":
        return "Let me think step by step."
    if t.startswith("Literal["):
        values = literal_options(f)
        # ReAct lists its tools as a Literal; finishing is the safe default for a scripted run.
        return "finish" if "finish" in values else (values[0] if values else "")
    base = t.split("[", 1)[0]
    return {
        "int": 0,
        "float": 0.0,
        "bool": False,
        "list": [],
        "dict": {},
        "tuple": [],
        "set": [],
    }.get(base, "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render_answer(prompt: Prompt, values: Mapping[str, Any]) -> str:
    """Write output values in the format the request's adapter parses."""
    names = prompt.output_names
    if prompt.format == "json":
        return json.dumps({name: values[name] for name in names})
    if prompt.format == "xml":
        return "\n".join(f"<{name}>\n{_text(values[name])}\n</{name}>" for name in names)
    body = "".join(f"[[ ## {name} ## ]]\n{_text(values[name])}\n\n" for name in names)
    return body + "[[ ## completed ## ]]"
