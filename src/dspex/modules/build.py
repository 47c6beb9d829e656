"""Build catalog modules from Python arguments or from a declarative spec (a mapping or YAML text).

A module spec has three keys::

    module: react                    # a catalog name
    signature: "question -> answer"  # a signature string (a wrapper passes it to its inner module)
    options:                         # the entry's options, checked by name and type
      tools: [search, "my_pkg.tools:lookup"]
      max_iters: 5

Errors in Python arguments raise ``ConfigurationError`` (``SignatureError`` for a bad signature); errors in
a spec raise ``SpecError`` with the path of the offending value (``options.max_iters``) and, when the spec
was YAML text, its line. A nested spec given as a Python argument reports paths from that argument
(``module.options.N``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspex.errors import ConfigurationError, SignatureError, SpecError, UserError, did_you_mean
from dspex.modules._options import describe_value, matches
from dspex.modules._signature import _to_signature
from dspex.modules._yaml import load_yaml, nearest_line
from dspex.modules.catalog import ModuleEntry, catalog, module_entry, module_names
from dspex.modules.tools import ToolRegistry

__all__ = ["SPEC_KEYS", "build_module", "module_from_spec"]

SPEC_KEYS = ("module", "signature", "options")


@dataclass(frozen=True, slots=True)
class _Site:
    """Where a value came from, so an error about it is raised in the right form.

    ``path`` is ``None`` for Python arguments (errors are ``ConfigurationError``) and a dotted path inside a
    spec otherwise (errors are ``SpecError`` with that path and the nearest known YAML line).
    """

    path: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)

    def at(self, key: str | int) -> _Site:
        if self.path is None:
            return self
        if isinstance(key, int):
            return _Site(f"{self.path}[{key}]", self.lines)
        return _Site(f"{self.path}.{key}" if self.path else key, self.lines)

    def option(self, name: str) -> _Site:
        return self.at("options").at(name)

    def nested(self, option: str) -> _Site:
        """The site of a nested spec held by ``option``: a spec even when given as a Python argument."""
        return _Site(option) if self.path is None else self.option(option)

    def _line(self) -> int | None:
        return nearest_line(self.lines, self.path or "")

    def error(self, message: str) -> UserError:
        if self.path is None:
            return ConfigurationError(message)
        return SpecError(message, path=self.path or None, line=self._line())

    def rewrap(self, exc: UserError) -> UserError:
        """``exc`` in this site's form (a registry or signature error raised without a location)."""
        return exc if self.path is None else self.error(exc.message)


def build_module(
    name: str,
    signature: str | type[Any] | None = None,
    /,
    *,
    registry: ToolRegistry | None = None,
    **options: Any,
) -> Any:
    """Build the catalog module ``name`` for ``signature`` with ``options`` (checked by name and type).

    Returns the DSPy object: a ``dspy.Module``, or a ``dspy.Parallel`` runner for ``"parallel"``.
    ``registry`` resolves tool and reward-function names; import paths work without one. Usage::

        qa = build_module("chain_of_thought", "question -> answer", temperature=0.2)
        agent = build_module("react", "question -> answer", tools=[search], max_iters=5)
        best = build_module("best_of_n", "question -> answer", module="predict", N=3,
                            reward_fn=one_word, threshold=1.0)
        pot = build_module("rlm", "context, query -> answer", interpreter="local")  # NOT a sandbox
    """
    if not isinstance(name, str):
        raise ConfigurationError(
            f"a module name is a string, one of {', '.join(module_names())}; got {name!r}"
        )
    return _build(
        module_entry(name), signature, options, _Site(), registry if registry is not None else ToolRegistry()
    )


def module_from_spec(spec: Mapping[str, Any] | str, /, *, registry: ToolRegistry | None = None) -> Any:
    """Build a module from a spec mapping or YAML text (see the module docstring for the format). Usage::

    qa = module_from_spec({"module": "predict", "signature": "question -> answer"})
    agent = module_from_spec('''
        module: react
        signature: question -> answer
        options: {tools: [search], max_iters: 5}
    ''', registry=ToolRegistry([search]))
    """
    if isinstance(spec, str):
        data, lines = load_yaml(spec)
    else:
        data, lines = spec, {}
    return _from_mapping(
        data, _Site("", lines), registry if registry is not None else ToolRegistry(), default_signature=None
    )


def _from_mapping(data: Any, site: _Site, registry: ToolRegistry, *, default_signature: Any) -> Any:
    if not isinstance(data, Mapping):
        raise site.error(
            f"a module spec is a mapping with keys {', '.join(SPEC_KEYS)}, got {describe_value(data)}"
        )
    for key in data:
        if key not in SPEC_KEYS:
            raise site.at(str(key)).error(did_you_mean(str(key), SPEC_KEYS, what="module spec key"))
    if "module" not in data:
        raise site.error(f"a module spec needs 'module': one of {', '.join(module_names())}")
    name = data["module"]
    if not isinstance(name, str) or name not in catalog():
        if not isinstance(name, str):
            message = f"'module' is a catalog name, got {describe_value(name)}"
        else:
            message = did_you_mean(name, module_names(), what="module")
        raise site.at("module").error(message)
    signature = data.get("signature", default_signature)
    if signature is None and "signature" in data:
        raise site.at("signature").error("signature is empty; give one like 'question -> answer'")
    options = data.get("options")
    if options is None:  # "options:" with nothing under it in YAML
        options = {}
    if not isinstance(options, Mapping):
        raise site.at("options").error(
            f"options is a mapping of option names to values, got {describe_value(options)}"
        )
    return _build(catalog()[name], signature, options, site, registry)


def _build(
    entry: ModuleEntry, signature: Any, options: Mapping[Any, Any], site: _Site, registry: ToolRegistry
) -> Any:
    values = _check_options(entry, options, site)
    args: list[Any] = []
    if entry.takes_signature:
        if signature is None:
            raise site.error(f"module {entry.name!r} needs a signature, e.g. 'question -> answer'")
        try:
            args.append(_to_signature(signature))
        except SignatureError as e:
            raise site.at("signature").rewrap(e) from e
    elif signature is not None and not entry.wraps_module:
        raise site.at("signature").error(
            f"module {entry.name!r} takes no signature: it runs the (module, example) pairs it is called with"
        )
    kwargs = _constructor_kwargs(entry, values, signature, site, registry)
    try:
        return entry.dspy_class(*args, **kwargs)
    except ConfigurationError as e:  # DSPex's own patterns check combinations and name the option
        raise site.rewrap(e) from e
    except (ValueError, TypeError, OSError) as e:
        # DSPy validates some combinations itself (reserved field names, tool names, reward source).
        raise site.error(f"dspy.{entry.dspy_class.__name__} rejected the {entry.name} options: {e}") from e


def _check_options(entry: ModuleEntry, options: Mapping[Any, Any], site: _Site) -> dict[str, Any]:
    known = {o.name: o for o in entry.options}
    for key, value in options.items():
        option = known.get(key) if isinstance(key, str) else None
        if option is None:
            raise site.option(str(key)).error(did_you_mean(str(key), known, what=f"{entry.name} option"))
        if not matches(value, option.type):
            raise site.option(key).error(
                f"{entry.name} option {key!r} expects {option.type_name}, got {describe_value(value)}"
            )
        if option.minimum is not None and isinstance(value, int | float) and value < option.minimum:
            raise site.option(key).error(
                f"{entry.name} option {key!r} must be at least {option.minimum}, got {value!r}"
            )
    for option in entry.options:
        if option.required and option.name not in options:
            raise site.at("options").error(
                f"{entry.name} needs option {option.name!r} ({option.type_name}): {option.doc}"
            )
    return dict(options)


def _constructor_kwargs(
    entry: ModuleEntry, values: Mapping[str, Any], signature: Any, site: _Site, registry: ToolRegistry
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    lm_kwargs: dict[str, Any] = {}
    for option in entry.options:
        given = option.name in values
        value = values.get(option.name, option.default)
        where = site.option(option.name)
        if option.kind == "arg":
            # Options not given are left out, so DSPy's own defaults apply.
            if given:
                kwargs[option.name] = value
        elif option.kind == "lm":
            if value is not None:
                lm_kwargs[option.name] = value
        elif option.kind == "lm_dict":
            for key in value or {}:
                if key in entry.option_names:
                    raise where.at(key).error(
                        f"set {key!r} as the {entry.name} option {key!r}, not inside config"
                    )
            lm_kwargs.update(value or {})
        elif option.kind == "tools":
            kwargs["tools"] = _tools(entry, value, where, registry)
        elif option.kind == "interpreter":
            kwargs["interpreter_factory"] = _interpreter_factory(value)
        elif option.kind == "module":
            kwargs[option.name] = _inner_module(entry, value, signature, site, registry)
        elif option.kind == "modules":
            if given:
                kwargs[option.name] = _inner_modules(entry, value, signature, where, registry)
        elif option.kind == "function":
            kwargs[option.name] = _function(value, where, registry)
        elif option.kind == "validator":
            kwargs[option.name] = _validator(value, where, registry)
    kwargs.update(lm_kwargs)
    return kwargs


def _interpreter_factory(choice: str) -> Any:
    # PythonInterpreter is also DSPy's own default, so dspy.context(interpreter_factory=...) still applies
    # to "sandbox" (DSPy treats it as "unset"); "local" is pinned and needs this explicit option.
    return dspy.LocalInterpreter if choice == "local" else dspy.PythonInterpreter


def _tools(entry: ModuleEntry, refs: Any, site: _Site, registry: ToolRegistry) -> list[Any]:
    tools: list[Any] = []
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        try:
            tool = registry.tool(ref)
        except ConfigurationError as e:
            raise site.at(i).rewrap(e) from e
        if tool.name in seen:
            raise site.at(i).error(f"tool {tool.name!r} is listed twice")
        seen.add(tool.name)
        if entry.tools_from_source:
            _check_source_tool(entry, tool, site.at(i))
        tools.append(tool)
    return tools


def _check_source_tool(entry: ModuleEntry, tool: Any, site: _Site) -> None:
    func = tool.func
    if not inspect.isfunction(func) or func.__name__ == "<lambda>":
        raise site.error(f"{entry.name} tools must be plain functions (def), got {func!r}")
    if tool.name != func.__name__:
        raise site.error(
            f"{entry.name} re-defines tools from their source, so tool {tool.name!r} must be registered under "
            f"its function name {func.__name__!r}"
        )


def _function(ref: Any, site: _Site, registry: ToolRegistry) -> Any:
    if callable(ref):
        return ref
    try:
        return registry.resolve(ref, what="function")
    except ConfigurationError as e:
        raise site.rewrap(e) from e


def _inner_module(entry: ModuleEntry, value: Any, signature: Any, site: _Site, registry: ToolRegistry) -> Any:
    where = site.nested("module")
    if isinstance(value, dspy.Module):
        if signature is not None:
            raise site.at("signature").error(
                f"{entry.name} got both a signature and a built module; the signature would be ignored"
            )
        return value
    if isinstance(value, str):
        if value not in catalog():
            raise site.option("module").error(did_you_mean(value, module_names(), what="module"))
        inner = _build(catalog()[value], signature, {}, where, registry)
    else:
        inner = _from_mapping(value, where, registry, default_signature=signature)
    if not isinstance(inner, dspy.Module):
        raise site.option("module").error(
            f"{entry.name} wraps a dspy.Module; {type(inner).__name__} is not one"
        )
    return inner


def _inner_modules(
    entry: ModuleEntry, values: Any, signature: Any, site: _Site, registry: ToolRegistry
) -> list[Any]:
    """The members of a consensus: each a catalog name, a nested spec or (Python) a built module."""
    built: list[Any] = []
    for i, value in enumerate(values):
        where = site.at(i) if site.path is not None else _Site(f"modules[{i}]")
        if isinstance(value, dspy.Module):
            built.append(value)
            continue
        if isinstance(value, str):
            if value not in catalog():
                raise where.error(did_you_mean(value, module_names(), what="module"))
            inner = _build(catalog()[value], signature, {}, where, registry)
        else:
            inner = _from_mapping(value, where, registry, default_signature=signature)
        if not isinstance(inner, dspy.Module):
            raise where.error(f"{entry.name} members are dspy.Modules; {type(inner).__name__} is not one")
        built.append(inner)
    return built


def _validator(value: Any, site: _Site, registry: ToolRegistry) -> Any:
    """``"critic"``, ``"lm"`` and ``{"signature": ...}`` pass through (the module builds them); else a function."""
    if value in ("critic", "lm") or isinstance(value, Mapping):
        return value
    return _function(value, site, registry)
