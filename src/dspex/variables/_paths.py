"""Paths inside a program (``steps[2].module.k``), a copy that shares LMs, and the changes made at a path.

A path is a chain of attribute names and indexes, as DSPy itself names things in ``named_predictors()``:
``name``, ``.name``, ``[3]`` (a list or tuple item) and ``['key']`` (a dict item). The empty path is
the program itself. Resolution errors (``ConfigurationError``; the caller says which binding) list what
is there, so a typo is one look away from its fix.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from dspex.errors import ConfigurationError, did_you_mean
from dspex.modules._introspect import acall_module, single_signature
from dspex.modules.build import build_module

__all__ = [
    "ADAPTERS",
    "AdaptedPredict",
    "AdapterName",
    "AdapterScope",
    "Segment",
    "bind_parameter",
    "copy_program",
    "get_path",
    "parse_path",
    "rebuild_module",
    "scope_adapter",
    "set_path",
    "sub_modules",
]

AdapterName = Literal["chat", "json", "xml"]
ADAPTERS: Mapping[str, type[Any]] = {
    "chat": dspy.ChatAdapter,
    "json": dspy.JSONAdapter,
    "xml": dspy.XMLAdapter,
}


# One segment: an attribute name (dotted or leading), an integer index, or a quoted dict key.
_SEGMENT = re.compile(r"""\.?(?P<attr>[A-Za-z_]\w*)|\[(?P<index>-?\d+)\]|\[(?P<q>['"])(?P<key>.*?)(?P=q)\]""")


@dataclass(frozen=True, slots=True)
class Segment:
    """One step of a path: an attribute (``kind="attr"``), a sequence index or a mapping key."""

    kind: str  # "attr" | "index" | "key"
    value: str | int

    def __str__(self) -> str:
        if self.kind == "attr":
            return f".{self.value}"
        return f"[{self.value}]" if self.kind == "index" else f"[{self.value!r}]"


def parse_path(path: str) -> tuple[Segment, ...]:
    """Split a path into segments.

    >>> [str(s) for s in parse_path("steps[2].module.k")]
    ['.steps', '[2]', '.module', '.k']
    """
    segments: list[Segment] = []
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        # A dot is only optional at the very start: "a.b", never "ab" read as two names.
        if m is None or (m["attr"] and pos > 0 and not path.startswith(".", pos)):
            raise ConfigurationError(
                f"path {path!r} does not parse at character {pos} ({path[pos:]!r}); write attributes and "
                "indexes like steps[2].module.k or branches[0]['name']"
            )
        if m["attr"] is not None:
            segments.append(Segment("attr", m["attr"]))
        elif m["index"] is not None:
            segments.append(Segment("index", int(m["index"])))
        else:
            segments.append(Segment("key", m["key"]))
        pos = m.end()
    return tuple(segments)


def _join(segments: tuple[Segment, ...]) -> str:
    return "".join(str(s) for s in segments).lstrip(".")


def _describe_items(items: list[Any] | tuple[Any, ...]) -> str:
    # Steps have names; showing them tells "steps[1]" apart from "steps[2]" without reading the code.
    shown = []
    for i, item in enumerate(items):
        name = getattr(item, "name", None)
        shown.append(f"[{i}] {name}" if isinstance(name, str) else f"[{i}] {type(item).__name__}")
    return ", ".join(shown) or "nothing"


def _attributes(obj: Any) -> list[str]:
    names = getattr(obj, "__dict__", {})
    return sorted(n for n in names if not n.startswith("_") and n not in ("callbacks", "history"))


def _step(obj: Any, segment: Segment, where: str) -> Any:
    at = where or "the program"
    if segment.kind == "attr":
        name = str(segment.value)
        if isinstance(obj, Mapping) or not hasattr(obj, name):
            valid = list(obj) if isinstance(obj, Mapping) else _attributes(obj)
            raise ConfigurationError(
                f"{at} ({type(obj).__name__}) has no attribute {name!r}: "
                + did_you_mean(name, [str(v) for v in valid], what="attribute")
            )
        return getattr(obj, name)
    if segment.kind == "index":
        if not isinstance(obj, list | tuple):
            raise ConfigurationError(
                f"{at} is a {type(obj).__name__}, not a list; it cannot be indexed by [{segment.value}]"
            )
        index = int(segment.value)
        if not -len(obj) <= index < len(obj):
            raise ConfigurationError(f"{at} has no item [{index}]; it holds {_describe_items(obj)}")
        return obj[index]
    if not isinstance(obj, Mapping):
        raise ConfigurationError(
            f"{at} is a {type(obj).__name__}, not a mapping; it has no key {segment.value!r}"
        )
    if segment.value not in obj:
        raise ConfigurationError(
            f"{at} has no key {segment.value!r}; keys: {', '.join(map(str, obj)) or 'none'}"
        )
    return obj[segment.value]


def get_path(root: Any, path: str) -> Any:
    """The object at ``path`` under ``root`` (``root`` itself for ``""``); a ConfigurationError says what is there."""
    segments = parse_path(path)
    obj = root
    for i, segment in enumerate(segments):
        obj = _step(obj, segment, _join(segments[:i]))
    return obj


def set_path(root: Any, path: str, value: Any) -> None:
    """Replace the existing attribute or item at ``path`` (never creates one: a typo must not pass)."""
    segments = parse_path(path)
    if not segments:
        raise ConfigurationError("the empty path is the program itself; name an attribute to set")
    parent = get_path(root, _join(segments[:-1]))
    last = segments[-1]
    _step(parent, last, _join(segments[:-1]))  # raises if it is not there
    if last.kind == "attr":
        setattr(parent, str(last.value), value)
    elif isinstance(parent, tuple):
        raise ConfigurationError(
            f"{_join(segments[:-1])} is a tuple; its item [{last.value}] cannot be replaced"
        )
    else:
        parent[last.value] = value


def sub_modules(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``dspy.Module`` reachable from ``obj`` through attributes, lists and dicts, with its path.

    Like DSPy's ``named_sub_modules`` but with paths that :func:`get_path` reads back (no ``self.``
    prefix, quoted dict keys), depth first so a container comes before what it holds.
    """
    seen: set[int] = set()

    def walk(item: Any, where: str) -> Iterator[tuple[str, Any]]:
        if id(item) in seen:
            return
        if isinstance(item, dspy.Module):
            seen.add(id(item))
            yield where, item
            for name, value in vars(item).items():
                if not name.startswith("_") and name not in ("callbacks", "history"):
                    yield from walk(value, f"{where}.{name}" if where else name)
        elif isinstance(item, list | tuple):
            for i, value in enumerate(item):
                yield from walk(value, f"{where}[{i}]")
        elif isinstance(item, dict):
            for key, value in item.items():
                yield from walk(value, f"{where}[{key!r}]")

    yield from walk(obj, path)


def _lms(program: Any) -> list[Any]:
    found = []
    for _, module in sub_modules(program):
        for value in vars(module).values():
            if isinstance(value, dspy.BaseLM):
                found.append(value)
    return found


def copy_program(program: Any) -> Any:
    """A deep copy of ``program`` that shares its LMs.

    DSPy's ``Module.deepcopy()`` falls back to a *shallow* copy of any attribute it cannot deep-copy; an
    LM holds a lock, so on a pipeline that fallback would share the ``steps`` list with the original and
    a configured copy would change it. Here LMs are pre-seeded in the memo: they are clients (engine,
    cache, history) shared as DSPy shares them, and everything else is copied for real or not at all.
    """
    memo: dict[int, Any] = {id(lm): lm for lm in _lms(program)}
    try:
        return copy.deepcopy(program, memo)
    except Exception as e:  # deepcopy raises whatever the uncopyable object's protocol raises
        raise ConfigurationError(
            f"cannot copy {type(program).__name__} to configure it: {type(e).__name__}: {e}; an attribute of "
            "the program (other than an LM) cannot be deep-copied"
        ) from e


class AdapterScope(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Runs ``module`` inside ``dspy.context(adapter=...)``: a per-module adapter, which DSPy lacks.

    Transparent to DSPy: ``named_parameters()`` is the wrapped module's, so predictor names, saved
    state and optimizers see the module as if unwrapped; other attributes read through to it.
    """

    def __init__(self, module: Any, adapter: AdapterName) -> None:
        super().__init__()
        if adapter not in ADAPTERS:
            raise ConfigurationError(did_you_mean(str(adapter), ADAPTERS, what="adapter"))
        self.module = module
        self.adapter = adapter
        # A compiled module is frozen for optimizers; the scope in its place must say so too.
        self._compiled = bool(getattr(module, "_compiled", False))

    def named_parameters(self) -> list[tuple[str, Any]]:
        return list(self.module.named_parameters())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with dspy.context(adapter=ADAPTERS[self.adapter]()):
            return self.module(*args, **kwargs)

    async def aforward(self, **kwargs: Any) -> Any:
        with dspy.context(adapter=ADAPTERS[self.adapter]()):
            return await acall_module(self.module, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only called for names the scope lacks. Dunder lookups (copy, pickle) and a half-built instance
        # must fail normally instead of recursing into a missing `module`.
        module = self.__dict__.get("module")
        if name.startswith("__") or module is None:
            raise AttributeError(name)
        return getattr(module, name)


# -- surgery at a path: what apply() does for parameter, module_type and adapter bindings -------------
def bind_parameter(root: Any, path: str, name: str, value: Any) -> None:
    """Bind keyword ``name`` of the function (or ``FunctionStep``'s function) at ``path`` to ``value``."""
    from dspex.pipeline.steps import FunctionStep

    target = get_path(root, path)
    fn = target.fn if isinstance(target, FunctionStep) else target
    if isinstance(fn, dspy.Module) or not callable(fn):
        raise ConfigurationError(
            f"{path or 'the program'} is a {type(target).__name__}, not a function or function step"
        )
    parameters = inspect.signature(fn).parameters
    param = parameters.get(name)
    if param is None or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
        raise ConfigurationError(did_you_mean(name, list(parameters), what="keyword parameter"))
    if isinstance(target, FunctionStep) and param.default is param.empty:
        raise ConfigurationError(
            f"parameter {name!r} of step {target.name!r} has no default, so it is a pipeline input; give it "
            "a default to bind it"
        )
    bound = functools.update_wrapper(functools.partial(fn, **{name: value}), fn)
    if not isinstance(target, FunctionStep):
        set_path(root, path, bound)
        return
    target.fn = bound
    # The bound value must win over a state field of the same name, so the step stops reading it.
    target.local_inputs = tuple(n for n in target.local_inputs if n != name)
    target.optional_inputs = target.optional_inputs - {name}
    target.input_map = {k: v for k, v in target.input_map.items() if k != name}


def rebuild_module(root: Any, path: str, name: str) -> Any:
    """Rebuild the module at ``path`` as catalog module ``name``; returns the (possibly new) root."""
    from dspex.pipeline.steps import ModuleStep, Step

    target = get_path(root, path)
    holder = target if isinstance(target, ModuleStep) else None
    old = holder.module if holder is not None else target
    if isinstance(old, Step) or not isinstance(old, dspy.Module):
        raise ConfigurationError(
            f"{path or 'the program'} is a {type(old).__name__}; module_type rebuilds a DSPy module (or the "
            "module of a ModuleStep)"
        )
    signature = _base_signature(old)
    if signature is None:
        raise ConfigurationError(
            f"{type(old).__name__} at {path or 'the program'} has no single signature to rebuild around"
        )
    new = build_module(name, signature)
    if not isinstance(new, dspy.Module):
        raise ConfigurationError(f"{name!r} builds a {type(new).__name__}, not a dspy.Module")
    old_predictors = [p for _, p in old.named_predictors()]
    new_predictors = [p for _, p in new.named_predictors()]
    if len(old_predictors) == 1 and len(new_predictors) == 1:
        # Same signature, one predictor each: what was learned or set for it still applies.
        before, after = old_predictors[0], new_predictors[0]
        after.demos = list(before.demos)
        after.config = dict(before.config)
        after.lm = before.lm
    if holder is not None:
        holder.module = new
    elif path:
        set_path(root, path, new)
    else:
        return new
    return root


class AdaptedPredict(dspy.Predict):  # type: ignore[misc]  # dspy.Predict is untyped
    """A ``dspy.Predict`` that runs under its own adapter: what :class:`AdapterScope` is for a module.

    A predictor cannot be wrapped: DSPy names it by the attribute holding it, so a wrapper would rename
    it (``module`` -> ``module.self``) and its saved state. This subclass keeps name and state.
    """

    adapter: AdapterName = "chat"

    def forward(self, **kwargs: Any) -> Any:
        with dspy.context(adapter=ADAPTERS[self.adapter]()):
            return super().forward(**kwargs)

    async def aforward(self, **kwargs: Any) -> Any:
        with dspy.context(adapter=ADAPTERS[self.adapter]()):
            return await super().aforward(**kwargs)


def _scoped(module: Any, adapter: AdapterName) -> Any:
    if isinstance(module, dspy.Predict):
        if type(module) not in (dspy.Predict, AdaptedPredict):
            raise ConfigurationError(
                f"{type(module).__name__} is a Predict subclass; bind the adapter on the module that holds it"
            )
        adapted = AdaptedPredict.__new__(AdaptedPredict)
        adapted.__dict__.update(vars(module))
        adapted.adapter = adapter
        return adapted
    return AdapterScope(module, adapter)


def _is_scoped(module: Any) -> bool:
    return isinstance(module, AdapterScope | AdaptedPredict)


def scope_adapter(root: Any, path: str, adapter: AdapterName) -> Any:
    """Run the module at ``path`` (every module step under a pipeline step) with ``adapter``; returns the root."""
    from dspex.pipeline.steps import ModuleStep, Step

    target = get_path(root, path)
    if _is_scoped(target):
        return root  # a deeper, more specific adapter binding already scoped this very module
    if isinstance(target, Step):
        steps = [m for _, m in sub_modules(target) if isinstance(m, ModuleStep)]
        if not steps:
            raise ConfigurationError(f"{path or 'the pipeline'} holds no module steps")
        for module_step in steps:
            if not _is_scoped(module_step.module):
                module_step.module = _scoped(module_step.module, adapter)
        return root
    if not isinstance(target, dspy.Module):
        raise ConfigurationError(f"{path} is a {type(target).__name__}, not a dspy.Module")
    scoped = _scoped(target, adapter)
    if not path:
        return scoped
    set_path(root, path, scoped)
    return root


def _base_signature(module: Any) -> Any:
    """The signature the module was built around: ChainOfThought's predictor adds ``reasoning``."""
    signature = single_signature(module)
    if (
        isinstance(module, dspy.ChainOfThought)
        and signature is not None
        and "reasoning" in signature.output_fields
        and getattr(module, "signature", None) is None
    ):
        signature = signature.delete("reasoning")
    return signature
