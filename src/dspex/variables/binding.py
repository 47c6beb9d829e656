"""Bindings: where a variable's value goes in a program, and :func:`apply`, which makes a configured copy.

A :class:`Binding` maps ONE variable name to ONE target; a variable may have several bindings (one
temperature for two predictors, a ``k`` shared by two retrievers). A configuration is a plain mapping of
variable names to values::

    from dspex.variables.binding import Bindings, apply, bind

    bindings = Bindings([
        bind.temperature("temp", predictors="*"),
        bind.model("model", predictors=["steps[2].module.predict"]),
        bind.instructions("style", predictors="*answer*"),
        bind.demos("shots"),
        bind.adapter("format"),                           # the whole program
        bind.module_type("strategy", at="steps[2]"),      # predict <-> chain_of_thought ...
        bind.parameter("k", at="steps[1]", name="k"),     # a function step's keyword default
        bind.attribute("passages", "retriever.k"),        # anything else, by path
    ])
    configured = apply(program, {"temp": 0.7, "model": "small", "format": "json", ...}, bindings, lms=lms)

How each target is applied to the copy (the original is never touched):

- LM settings (``temperature``, ``max_tokens``, any LM keyword): ``predictor.config[setting] = value``.
  DSPy merges ``config`` over the LM's own keyword arguments on every call (per-call ``config`` >
  ``predictor.config`` > the predictor's or context LM's kwargs), so this wins whichever LM runs.
- ``model``: the predictor's LM becomes ``lms[value]`` (a registry you pass; needed offline and for
  LMs with their own engine or credentials) or, without a registry, ``dspy.LM(value)``. Keyword
  arguments the predictor's previous own LM carried (say ``temperature``) are kept unless the new LM
  sets them; ``predictor.config`` stays as it was.
- ``instructions``: ``predictor.signature = predictor.signature.with_instructions(text)``.
- ``demos``: keep the first k of the predictor's demos (0 removes them; fewer than k keeps all). Demos
  come from compilation (an optimizer such as ``BootstrapFewShot``) or from a trainset you set yourself.
- ``adapter`` (``"chat"`` | ``"json"`` | ``"xml"``): dspy 3.4's ``Predict`` has no per-predictor adapter
  (``Predict.forward`` resolves ``settings.adapter or ChatAdapter()``), so the target runs inside
  ``dspy.context(adapter=...)``: a module is wrapped in an :class:`AdapterScope`, transparent to DSPy
  (``named_parameters()``, hence predictor names, ``dump_state`` and optimizers, are the wrapped
  module's); a ``dspy.Predict`` becomes an :class:`AdaptedPredict` (same state, same name). In a
  pipeline, or at a pipeline step, every module step's ``.module`` inside is scoped, so the pipeline
  keeps its type. The most specific adapter binding wins.
- ``module_type``: the module at ``at`` is rebuilt as another catalog module (``build_module``) around
  the same signature (ChainOfThought's added ``reasoning`` field is left out). When old and new module
  each have one predictor, its demos, config and LM carry over. At a ``ModuleStep`` its ``.module`` is
  replaced (the step keeps its declared fields).
- ``attribute``: sets an existing attribute or item by path, e.g. ``steps[2].module.k``.
- ``parameter``: binds a keyword default of a function (a ``FunctionStep`` at ``at``, or a function
  stored at ``at``) with ``functools.partial``; a function step then no longer reads that field from
  the pipeline state, so the bound value always applies. This is how "retrieval k" reaches a plain
  retrieval function.

Predictor selection (``predictors=``): ``"*"`` (all), a list of ``named_predictors()`` names, or a glob
where ``*`` and ``?`` are wildcards and brackets are literal indexes (``"steps[*].module.predict"``).
Selections are resolved after ``module_type`` bindings rebuilt modules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import dspy

from dspex.errors import ConfigurationError, SpecError, did_you_mean
from dspex.modules.catalog import module_names
from dspex.variables._paths import (
    ADAPTERS,
    AdaptedPredict,
    AdapterName,
    AdapterScope,
    bind_parameter,
    copy_program,
    parse_path,
    rebuild_module,
    scope_adapter,
    set_path,
)

__all__ = [
    "ADAPTERS",
    "AdaptedPredict",
    "AdapterName",
    "AdapterScope",
    "Binding",
    "BindingKind",
    "Bindings",
    "apply",
    "bind",
]

BindingKind = Literal[
    "lm_setting",
    "model",
    "instructions",
    "demos",
    "adapter",
    "module_type",
    "attribute",
    "parameter",
    "fallbacks",
]

_KINDS: tuple[str, ...] = get_args(BindingKind)
_PREDICTOR_KINDS = frozenset({"lm_setting", "model", "instructions", "demos"})
_PATH_KINDS = frozenset({"adapter", "module_type", "attribute", "parameter", "fallbacks"})
_JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class Binding:
    """One variable bound to one target. Build them with :data:`bind` (``bind.temperature("temp")``).

    ``setting`` is the LM keyword (kind ``lm_setting``) or the function parameter (kind ``parameter``);
    ``predictors`` selects predictors for the predictor kinds; ``path`` locates the target of the others.
    """

    variable: str
    kind: BindingKind
    predictors: str | tuple[str, ...] = "*"
    path: str = ""
    setting: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.variable, str) or not self.variable:
            raise ConfigurationError(f"a binding needs a variable name, got {self.variable!r}")
        if self.kind not in _KINDS:
            raise ConfigurationError(did_you_mean(str(self.kind), _KINDS, what="binding target"))
        if isinstance(self.predictors, list):  # a list is the natural spelling; store it hashable
            object.__setattr__(self, "predictors", tuple(self.predictors))
        if not self.predictors or not all(isinstance(p, str) and p for p in self._selection()):
            raise ConfigurationError(
                f"{self}: predictors is '*', a glob or a list of predictor names, got {self.predictors!r}"
            )
        if self.kind in _PREDICTOR_KINDS and self.path:
            raise ConfigurationError(f"{self}: {self.kind} bindings select predictors=, not a path")
        if self.kind in _PATH_KINDS and self.predictors != "*":
            raise ConfigurationError(f"{self}: {self.kind} bindings take a path, not predictors=")
        if self.kind in ("lm_setting", "parameter") and not self.setting:
            what = "LM keyword (e.g. 'temperature')" if self.kind == "lm_setting" else "parameter name"
            raise ConfigurationError(f"binding of {self.variable!r}: {self.kind} needs the {what}")
        if self.kind == "fallbacks" and self.path:
            raise ConfigurationError(f"{self}: the fallback chain is the whole program's; leave the path out")
        if self.kind == "attribute" and not self.path:
            raise ConfigurationError(f"{self}: an attribute binding needs a path like 'steps[2].module.k'")
        parse_path(self.path)  # syntax errors now, not at the first apply

    def _selection(self) -> tuple[str, ...]:
        return (self.predictors,) if isinstance(self.predictors, str) else self.predictors

    @property
    def target(self) -> str:
        """What the binding sets, for messages: ``temperature``, ``adapter at steps[2]``..."""
        name = self.setting if self.kind == "lm_setting" else self.kind
        if self.kind == "parameter":
            name = f"parameter {self.setting!r}"
        if self.kind in _PREDICTOR_KINDS:
            return f"{name} of predictors {self.predictors!r}"
        return f"{name} at {self.path or '<program>'}"

    def __str__(self) -> str:
        return f"binding {self.variable!r} -> {self.target}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`from_dict` reads it back. Only the keys the kind uses appear."""
        data: dict[str, Any] = {"variable": self.variable, "target": self.kind}
        if self.kind in _PREDICTOR_KINDS:
            data["predictors"] = (
                self.predictors if isinstance(self.predictors, str) else list(self.predictors)
            )
        else:
            data["path"] = self.path
        if self.setting:
            data["setting"] = self.setting
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> Binding:
        """The binding described by ``data`` (see :meth:`to_dict`); errors are ``SpecError`` at ``where``."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a binding is a mapping, got {type(data).__name__}", path=where or None)
        known = ("variable", "target", "predictors", "path", "setting")
        for key in data:
            if key not in known:
                at = f"{where}.{key}" if where else str(key)
                raise SpecError(did_you_mean(str(key), known, what="binding key"), path=at)
        for key in ("variable", "target"):
            if key not in data:
                raise SpecError(f"a binding needs {key!r}", path=where or None)
        predictors = data.get("predictors", "*")
        try:
            return cls(
                variable=data["variable"],
                kind=data["target"],
                predictors=tuple(predictors) if isinstance(predictors, list) else predictors,
                path=data.get("path", ""),
                setting=data.get("setting", ""),
            )
        except ConfigurationError as e:
            raise SpecError(e.message, path=where or None) from e


Selection = str | Iterable[str]


def _sel(predictors: Selection) -> str | tuple[str, ...]:
    return predictors if isinstance(predictors, str) else tuple(predictors)


class _BindingFactory:
    """Constructors of bindings, one per target kind; the module exposes one instance as ``bind``."""

    def temperature(self, variable: str, *, predictors: Selection = "*") -> Binding:
        """``bind.temperature("temp", predictors="*")``: sampling temperature of the selected predictors."""
        return Binding(variable, "lm_setting", _sel(predictors), setting="temperature")

    def max_tokens(self, variable: str, *, predictors: Selection = "*") -> Binding:
        """``bind.max_tokens("budget")``: output token limit of the selected predictors."""
        return Binding(variable, "lm_setting", _sel(predictors), setting="max_tokens")

    def lm_setting(self, variable: str, setting: str, *, predictors: Selection = "*") -> Binding:
        """``bind.lm_setting("p", "top_p")``: any LM keyword argument of the selected predictors."""
        return Binding(variable, "lm_setting", _sel(predictors), setting=setting)

    def model(self, variable: str, *, predictors: Selection = "*") -> Binding:
        """``bind.model("model")``: which LM the selected predictors call (``apply(..., lms=...)``)."""
        return Binding(variable, "model", _sel(predictors))

    def instructions(self, variable: str, *, predictors: Selection = "*") -> Binding:
        """``bind.instructions("style", predictors=["answer"])``: the predictors' instruction text."""
        return Binding(variable, "instructions", _sel(predictors))

    def demos(self, variable: str, *, predictors: Selection = "*") -> Binding:
        """``bind.demos("shots")``: how many of each predictor's demos to keep (the first k)."""
        return Binding(variable, "demos", _sel(predictors))

    def adapter(self, variable: str, *, at: str = "") -> Binding:
        """``bind.adapter("format", at="steps[2]")``: chat, json or xml for the module at ``at``."""
        return Binding(variable, "adapter", path=at)

    def module_type(self, variable: str, *, at: str = "") -> Binding:
        """``bind.module_type("strategy", at="steps[2]")``: rebuild that module as another catalog module."""
        return Binding(variable, "module_type", path=at)

    def attribute(self, variable: str, path: str) -> Binding:
        """``bind.attribute("k", "retriever.k")``: set an existing attribute or item by path."""
        return Binding(variable, "attribute", path=path)

    def parameter(self, variable: str, *, at: str, name: str) -> Binding:
        """``bind.parameter("k", at="steps[1]", name="k")``: a keyword default of a function (step)."""
        return Binding(variable, "parameter", path=at, setting=name)

    def fallbacks(self, variable: str) -> Binding:
        """``bind.fallbacks("chain")``: the program's LM fallback chain, a value like ``"backup,local"``
        (configured model names, in order; ``""`` for none), as ``[resilience.programs.NAME] fallbacks``."""
        return Binding(variable, "fallbacks")


bind = _BindingFactory()


class Bindings:
    """An immutable, ordered collection of bindings; a variable may appear in several.

    >>> bindings = Bindings([bind.temperature("temp"), bind.demos("shots")])
    >>> bindings.variables
    ('temp', 'shots')
    >>> Bindings.from_json(bindings.to_json()) == bindings
    True
    """

    __slots__ = ("_items",)

    def __init__(self, bindings: Iterable[Binding] = ()) -> None:
        items = tuple(bindings)
        for i, b in enumerate(items):
            if not isinstance(b, Binding):
                raise ConfigurationError(f"Bindings holds Binding objects (bind.temperature(...)), got {b!r}")
            if b in items[:i]:
                raise ConfigurationError(f"{b} is listed twice")
        self._items = items

    def __iter__(self) -> Iterator[Binding]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bindings) and other._items == self._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Bindings({list(self._items)!r})"

    @property
    def variables(self) -> tuple[str, ...]:
        """The bound variable names, in first-binding order."""
        return tuple(dict.fromkeys(b.variable for b in self._items))

    def for_variable(self, name: str) -> tuple[Binding, ...]:
        """The bindings of variable ``name`` (an unknown name is an error with a hint)."""
        found = tuple(b for b in self._items if b.variable == name)
        if not found:
            raise ConfigurationError(did_you_mean(name, self.variables, what="variable"))
        return found

    def structural(self, configuration: Mapping[str, Any]) -> dict[str, Any] | None:
        """The bindings that change a program's structure rather than its DSPy state (``module_type``,
        ``adapter``, ``attribute``, ``parameter``) with their values in ``configuration``, as JSON:
        ``{"bindings": {...}, "configuration": {...}}``, or ``None`` when there are none.

        ``dump_state`` records demos, instructions, predictor config and LMs, but not which module class
        runs or which adapter wraps it: a saved program version keeps this and re-applies it to the
        program its source builds (``ProgramRegistry.save_version(..., bindings=...)``).
        """
        chosen = [b for b in self._items if b.kind in _PATH_KINDS and b.variable in configuration]
        if not chosen:
            return None
        values = {b.variable: configuration[b.variable] for b in chosen}
        return {"bindings": Bindings(chosen).to_json(), "configuration": values}

    def to_json(self) -> dict[str, Any]:
        """A versioned JSON-able description: ``{"version": 1, "bindings": [{...}, ...]}``."""
        return {"version": _JSON_VERSION, "bindings": [b.to_dict() for b in self._items]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Bindings:
        """Read :meth:`to_json` output back; errors are ``SpecError`` with the offending path."""
        if not isinstance(data, Mapping) or data.get("version") != _JSON_VERSION:
            raise SpecError(
                f"bindings JSON is {{'version': {_JSON_VERSION}, 'bindings': [...]}}, got {data!r}"
            )
        items = data.get("bindings")
        if not isinstance(items, list):
            raise SpecError("'bindings' is a list of bindings", path="bindings")
        return cls(Binding.from_dict(item, where=f"bindings[{i}]") for i, item in enumerate(items))

    def apply(
        self,
        program: Any,
        configuration: Mapping[str, Any],
        *,
        lms: Mapping[str, Any] | None = None,
        strict: bool = True,
    ) -> Any:
        """``apply(program, configuration, self, ...)``; see :func:`apply`."""
        return apply(program, configuration, self, lms=lms, strict=strict)


# -- apply ------------------------------------------------------------------------------------------------
_ORDER = (
    "module_type",
    "attribute",
    "parameter",
    "model",
    "fallbacks",
    "lm_setting",
    "instructions",
    "demos",
    "adapter",
)


def apply(
    program: Any,
    configuration: Mapping[str, Any],
    bindings: Bindings | Iterable[Binding],
    *,
    lms: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> Any:
    """A configured copy of ``program``: every binding whose variable is in ``configuration`` applied.

    The original is never changed (LMs are shared, everything else is copied). Variables absent from
    the configuration (inactive conditional ones) skip their bindings; with ``strict`` a configuration
    naming a variable no binding uses is an error. ``lms`` maps model names to LMs for ``model``
    bindings. Usage::

        configured = apply(program, {"temp": 0.2, "shots": 0}, [bind.temperature("temp"), bind.demos("shots")])
    """
    if not isinstance(program, dspy.Module):
        raise ConfigurationError(f"apply() configures a dspy.Module, got {type(program).__name__}")
    if not isinstance(configuration, Mapping):
        raise ConfigurationError(
            f"a configuration maps variable names to values, got {type(configuration).__name__}"
        )
    items = bindings if isinstance(bindings, Bindings) else Bindings(bindings)
    if strict:
        for name in configuration:
            if name not in items.variables:
                raise ConfigurationError(
                    "configuration sets " + did_you_mean(str(name), items.variables, what="variable")
                )
    active = [b for b in items if b.variable in configuration]
    for b in active:
        _check_value(b, configuration[b.variable])
    state = _Applying(copy_program(program), lms)
    # Rebuilds first (they change which predictors exist), adapters last (they wrap what is there),
    # deeper adapter paths before shallower so the more specific one is in place when the outer one runs.
    ordered = sorted(active, key=lambda b: (_ORDER.index(b.kind), -len(parse_path(b.path))))
    for b in ordered:
        try:
            state.apply(b, configuration[b.variable])
        except ConfigurationError as e:
            if e.message.startswith(str(b)):
                raise
            raise ConfigurationError(f"{b}: {e.message}") from e
    return state.root


def _check_value(b: Binding, value: Any) -> None:
    def bad(expected: str) -> ConfigurationError:
        return ConfigurationError(f"{b}: expects {expected}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if b.kind == "lm_setting" and b.setting == "temperature":
        if not (is_int or isinstance(value, float)) or value < 0:
            raise bad("a number >= 0")
    elif b.kind == "lm_setting" and b.setting == "max_tokens":
        if not is_int or value < 1:
            raise bad("an integer >= 1")
    elif b.kind == "demos":
        if not is_int or value < 0:
            raise bad("a number of demos >= 0")
    elif b.kind in ("model", "instructions") and not isinstance(value, str):
        raise bad("a string")
    elif b.kind == "fallbacks" and not (
        isinstance(value, str) or (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))
    ):
        raise bad("configured model names, as 'a,b' or a list")
    elif b.kind == "adapter" and value not in ADAPTERS:
        raise bad(f"one of {', '.join(ADAPTERS)}")
    elif b.kind == "module_type" and value not in module_names():
        raise ConfigurationError(f"{b}: " + did_you_mean(str(value), module_names(), what="module"))


class _Applying:
    """The copy being configured, and which binding already set which target (to catch conflicts)."""

    def __init__(self, root: Any, lms: Mapping[str, Any] | None) -> None:
        self.root = root
        self.lms = lms
        self.claimed: dict[tuple[str, ...], Binding] = {}
        self._built_lms: dict[str, Any] = {}

    def claim(self, b: Binding, *key: str) -> None:
        other = self.claimed.setdefault((b.kind, b.setting, *key), b)
        if other is not b:
            raise ConfigurationError(
                f"{b} and {other} both set {key[0] or 'the program'}; bind each target to one variable"
            )

    def apply(self, b: Binding, value: Any) -> None:
        if b.kind in _PREDICTOR_KINDS:
            for name, predictor in self.predictors(b):
                self.claim(b, name)
                self.apply_to_predictor(b, predictor, value)
            return
        self.claim(b, b.path)
        if b.kind == "attribute":
            set_path(self.root, b.path, value)
        elif b.kind == "parameter":
            bind_parameter(self.root, b.path, b.setting, value)
        elif b.kind == "module_type":
            self.root = rebuild_module(self.root, b.path, value)
        elif b.kind == "fallbacks":
            set_fallbacks(self.root, value)
        else:
            self.root = scope_adapter(self.root, b.path, value)

    # -- predictors -----------------------------------------------------------------------------------
    def predictors(self, b: Binding) -> list[tuple[str, Any]]:
        available = list(self.root.named_predictors())
        names = [n for n, _ in available]
        if not available:
            raise ConfigurationError(f"{b}: {type(self.root).__name__} has no predictors")
        chosen: set[str] = set()
        for pattern in b._selection():
            if "*" in pattern or "?" in pattern:
                hits = {n for n in names if _glob(pattern).fullmatch(n)}
                if not hits:
                    raise ConfigurationError(
                        f"{b}: no predictor matches {pattern!r}; predictors: {', '.join(names)}"
                    )
                chosen |= hits
            elif pattern in names:
                chosen.add(pattern)
            else:
                raise ConfigurationError(f"{b}: " + did_you_mean(pattern, names, what="predictor"))
        return [(n, p) for n, p in available if n in chosen]

    def apply_to_predictor(self, b: Binding, predictor: Any, value: Any) -> None:
        if b.kind == "lm_setting":
            predictor.config = {**predictor.config, b.setting: value}
        elif b.kind == "instructions":
            predictor.signature = predictor.signature.with_instructions(value)
        elif b.kind == "demos":
            predictor.demos = list(predictor.demos[:value])
        else:
            predictor.lm = self.lm_for(b, value, predictor.lm)

    def lm_for(self, b: Binding, model: str, previous: Any) -> Any:
        if self.lms is not None:
            if model not in self.lms:
                raise ConfigurationError(f"{b}: " + did_you_mean(model, self.lms, what="model in lms"))
            base = self.lms[model]
        else:
            if model not in self._built_lms:  # one LM per model name: predictors share it, as in DSPy
                self._built_lms[model] = dspy.LM(model)
            base = self._built_lms[model]
        # Keep what the predictor's own LM was set to (temperature, max_tokens...) unless the new LM
        # sets it: the binding changes the model, not the predictor's other settings.
        previous_kwargs = getattr(previous, "kwargs", None) or {}
        new_kwargs = getattr(base, "kwargs", None) or {}
        carry = {k: v for k, v in previous_kwargs.items() if v is not None and new_kwargs.get(k) is None}
        return base.copy(**carry) if carry else base


FALLBACKS_ATTRIBUTE = "_dspex_fallbacks"
"""Where a configured program keeps its fallback chain; the run (and the evaluator) wrap the LM with it."""


def fallback_chain(value: Any) -> tuple[str, ...]:
    """A fallbacks value (``"a,b"``, ``""`` or a list) as configured model names, in order."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return tuple(n.strip() for n in names if n.strip())


def set_fallbacks(program: Any, value: Any) -> None:
    """Give ``program`` the fallback chain ``value``: kept on the program for the LM a run or an
    evaluation passes, and applied now to predictors that carry an LM of the resilience layer."""
    names = fallback_chain(value)
    setattr(program, FALLBACKS_ATTRIBUTE, names)
    for _, predictor in program.named_predictors():
        lm = predictor.lm
        resilience = getattr(lm, "_resilience", None)
        if resilience is not None:  # a ResilientLM: its resilience checks the names are configured
            predictor.lm = resilience.wrap(lm, fallbacks=names)


@functools.lru_cache(maxsize=128)
def _glob(pattern: str) -> re.Pattern[str]:
    # Not fnmatch: "[2]" in "steps[2].module.*" is an index in DSPy's names, not a character class.
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))
