"""Program sources: an import path to a factory, or a declarative spec; stored as JSON, built on demand.

Stored forms (the ``source`` column and each version's ``state["source"]``)::

    {"v": 1, "kind": "import", "path": "myapp.qa:build"}
    {"v": 1, "kind": "spec", "spec": {"module": "predict", "signature": "q -> a", "options": {...},
                                      "lm": {"model": "openai/gpt-4o-mini", "temperature": 0.2}}}
    {"v": 1, "kind": "pipeline", "spec": {"name": "qa", "steps": [...]}}   # registered as {"pipeline": {...}}
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

import dspy

from dspex.errors import ConfigurationError, SpecError, did_you_mean
from dspex.lm.models import ModelRegistry
from dspex.modules import SPEC_KEYS, ToolRegistry, module_from_spec
from dspex.modules.policy import SpecPolicy
from dspex.programs._json import SECRET_KEYS, check_json

__all__ = ["build_source", "normalise_source"]

_SOURCE_VERSION = 1
_PROGRAM_SPEC_KEYS = (*SPEC_KEYS, "lm")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def normalise_source(source: str | Mapping[str, Any]) -> dict[str, Any]:
    """The stored JSON form of ``source``: an import path ``"pkg.mod:factory"`` or a spec mapping."""
    if isinstance(source, str):
        if not _IMPORT_PATH.match(source):
            raise ConfigurationError(
                f"a program import path looks like 'package.module:factory', got {source!r}; "
                "or pass a spec mapping {'module': ..., 'signature': ...}"
            )
        return {"v": _SOURCE_VERSION, "kind": "import", "path": source}
    if not isinstance(source, Mapping):
        raise ConfigurationError(
            "a program source is an import path 'package.module:factory' or a spec mapping, "
            f"got {type(source).__name__}"
        )
    if "pipeline" in source:
        if set(source) != {"pipeline"} or not isinstance(source["pipeline"], Mapping):
            raise SpecError(
                "a pipeline program is {'pipeline': {name, steps, ...}} (a pipeline spec) and nothing else",
                path="pipeline",
            )
        pipeline: dict[str, Any] = check_json(
            source["pipeline"], "pipeline", error=lambda message, path: SpecError(message, path=path)
        )
        return {"v": _SOURCE_VERSION, "kind": "pipeline", "spec": pipeline}
    for key in source:
        if key not in _PROGRAM_SPEC_KEYS:
            raise SpecError(
                did_you_mean(str(key), _PROGRAM_SPEC_KEYS, what="program spec key"), path=str(key)
            )
    # Stored as JSON, so normalise now (tuples become lists): re-registering compares stored sources.
    spec: dict[str, Any] = check_json(source, "", error=lambda message, path: SpecError(message, path=path))
    if "lm" in spec:
        _check_lm(spec["lm"])
    return {"v": _SOURCE_VERSION, "kind": "spec", "spec": spec}


def _check_lm(lm: Any) -> None:
    if not isinstance(lm, Mapping):
        raise SpecError(
            "lm is a mapping of dspy.LM settings, e.g. {model: openai/gpt-4o-mini, temperature: 0.2}",
            path="lm",
        )
    if not isinstance(lm.get("model"), str) or not lm["model"]:
        raise SpecError(
            "lm needs 'model', a provider/model string like 'openai/gpt-4o-mini'", path="lm.model"
        )
    for key in lm:
        if SECRET_KEYS.search(key):
            raise SpecError(
                f"lm.{key} looks like a credential; credentials come from the environment "
                "(e.g. OPENAI_API_KEY), never from a stored spec",
                path=f"lm.{key}",
            )


def build_source(
    source: Mapping[str, Any], *, tools: ToolRegistry | None = None, models: ModelRegistry | None = None
) -> dspy.Module:
    """Build a fresh program from a stored source (see the module docstring).

    ``tools`` resolves tool and function names; ``models`` builds an ``lm`` that names a configured model
    with that model's endpoint and key (what a spec received over the API must name).
    """
    kind = source.get("kind")
    if kind == "import":
        return _from_import_path(str(source["path"]))
    if kind == "spec":
        return _from_spec(source["spec"], tools, models)
    if kind == "pipeline":
        # Lazily: pipelines sit beside programs, and most programs are not pipelines.
        from dspex.pipeline.spec import pipeline_from_spec

        return pipeline_from_spec(source["spec"], registry=tools)
    raise ConfigurationError(
        f"unknown program source kind {kind!r}; this dspex knows 'import', 'spec' and 'pipeline'"
    )


def _from_spec(
    spec: Mapping[str, Any], tools: ToolRegistry | None, models: ModelRegistry | None
) -> dspy.Module:
    module_spec = {key: value for key, value in spec.items() if key != "lm"}
    module = module_from_spec(module_spec, registry=tools)
    if not isinstance(module, dspy.Module):
        raise SpecError(
            f"module {spec.get('module')!r} builds a {type(module).__name__}, not a dspy.Module; a registered "
            "program must be a module (wrap a parallel runner in a module of your own)",
            path="module",
        )
    if "lm" in spec:
        lm = SpecPolicy(models=models or ModelRegistry()).build_lm(spec["lm"])
        # Every predictor gets the LM: DSPy's dump_state then records it per predictor.
        for _, predictor in module.named_predictors():
            predictor.lm = lm
    return module


def _from_import_path(path: str) -> dspy.Module:
    module_name, _, attribute = path.partition(":")
    try:
        imported = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import {path!r}: no module named {exc.name!r}; check the path and that the package "
                "is installed (or on PYTHONPATH) where the program runs"
            ) from None
        raise ConfigurationError(f"importing module {module_name!r} for {path!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"importing module {module_name!r} for {path!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = imported
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = [name for name in dir(target) if not name.startswith("_")]
            raise ConfigurationError(f"{did_you_mean(part, public, what='attribute')} (in {path!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigurationError(
            f"{path!r} is a {type(target).__name__}, not a factory; point it at a function returning "
            "a dspy.Module"
        )
    try:
        program = target()
    except Exception as exc:
        raise ConfigurationError(f"factory {path!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(program, dspy.Module):
        raise ConfigurationError(
            f"factory {path!r} returned {type(program).__name__}, not a dspy.Module; it must build and "
            "return the program (e.g. return dspy.ChainOfThought('question -> answer'))"
        )
    return program
