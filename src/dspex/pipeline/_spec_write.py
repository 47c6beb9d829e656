"""Write a pipeline built in Python back to a spec that :func:`dspex.pipeline.spec.pipeline_from_spec` loads.

Public through :mod:`dspex.pipeline.spec`; see its docstring for the format.
"""

from __future__ import annotations

import builtins
import sys
from dataclasses import fields
from typing import Any

import dspy
import yaml

from dspex.errors import ConfigurationError, SignatureError
from dspex.modules import ToolRegistry
from dspex.pipeline.flow import MERGE_RULES, Map, Parallel, Pipeline, When
from dspex.pipeline.steps import FunctionStep, ModuleStep, RetryPolicy, Step

__all__ = ["MODULE_SPEC_ATTR", "pipeline_to_spec", "to_yaml"]

# Where a module loaded from a spec keeps that spec, so options that cannot be read off the built DSPy
# object (tools, reward functions, wrapped modules) are written back as given. An attribute survives the
# deepcopy DSPy's optimizers make.
MODULE_SPEC_ATTR = "_dspex_module_spec"

# The LM options of predict and chain_of_thought; everything else in Predict.config goes to `config`.
_LM_OPTIONS = ("temperature", "max_tokens")
_RETRY_DEFAULTS = RetryPolicy()


def pipeline_to_spec(
    pipeline: Pipeline, /, *, registry: ToolRegistry | None = None, strict: bool = True
) -> dict[str, Any]:
    """The spec of ``pipeline`` as plain data (dump it as YAML with :func:`to_yaml`, or as JSON).

    Functions (steps, conditions, merge rules, retry exceptions) are written as their import path
    ``module:qualname``, or their name in ``registry`` when registered there. ``predict`` and
    ``chain_of_thought`` modules are written from their signature and LM options; other catalog modules
    only when they were loaded from a spec. What a spec cannot hold raises ``ConfigurationError`` naming
    the step: lambdas and local functions, other modules, a predictor's own LM, and (with ``strict``)
    instructions that differ from the signature's default (``strict=False`` drops them). Demos are state,
    not structure: save them with ``pipeline.save()``. ::

        spec = pipeline_to_spec(pipeline)
        assert pipeline_from_spec(spec).describe() == pipeline.describe()
    """
    if not isinstance(pipeline, Pipeline):
        raise ConfigurationError(f"pipeline_to_spec takes a Pipeline, got {type(pipeline).__name__}")
    return _Writer(registry, strict).pipeline(pipeline)


def to_yaml(pipeline: Pipeline, /, *, registry: ToolRegistry | None = None, strict: bool = True) -> str:
    """:func:`pipeline_to_spec` as YAML text, keys in the order they are documented. ::

    Path("research.yaml").write_text(to_yaml(pipeline))
    """
    spec = pipeline_to_spec(pipeline, registry=registry, strict=strict)
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


class _Writer:
    def __init__(self, registry: ToolRegistry | None, strict: bool) -> None:
        self.registry = registry
        self.strict = strict

    def pipeline(self, p: Pipeline) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": p.name}
        # A pipeline keeps only its resolved field lists, so declared ones are written when they differ
        # from what the steps imply (an undeclared rebuild of the same steps).
        implied = Pipeline(p.steps, name=p.name)
        if p.local_inputs != implied.local_inputs:
            spec["inputs"] = [f for f in p.local_inputs if f not in p.optional_inputs]
        if p.local_outputs != implied.local_outputs:
            spec["outputs"] = list(p.local_outputs)
        if p.sequential:
            spec["sequential"] = True
        spec["steps"] = [self.step(s) for s in p.steps]
        return spec | self.options(p)

    def step(self, s: Step) -> dict[str, Any]:
        if isinstance(s, Pipeline):
            return {"pipeline": self.pipeline(s)}
        if isinstance(s, Parallel):
            branches = [self.branch(b, f"{s.name}[{i}]") for i, b in enumerate(s.branches)]
            body: dict[str, Any] = {"name": s.name, "branches": branches}
            if s.merge:
                body["merge"] = {f: self.merge_rule(rule, s.name) for f, rule in s.merge.items()}
            return {"parallel": body | self.renames(s) | self.options(s)}
        if isinstance(s, When):
            condition: Any = s.field_condition
            if condition is None:
                condition = {"function": self.ref(s.condition, f"the condition of when {s.name!r}")}
            body = {"name": s.name, "condition": condition, "then": self.branch(s.then, f"{s.name}.then")}
            if s.otherwise is not None:
                body["otherwise"] = self.branch(s.otherwise, f"{s.name}.otherwise")
            return {"when": body | self.renames(s) | self.options(s)}
        if isinstance(s, Map):
            body = {
                "name": s.name,
                "step": self.step(s.inner),
                "over": s.over,
                "item": s.item,
                "into": s.into,
            }
            return {"map": body | {"concurrency": s.concurrency} | self.renames(s) | self.options(s)}
        if isinstance(s, FunctionStep):
            outputs: Any = s.local_outputs[0] if s.single else list(s.local_outputs)
            spec = {"name": s.name, "function": self.ref(s.fn, f"the function of step {s.name!r}")}
            return spec | self.renames(s) | {"outputs": outputs} | self.options(s)
        if isinstance(s, ModuleStep):
            return {"name": s.name, **self.module(s)} | self.renames(s) | self.fields(s) | self.options(s)
        raise ConfigurationError(
            f"step {s.name!r} is a {type(s).__name__}, which a spec cannot hold; specs hold module and "
            "function steps, parallel, when, map and pipelines"
        )

    def branch(self, s: Step, auto_name: str) -> Any:
        """A sub-pipeline the construct made from a list is written back as that list."""
        if isinstance(s, Pipeline) and s.name == auto_name and self.pipeline(s).keys() <= {"name", "steps"}:
            return [self.step(inner) for inner in s.steps]
        return self.step(s)

    def renames(self, s: Step) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if s.input_map:
            spec["inputs"] = dict(s.input_map)
        if s.output_map:
            spec["outputs"] = dict(s.output_map)
        return spec

    def fields(self, s: ModuleStep) -> dict[str, Any]:
        signature = _single_signature(s.module)
        if signature is not None and (tuple(signature.input_fields), tuple(signature.output_fields)) == (
            s.local_inputs,
            s.local_outputs,
        ):
            return {}
        return {"input_fields": list(s.local_inputs), "output_fields": list(s.local_outputs)}

    def options(self, s: Step) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if s.timeout is not None:
            spec["timeout"] = s.timeout
        if s.retry is not None:
            spec["retry"] = self.retry(s.retry, s.name)
        if s.fallback is not None:
            spec["fallback"] = self.step(s.fallback)
        if s.continue_on_error:
            spec["continue_on_error"] = True
        return spec

    def retry(self, policy: RetryPolicy, step: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"attempts": policy.attempts}
        for f in fields(RetryPolicy):
            value = getattr(policy, f.name)
            if f.name != "attempts" and value != getattr(_RETRY_DEFAULTS, f.name):
                spec[f.name] = value
        if "retry_on" in spec:
            spec["retry_on"] = [self.ref(cls, f"retry_on of step {step!r}") for cls in policy.retry_on]
        return spec

    def merge_rule(self, rule: Any, step: str) -> str:
        if isinstance(rule, str):
            return rule
        for name, builtin_rule in MERGE_RULES.items():
            if rule is builtin_rule:
                return name
        return self.ref(rule, f"a merge rule of parallel {step!r}")

    def ref(self, obj: Any, what: str) -> str:
        """A registry name or an import path that resolves back to ``obj``."""
        if self.registry is not None:
            for name in self.registry.names():
                if self.registry.resolve(name) is obj:
                    return name
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module == "builtins" and getattr(builtins, str(qualname), None) is obj:
            return str(qualname)
        if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
            raise ConfigurationError(
                f"cannot write {what} ({obj!r}) to a spec: a lambda or a function defined inside another "
                "function has no import path; define it at module level (or register it in a ToolRegistry "
                "and pass registry=)"
            )
        path = f"{module}:{qualname}"
        if module == "__main__" or _follow(module, qualname) is not obj:
            raise ConfigurationError(
                f"cannot write {what} to a spec: {path!r} does not import back to it (defined in __main__, "
                "decorated, or rebound); move it to an importable module"
            )
        return path

    def module(self, s: ModuleStep) -> dict[str, Any]:
        module = s.module
        if type(module) in (dspy.Predict, dspy.ChainOfThought):
            return self.predictor(s)
        recorded = getattr(module, MODULE_SPEC_ATTR, None)
        if isinstance(recorded, dict):
            return dict(recorded)
        raise ConfigurationError(
            f"cannot write step {s.name!r} to a spec: its {type(module).__name__} was built in Python, and only "
            "predict and chain_of_thought modules can be read back from the object; load the step from a "
            "spec (its options are kept) or build it with dspex.modules.module_from_spec"
        )

    def predictor(self, s: ModuleStep) -> dict[str, Any]:
        from dspex.signatures import signature as parse_signature
        from dspex.signatures import to_spec

        module = s.module
        is_cot = isinstance(module, dspy.ChainOfThought)
        predict = module.predict if is_cot else module
        signature = predict.signature.delete("reasoning") if is_cot else predict.signature
        if predict.lm is not None:
            raise ConfigurationError(
                f"cannot write step {s.name!r} to a spec: its predictor has its own LM, which a spec does "
                "not hold; set the LM for the run instead (dspy.context(lm=...))"
            )
        try:
            text = to_spec(signature)
        except SignatureError as exc:
            raise ConfigurationError(f"cannot write step {s.name!r} to a spec: {exc.message}") from exc
        if self.strict and parse_signature(text).instructions != signature.instructions:
            raise ConfigurationError(
                f"cannot write step {s.name!r} to a spec: its signature has instructions "
                f"({_short(signature.instructions)}) that a spec does not hold; pass strict=False to drop "
                "them, and keep optimized state with pipeline.save()"
            )
        spec: dict[str, Any] = {"module": "chain_of_thought" if is_cot else "predict", "signature": text}
        config = dict(predict.config)
        options = {k: config.pop(k) for k in _LM_OPTIONS if config.get(k) is not None}
        if config:
            options["config"] = config
        if options:
            spec["options"] = options
        return spec


def _single_signature(module: Any) -> Any:
    signature = getattr(module, "signature", None)
    if signature is not None and hasattr(signature, "input_fields"):
        return signature
    predictors = module.named_predictors()
    return predictors[0][1].signature if len(predictors) == 1 else None


def _follow(module: str, qualname: str) -> Any:
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
