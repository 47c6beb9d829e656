"""Declarative pipeline specs: load a :class:`~dspex.pipeline.Pipeline` from YAML, JSON or a mapping, and
write one built in Python back.

::

    name: research
    inputs: [question]                         # optional: the fields a caller passes
    outputs: [answer]                          # optional: the fields of the result
    sequential: false                          # optional: run strictly in order
    steps:
      - name: parse
        function: myapp.steps:parse_query      # an import path (or a ToolRegistry name)
        outputs: [query, keywords]             # what it returns: a list (a mapping) or one name
      - name: refine
        module: chain_of_thought               # a catalog module: module, signature, options
        signature: "query -> refined_query"
        options: {temperature: 0.2}
        inputs: {query: query}                 # renames: the module's field -> the state field
        outputs: {reasoning: null}             # renames of the module's outputs (null drops one)
        timeout: 30
        retry: {attempts: 3, backoff: 0.2, retry_on: [TimeoutError, "myapp.errors:Flaky"]}
        fallback: {name: refine_plain, module: predict, signature: "query -> refined_query"}
        continue_on_error: false
      - parallel:
          name: retrieve
          branches:                            # a step each; a list of steps is a sub-pipeline
            - {name: bm25, function: "myapp.retrieval:bm25", outputs: passages}
            - {name: kw, function: "myapp.retrieval:keywords", outputs: passages}
          merge: {passages: concat}            # concat | first | last | an import path
      - when:
          name: maybe_summarise
          condition: long_context              # a field, or {function: "myapp.steps:is_long"}
          then: {name: summarise, module: predict, signature: "passages: list[str] -> summary"}
          otherwise: [...]                     # optional; a step or a list of steps
      - map: {name: notes, over: passages, item: passage, into: notes, concurrency: 4,
              step: {name: note, module: predict, signature: "passage -> note"}}
      - pipeline: {name: inner, steps: [...]}  # nested; same keys as the top level

``parallel``, ``when`` and ``map`` also take ``inputs``/``outputs`` renames and every construct takes
``timeout``, ``retry``, ``fallback`` and ``continue_on_error``. Errors are :class:`~dspex.errors.SpecError`
with the path of the offending value (``steps[2].parallel.branches[1].function``) and, for text, its line.

:func:`pipeline_to_spec` writes a pipeline back: functions as import paths, ``predict`` and
``chain_of_thought`` modules from their signature and LM options, other catalog modules as the spec they
were loaded from. The spec is the structure; learned state (demos) is saved with ``pipeline.save()``.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import dspy

from dspex.errors import ConfigurationError, SpecError, UserError, did_you_mean
from dspex.modules import ToolRegistry, load_yaml, module_from_spec
from dspex.modules._yaml import nearest_line
from dspex.pipeline._spec_write import MODULE_SPEC_ATTR, pipeline_to_spec, to_yaml
from dspex.pipeline.flow import MERGE_RULES, Map, Parallel, Pipeline, When
from dspex.pipeline.steps import RetryPolicy, Step, step

__all__ = ["pipeline_from_spec", "pipeline_to_spec", "to_yaml"]

CONSTRUCTS = ("parallel", "when", "map", "pipeline")
_OPTIONS = ("timeout", "retry", "fallback", "continue_on_error")
_RENAMES = ("inputs", "outputs")
_MODULE_KEYS = (
    "name",
    "module",
    "signature",
    "options",
    *_RENAMES,
    "input_fields",
    "output_fields",
    *_OPTIONS,
)
_FUNCTION_KEYS = ("name", "function", *_RENAMES, *_OPTIONS)
_KEYS = {
    "pipeline": ("name", "inputs", "outputs", "sequential", "steps", *_OPTIONS),
    "parallel": ("name", "branches", "merge", *_RENAMES, *_OPTIONS),
    "when": ("name", "condition", "then", "otherwise", *_RENAMES, *_OPTIONS),
    "map": ("name", "step", "over", "item", "into", "concurrency", *_RENAMES, *_OPTIONS),
}
_S = TypeVar("_S", bound=Step)
_RETRY_KEYS = tuple(f.name for f in fields(RetryPolicy))


# -- where a value is --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _At:
    """The path of a value in the spec and the document's line map, for errors that point at it."""

    path: str
    lines: Mapping[str, int]

    def at(self, key: str | int) -> _At:
        if isinstance(key, int):
            return _At(f"{self.path}[{key}]", self.lines)
        return _At(f"{self.path}.{key}" if self.path else key, self.lines)

    def line(self) -> int | None:
        return nearest_line(self.lines, self.path)

    def error(self, message: str) -> SpecError:
        return SpecError(message, path=self.path or None, line=self.line())


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_keys(data: Mapping[Any, Any], allowed: Sequence[str], at: _At, what: str) -> None:
    for key in data:
        if key not in allowed:
            raise at.at(str(key)).error(did_you_mean(str(key), allowed, what=f"{what} key"))


def _name(value: Any, at: _At, what: str = "a field name") -> str:
    if not isinstance(value, str) or not value:
        raise at.error(f"expected {what}, got {_kind(value)} {value!r}")
    return value


def _names(value: Any, at: _At) -> list[str]:
    if not isinstance(value, list):
        raise at.error(f"expected a list of field names, got {_kind(value)} {value!r}")
    return [_name(v, at.at(i)) for i, v in enumerate(value)]


def _renames(value: Any, at: _At, *, drop: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise at.error(f"expected a mapping of renames {{local: field}}, got {_kind(value)} {value!r}")
    for key, target in value.items():
        if not (target is None and drop):
            _name(target, at.at(str(key)), "a field name" + (" or null (drop it)" if drop else ""))
    return dict(value)


def _number(value: Any, at: _At, kind: type = float) -> Any:
    ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if not ok or isinstance(value, bool):
        raise at.error(
            f"expected {'a number' if kind is float else 'an integer'}, got {_kind(value)} {value!r}"
        )
    return value


def _locate(exc: UserError, at: _At, hints: Mapping[str, _At]) -> SpecError:
    """A construction error as a SpecError at the most precise site its message names (else ``at``).

    The pipeline classes raise plain ConfigurationErrors whose messages name the offending step or option;
    ``hints`` maps a regular expression over that message to the site it means.
    """
    for pattern, site in hints.items():
        if re.search(pattern, exc.message):
            return site.error(exc.message)
    return at.error(exc.message)


# -- loading -----------------------------------------------------------------------------------------------


def pipeline_from_spec(
    spec: Mapping[str, Any] | str | Path, /, *, registry: ToolRegistry | None = None
) -> Pipeline:
    """Build a pipeline from a spec: a mapping, YAML or JSON text, or a ``.yaml``/``.json`` file path.

    ``registry`` resolves function, tool and reward names; import paths work without one (unless the
    registry forbids them). Usage::

        pipeline = pipeline_from_spec(Path("research.yaml"))
        pipeline = pipeline_from_spec('''
            name: qa
            steps:
              - {name: answer, module: predict, signature: "question -> answer"}
        ''')
        pipeline(question="What is DSPy?").answer
    """
    data, lines = _load(spec)
    ctx = _Loader(registry if registry is not None else ToolRegistry())
    return ctx.pipeline(data, _At("", lines))


def _load(spec: Mapping[str, Any] | str | Path) -> tuple[Any, Mapping[str, int]]:
    if isinstance(spec, Mapping):
        return spec, {}
    if isinstance(spec, Path):
        try:
            spec = spec.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read pipeline spec {str(spec)!r}: {exc.strerror}") from None
    if spec.lstrip().startswith(("{", "[")):
        try:  # JSON first: its errors are clearer than YAML's for JSON text
            json.loads(spec)
        except ValueError as exc:
            line = getattr(exc, "lineno", None)
            raise SpecError(f"invalid JSON: {getattr(exc, 'msg', exc)}", line=line) from None
    return load_yaml(spec)


class _Loader:
    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    def callable(self, ref: Any, at: _At, what: str) -> Callable[..., Any]:
        if not isinstance(ref, str):
            raise at.error(
                f"a {what} is an import path 'package.module:name' or a registered name, got {ref!r}"
            )
        try:
            return self.registry.resolve(ref, what=what)
        except ConfigurationError as exc:
            raise at.error(exc.message) from exc

    def pipeline(self, data: Any, at: _At) -> Pipeline:
        body = self._body(data, at, "pipeline")
        if "steps" not in body:
            raise at.error("a pipeline needs 'steps': a list of steps")
        raw = body["steps"]
        if not isinstance(raw, list) or not raw:
            raise at.at("steps").error(f"'steps' is a non-empty list of steps, got {_kind(raw)} {raw!r}")
        built, sites = self._steps(raw, at.at("steps"))
        sequential = body.get("sequential", False)
        if not isinstance(sequential, bool):
            raise at.at("sequential").error(f"expected true or false, got {sequential!r}")
        hints = {rf"step {s.name!r}": site for s, site in zip(built, sites, strict=True)}
        hints["declares outputs"] = at.at("outputs")
        return self._construct(
            lambda: Pipeline(
                built,
                name=_name(body.get("name", "pipeline"), at.at("name"), "a name"),
                inputs=_names(body["inputs"], at.at("inputs")) if "inputs" in body else None,
                outputs=_names(body["outputs"], at.at("outputs")) if "outputs" in body else None,
                sequential=sequential,
                **self._options(body, at),
            ),
            at,
            hints,
        )

    def _steps(self, raw: list[Any], at: _At) -> tuple[list[Step], list[_At]]:
        built: list[Step] = []
        sites: list[_At] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            current = self.step(item, at.at(i))
            if current.name in seen:  # checked here so the error points at the second step, not the list
                raise _name_site(item, at.at(i)).error(
                    f"step name {current.name!r} is already used by {at.at(seen[current.name]).path}; "
                    "step names are unique within a pipeline"
                )
            seen[current.name] = i
            built.append(current)
            sites.append(at.at(i))
        return built, sites

    def step(self, data: Any, at: _At) -> Step:
        if not isinstance(data, Mapping):
            raise at.error(
                "a step is a mapping with 'module' or 'function', or one of "
                f"{', '.join(CONSTRUCTS)}; got {_kind(data)} {data!r}"
            )
        construct = [k for k in data if k in CONSTRUCTS]
        if construct:
            kind = construct[0]
            for key in data:
                if key != kind:
                    raise at.at(str(key)).error(
                        f"a {kind} step holds all its keys under '{kind}:'; move {key!r} there"
                        if key in _KEYS[kind]
                        else f"a step is one {'/'.join(CONSTRUCTS)} construct; {key!r} cannot stand beside "
                        f"{kind!r}"
                    )
            build: Callable[[Any, _At], Step] = getattr(self, kind if kind != "map" else "map_")
            return build(data[kind], at.at(kind))
        if "module" in data and "function" in data:
            raise at.error(
                "a step has either 'module' (a catalog module) or 'function' (an import path), not both"
            )
        if "function" in data:
            return self.function_step(data, at)
        if "module" in data:
            return self.module_step(data, at)
        _check_keys(data, sorted(set(_MODULE_KEYS) | set(_FUNCTION_KEYS) | set(CONSTRUCTS)), at, "step")
        raise at.error(
            "a step needs 'module' (a catalog module) or 'function' (an import path), or is one of "
            + ", ".join(CONSTRUCTS)
        )

    def module_step(self, data: Mapping[str, Any], at: _At) -> Step:
        _check_keys(data, _MODULE_KEYS, at, "module step")
        module_spec = {k: data[k] for k in ("module", "signature", "options") if k in data}
        try:
            module = module_from_spec(module_spec, registry=self.registry)
        except SpecError as exc:
            where = at.at(exc.path) if exc.path else at
            raise where.error(exc.message) from exc
        if isinstance(module, dspy.Module):
            setattr(module, MODULE_SPEC_ATTR, module_spec)
        inputs = _renames(data["inputs"], at.at("inputs"), drop=False) if "inputs" in data else None
        outputs = _renames(data["outputs"], at.at("outputs"), drop=True) if "outputs" in data else None
        fields_in = _names(data["input_fields"], at.at("input_fields")) if "input_fields" in data else None
        fields_out = (
            _names(data["output_fields"], at.at("output_fields")) if "output_fields" in data else None
        )
        return self._construct(
            lambda: step(
                module,
                _name(data["name"], at.at("name"), "a name") if "name" in data else None,
                inputs=inputs,
                outputs=outputs,
                input_fields=fields_in,
                output_fields=fields_out,
                **self._options(data, at),
            ),
            at,
            _rename_hints(data, at) | {"ModuleStep takes|no single signature": at.at("module")},
        )

    def function_step(self, data: Mapping[str, Any], at: _At) -> Step:
        _check_keys(data, _FUNCTION_KEYS, at, "function step")
        fn = self.callable(data["function"], at.at("function"), "function")
        if isinstance(fn, dspy.Module):
            raise at.at("function").error(
                f"{data['function']!r} is a dspy.Module instance; a function step runs a plain function"
            )
        if "outputs" not in data:
            raise at.error(
                "a function step must declare what it returns: outputs: [a, b] (it returns a mapping) "
                "or outputs: a (one value)"
            )
        outputs = data["outputs"]
        if isinstance(outputs, str):
            outputs = _name(outputs, at.at("outputs"))
        elif isinstance(outputs, list):
            outputs = _names(outputs, at.at("outputs"))
        else:
            raise at.at("outputs").error(
                "a function step's outputs name what it returns: a list of names (it returns a mapping) or "
                f"one name (its return value); renames are for module steps; got {_kind(outputs)}"
            )
        inputs = _renames(data["inputs"], at.at("inputs"), drop=False) if "inputs" in data else None
        return self._construct(
            lambda: step(
                fn,
                _name(data["name"], at.at("name"), "a name") if "name" in data else None,
                inputs=inputs,
                outputs=outputs,
                **self._options(data, at),
            ),
            at,
            _rename_hints(data, at),
        )

    def parallel(self, data: Any, at: _At) -> Step:
        body = self._body(data, at, "parallel")
        raw = body.get("branches")
        if not isinstance(raw, list):
            raise at.at("branches").error(
                f"'branches' is a list of steps (a list of steps is a sub-pipeline), got {raw!r}"
            )
        branches: list[Any] = []
        for i, item in enumerate(raw):
            where = at.at("branches").at(i)
            branches.append(self._steps(item, where)[0] if isinstance(item, list) else self.step(item, where))
        merge: dict[str, Any] = {}
        raw_merge = body.get("merge") or {}
        if not isinstance(raw_merge, Mapping):
            raise at.at("merge").error(f"'merge' maps fields to rules, got {_kind(raw_merge)} {raw_merge!r}")
        for field, rule in raw_merge.items():
            where = at.at("merge").at(str(field))
            if isinstance(rule, str) and ":" in rule:
                merge[field] = self.callable(rule, where, "merge rule")
            elif isinstance(rule, str) and rule in MERGE_RULES:
                merge[field] = rule
            else:
                raise where.error(
                    did_you_mean(str(rule), MERGE_RULES, what="merge rule")
                    + ", or an import path 'pkg.mod:fn'"
                )
        hints = {rf"merge rules? for \[?'{f}'": at.at("merge").at(str(f)) for f in raw_merge}
        hints["at least two branches"] = at.at("branches")
        return self._construct(
            lambda: Parallel(
                *branches, merge=merge, name=self._name(body, at, "parallel"), **self._renamed(body, at)
            ),
            at,
            _rename_hints(body, at) | hints,
        )

    def when(self, data: Any, at: _At) -> Step:
        body = self._body(data, at, "when")
        condition: Any = body.get("condition")
        where = at.at("condition")
        if isinstance(condition, Mapping):
            _check_keys(condition, ("function",), where, "condition")
            if "function" not in condition:
                raise where.error("a condition is a field name or {function: 'pkg.mod:predicate'}")
            condition = self.callable(condition["function"], where.at("function"), "condition function")
        elif isinstance(condition, str) and ":" in condition:
            raise where.error(
                f"a field name has no ':'; for a predicate write condition: {{function: {condition!r}}}"
            )
        else:
            condition = _name(condition, where, "a field name or {function: 'pkg.mod:predicate'}")
        if "then" not in body:
            raise at.error("a when needs 'then': a step or a list of steps")
        then = self._branch(body["then"], at.at("then"))
        otherwise = self._branch(body["otherwise"], at.at("otherwise")) if "otherwise" in body else None
        return self._construct(
            lambda: When(
                condition, then, otherwise, name=self._name(body, at, "when"), **self._renamed(body, at)
            ),
            at,
            _rename_hints(body, at),
        )

    def map_(self, data: Any, at: _At) -> Step:
        body = self._body(data, at, "map")
        for key in ("step", "over"):
            if key not in body:
                raise at.error(
                    f"a map needs {key!r}: "
                    + ("the step to run per item" if key == "step" else "a list field")
                )
        if isinstance(body["step"], list):
            raise at.at("step").error("a map runs one step; for several, give {pipeline: {steps: [...]}}")
        inner = self.step(body["step"], at.at("step"))
        kwargs: dict[str, Any] = {"over": _name(body["over"], at.at("over"))}
        if "item" in body:
            kwargs["item"] = _name(body["item"], at.at("item"))
        if "into" in body:
            kwargs["into"] = _name(body["into"], at.at("into"))
        if "concurrency" in body:
            kwargs["concurrency"] = _number(body["concurrency"], at.at("concurrency"), int)
        return self._construct(
            lambda: Map(inner, name=self._name(body, at, "map"), **kwargs, **self._renamed(body, at)),
            at,
            _rename_hints(body, at)
            | {"concurrency": at.at("concurrency"), "item field": at.at("item"), "into=": at.at("into")},
        )

    # -- shared pieces -------------------------------------------------------------------------------------
    def _body(self, data: Any, at: _At, kind: str) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise at.error(f"a {kind} is a mapping with keys {', '.join(_KEYS[kind])}, got {_kind(data)}")
        _check_keys(data, _KEYS[kind], at, kind)
        return data

    def _name(self, body: Mapping[str, Any], at: _At, default: str) -> str:
        return _name(body.get("name", default), at.at("name"), "a name")

    def _branch(self, data: Any, at: _At) -> Any:
        return self._steps(data, at)[0] if isinstance(data, list) else self.step(data, at)

    def _options(self, data: Mapping[str, Any], at: _At) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if "timeout" in data:
            options["timeout"] = _number(data["timeout"], at.at("timeout"))
        if "retry" in data:
            options["retry"] = self._retry(data["retry"], at.at("retry"))
        if "fallback" in data:
            options["fallback"] = self.step(data["fallback"], at.at("fallback"))
        if "continue_on_error" in data:
            value = data["continue_on_error"]
            if not isinstance(value, bool):
                raise at.at("continue_on_error").error(f"expected true or false, got {value!r}")
            options["continue_on_error"] = value
        return options

    def _renamed(self, data: Mapping[str, Any], at: _At) -> dict[str, Any]:
        """The options of parallel, when and map: run options and renames of their fields."""
        options = self._options(data, at)
        if "inputs" in data:
            options["inputs"] = _renames(data["inputs"], at.at("inputs"), drop=False)
        if "outputs" in data:
            options["outputs"] = _renames(data["outputs"], at.at("outputs"), drop=True)
        return options

    def _retry(self, data: Any, at: _At) -> RetryPolicy:
        if not isinstance(data, Mapping):
            raise at.error(f"retry is a mapping with keys {', '.join(_RETRY_KEYS)}, got {_kind(data)}")
        _check_keys(data, _RETRY_KEYS, at, "retry")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "retry_on":
                if not isinstance(value, list) or not value:
                    raise at.at(key).error(f"retry_on is a list of exception classes, got {value!r}")
                kwargs[key] = tuple(self._exception(v, at.at(key).at(i)) for i, v in enumerate(value))
            else:
                kwargs[key] = _number(value, at.at(key), int if key == "attempts" else float)
        try:
            return RetryPolicy(**kwargs)
        except ConfigurationError as exc:
            raise _locate(exc, at, {rf"RetryPolicy\.{k}\b": at.at(k) for k in _RETRY_KEYS}) from exc

    def _exception(self, ref: Any, at: _At) -> type[BaseException]:
        cls = getattr(builtins, ref, None) if isinstance(ref, str) and ":" not in ref else None
        if cls is None:
            cls = self.callable(ref, at, "exception class")
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise at.error(f"{ref!r} is not an exception class (TimeoutError, 'pkg.mod:MyError')")
        return cls

    @staticmethod
    def _construct(factory: Callable[[], _S], at: _At, hints: Mapping[str, _At]) -> _S:
        try:
            return factory()
        except SpecError:
            raise
        except UserError as exc:  # ConfigurationError, SignatureError from the pipeline classes
            raise _locate(exc, at, hints) from exc


def _rename_hints(data: Mapping[str, Any], at: _At) -> dict[str, _At]:
    hints: dict[str, _At] = {}
    for kind in _RENAMES:
        value = data.get(kind)
        if isinstance(value, Mapping):
            hints |= {rf"{kind}=\{{'{re.escape(str(k))}'": at.at(kind).at(str(k)) for k in value}
    return hints


def _name_site(item: Any, at: _At) -> _At:
    if isinstance(item, Mapping):
        construct = next((k for k in item if k in CONSTRUCTS), None)
        if construct is not None:
            return at.at(construct).at("name")
        if "name" in item:
            return at.at("name")
    return at
