"""What a program takes: its own ``forward``'s parameters, or its predictor's signature.

DSPy calls ``program(**inputs)``, so what a program accepts is what its ``forward`` (or ``aforward``)
declares. A module class of the user's that defines ``forward`` is checked against those parameters:
names, required or not, and annotations where present (pydantic, lax: ``{"messages": [...]}`` becomes a
``dspy.History`` for a ``history: dspy.History`` parameter, as JSON inputs need). DSPy's own modules
(Predict, ChainOfThought, ReAct...) take ``**kwargs`` and are checked against their signature instead.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from dspex.errors import FieldIssue, ValidationError
from dspex.modules._introspect import single_signature
from dspex.signatures._validate import validate_inputs

__all__ = ["ForwardParameters", "input_interface", "own_forward"]


@dataclass(frozen=True, slots=True)
class _Parameter:
    name: str
    required: bool
    adapter: pydantic.TypeAdapter[Any] | None  # None: no annotation (or one pydantic cannot check)
    expected: str
    annotation: Any = None


@dataclass(frozen=True, slots=True)
class ForwardParameters:
    """The parameters of a program's own ``forward``/``aforward``: the inputs a run is checked against."""

    owner: str  # "RAG.forward(question)", for messages
    parameters: tuple[_Parameter, ...]
    any_keyword: bool  # **kwargs: any further input is the program's to judge

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if p.required)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if not p.required)

    def check(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``inputs`` coerced to the annotations; ``ValidationError`` naming every field that is wrong."""
        issues: list[FieldIssue] = []
        values = dict(inputs)
        for parameter in self.parameters:
            if parameter.name not in inputs:
                if parameter.required:
                    issues.append(FieldIssue(parameter.name, "an input", "missing"))
                continue
            if parameter.adapter is None:
                continue
            value = inputs[parameter.name]
            try:
                values[parameter.name] = parameter.adapter.validate_python(value)
            except pydantic.ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = "".join(f"[{part!r}]" for part in first["loc"])
                problem = f"expected {parameter.expected}, got {type(value).__name__}"
                issues.append(
                    FieldIssue(parameter.name, parameter.expected, f"{problem}{where}: {first['msg']}")
                )
        if not self.any_keyword:
            known = {p.name for p in self.parameters}
            issues += [
                FieldIssue(name, f"one of {', '.join(sorted(known)) or 'no inputs'}", "unknown input")
                for name in inputs
                if name not in known
            ]
        if issues:
            raise ValidationError(
                f"inputs do not match {self.owner}: " + "; ".join(f"{i.field}: {i.message}" for i in issues),
                issues=tuple(issues),
            )
        return values


def own_forward(cls: type) -> Any:
    """The ``forward``/``aforward`` a user's module class defines itself, or None for DSPy's own modules
    (Predict, ChainOfThought...: their ``forward(**kwargs)`` takes their signature's inputs)."""
    import dspy

    for klass in cls.__mro__:
        if klass is dspy.Module or klass.__module__.split(".")[0] == "dspy":
            return None
        for name in ("forward", "aforward"):
            if name in vars(klass):
                return vars(klass)[name]
    return None


def _adapter(annotation: Any) -> tuple[pydantic.TypeAdapter[Any] | None, str]:
    """A checker for an annotation, or None when there is none or pydantic cannot build one (a class of
    the user's that is not a model: the program judges such values, as in bare DSPy)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None, "any value"
    from dspex.signatures._types import describe_type

    try:
        expected = describe_type(annotation)
    except (TypeError, ValueError):
        expected = getattr(annotation, "__name__", repr(annotation))
    try:
        return pydantic.TypeAdapter(annotation), expected
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError):
        return None, expected


def forward_parameters(program: Any, forward: Any) -> ForwardParameters | None:
    """``forward``'s parameters (without ``self``), or None when inspect cannot read them or they take
    ``*args`` (the program then judges its inputs itself)."""
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    try:  # string annotations (from __future__ import annotations) resolved in the module's globals
        hints = typing.get_type_hints(forward)
    except (NameError, TypeError, AttributeError):  # a name the module cannot resolve (TYPE_CHECKING)
        # Those parameters go unchecked; annotations that are real objects are still used.
        hints = {p.name: p.annotation for p in parameters if not isinstance(p.annotation, str)}
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    checked = []
    for p in named:
        annotation = hints.get(p.name, inspect.Parameter.empty)
        adapter, expected = _adapter(annotation)
        checked.append(_Parameter(p.name, p.default is p.empty, adapter, expected, annotation))
    return ForwardParameters(
        owner=f"{type(program).__name__}.{forward.__name__}({', '.join(p.name for p in named)})",
        parameters=tuple(checked),
        any_keyword=any(p.kind is p.VAR_KEYWORD for p in parameters),
    )


# program -> what it takes. Inspecting a program on every run would be O(its size), and programs are
# long-lived, so it is looked up once. Weak: programs come and go.
_interfaces: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# The programs of the latest runs, by id (each entry holds its program, so an id cannot be reused while
# cached; few, so a process that makes a program per run keeps at most _RECENT of them alive): a plain
# dict lookup instead of the weak dictionary's, which builds a weakref per run.
_RECENT = 32
_recent: dict[int, tuple[Any, Any]] = {}


def _remember(program: Any, interface: Any) -> None:
    if len(_recent) >= _RECENT:
        _recent.clear()
    _recent[id(program)] = (program, interface)


_by_class: weakref.WeakKeyDictionary[type, ForwardParameters | None] = weakref.WeakKeyDictionary()


def input_interface(program: Any) -> Any:
    """What ``program``'s inputs are checked against: :class:`ForwardParameters` for a user module with its
    own ``forward``, a signature class for DSPy's modules (or a module with one predictor and no forward of
    its own), or None when there is nothing unambiguous to check."""
    hit = _recent.get(id(program))
    if hit is not None and hit[0] is program:  # the same program as a recent run: no weakref made
        return hit[1]
    try:
        interface = _interfaces[program]
    except (KeyError, TypeError):
        pass
    else:
        _remember(program, interface)
        return interface
    cls = type(program)
    forward = own_forward(cls)
    if forward is not None:  # a class's forward is the same for every instance (and copy) of it
        try:
            interface = _by_class[cls]
        except KeyError:
            interface = _by_class[cls] = forward_parameters(program, forward)
        _remember(program, interface)
        return interface
    interface = single_signature(program)
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced is just not cached
        _interfaces[program] = interface
        _remember(program, interface)
    return interface


def check_inputs(interface: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` checked (and coerced) against an :func:`input_interface`."""
    if interface is None:
        return dict(inputs)
    if isinstance(interface, ForwardParameters):
        return interface.check(inputs)
    return validate_inputs(interface, inputs)
