"""Capture a program's state as a JSON version payload, and apply a payload to a freshly built program.

The payload (``program_versions.state``)::

    {"v": 1,
     "source": {...},                      # how to build the structure (see _source)
     "dspy": module.dump_state(),          # demos, instructions, field prefixes, the LM per predictor
     "config": {"predict": {"temperature": 0.2}},   # Predict.config, which dump_state drops
     "structure": {"bindings": {...}, "configuration": {"strategy": "chain_of_thought"}}}  # optional

``structure`` (only present when a version was saved with structural variable bindings) is what
``dump_state`` cannot express: which catalog module runs at a path (``module_type``), the adapter
scoping a module, attributes and function parameters set by path. It is re-applied with
:func:`dspex.variables.apply` to the program the source builds, before DSPy's state is loaded.

DSPy 3.4's ``Predict.dump_state`` already records the predictor's LM (``lm.dump_state()``: class, model
and settings, never the API key), so the LM lives there; what DSPy drops is ``Predict.config``, kept in
``config``. LMs are rebuilt with DSPy's own ``BaseLM.load_state`` as trusted state: the store is written
only by registries and already names code to import (import-path sources), and an ``api_base`` must
survive for a version to behave as it did. Credentials are refused when saving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dspy

from dspex.errors import ConfigurationError
from dspex.programs._json import SECRET_KEYS, check_json

if TYPE_CHECKING:
    from dspex.lm.models import ModelRegistry

__all__ = ["PAYLOAD_VERSION", "apply_state", "apply_structure", "capture_state"]

PAYLOAD_VERSION = 1
_LM_CLASS_KEY = "_dspy_lm_class"  # dspy.clients.base_lm.LM_CLASS_STATE_KEY


def capture_state(
    module: dspy.Module, source: Mapping[str, Any], structure: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON payload of ``module``'s current state; raises ConfigurationError if it is not JSON.

    ``structure`` is ``Bindings.structural(configuration)``: how the program differs in shape from the
    one its source builds (see the module docstring)."""
    if not isinstance(module, dspy.Module):
        raise ConfigurationError(f"a program version saves a dspy.Module, got {type(module).__name__}")
    predictors = module.named_predictors()
    for name, predictor in predictors:
        lm = predictor.lm
        if lm is None:
            continue
        try:
            lm.dump_state()
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise ConfigurationError(
                f"predictor {name!r} uses LM {getattr(lm, 'model', lm)!r}, which cannot be saved: {exc}. "
                f"Set {name}.lm = None before saving and pass the LM at run time instead"
            ) from exc
    dspy_state = check_json(module.dump_state(), "state")
    for name, predictor_state in _by_name(module, dspy_state).items():
        lm_state = predictor_state.get("lm") if isinstance(predictor_state, dict) else None
        if lm_state is not None:
            _refuse_secrets(lm_state, f"{name}.lm")
    config = {name: check_json(dict(p.config), f"{name}.config") for name, p in predictors}
    payload = {"v": PAYLOAD_VERSION, "source": dict(source), "dspy": dspy_state, "config": config}
    if structure is not None:
        payload["structure"] = check_json(dict(structure), "structure")
    return payload


def apply_structure(module: dspy.Module, payload: Mapping[str, Any], *, where: str) -> dspy.Module:
    """``module`` (just built from the payload's source) reshaped by the payload's ``structure``, if any."""
    structure = payload.get("structure")
    if structure is None:
        return module
    from dspex.variables.binding import Bindings, apply

    try:
        bindings = Bindings.from_json(structure["bindings"])
        reshaped: dspy.Module = apply(module, structure["configuration"], bindings)
    except (KeyError, TypeError, ConfigurationError) as exc:
        detail = exc.message if isinstance(exc, ConfigurationError) else f"{type(exc).__name__}: {exc}"
        raise ConfigurationError(
            f"{where}: its saved structure (variable bindings) does not apply to the program its "
            f"source builds: {detail}"
        ) from exc
    return reshaped


def _by_name(module: dspy.Module, state: dict[str, Any]) -> dict[str, Any]:
    # named_parameters() calls a bare Predict "self", but its dump_state() is not keyed by that name.
    return {"self": state} if isinstance(module, dspy.Predict) else state


def _refuse_secrets(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if SECRET_KEYS.search(key) and item not in (None, "", {}):
                raise ConfigurationError(
                    f"{path}.{key} looks like a credential and would be stored with the version; "
                    "credentials come from the environment, so remove it from the LM settings"
                )
            _refuse_secrets(item, f"{path}.{key}")


def apply_state(
    module: dspy.Module, payload: Mapping[str, Any], *, where: str, models: ModelRegistry | None = None
) -> None:
    """Load ``payload`` into ``module`` (built from the payload's source). ``where`` names it in errors.

    A predictor LM whose model and endpoint are a configured model's (``models``) is built from the
    settings again (its key, which the saved state never holds, and the App's resilience), with the saved
    sampling settings and the fallback chain the source gave it."""
    if payload.get("v") != PAYLOAD_VERSION:
        raise ConfigurationError(
            f"{where} has state format v{payload.get('v')}; this dspex reads v{PAYLOAD_VERSION}: upgrade dspex"
        )
    # A bare Predict's state is the predictor's own (it has a "signature"), not keyed by predictor name.
    saved = ["self"] if "signature" in payload["dspy"] else sorted(payload["dspy"])
    expected = sorted(name for name, _ in module.named_parameters())
    state = _by_name(module, payload["dspy"])
    if saved != expected:
        raise ConfigurationError(
            f"{where} was saved for a program with predictors {saved}, but its source now builds "
            f"one with {expected}: the code behind the source changed shape, or the program was reshaped by "
            "variable bindings that were not saved with it (save_version(..., variables=, bindings=))"
        )
    lms: dict[str, Any] = {}
    without_lm: dict[str, Any] = {}
    built = dict(module.named_predictors())
    for name, predictor_state in state.items():
        lm_state = predictor_state.get("lm") if isinstance(predictor_state, dict) else None
        if lm_state is not None:
            source_lm = getattr(built.get(name), "lm", None)
            lms[name] = _configured_lm(lm_state, models, source_lm) or _rebuild_lm(
                lm_state, f"{where}, predictor {name!r}"
            )
            predictor_state = {**predictor_state, "lm": None}  # rebuilt above, with a clearer error
        without_lm[name] = predictor_state
    try:
        # DSPy's own loader (transactional); a bare Predict's state is not keyed by name.
        module.load_state(without_lm["self"] if isinstance(module, dspy.Predict) else without_lm)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(
            f"{where} does not fit the program its source builds: {type(exc).__name__}: {exc}"
        ) from exc
    config: Mapping[str, Any] = payload.get("config", {})
    for name, predictor in module.named_predictors():
        predictor.config = dict(config.get(name, {}))
        predictor.lm = lms.get(name)


def _configured_lm(lm_state: Mapping[str, Any], models: ModelRegistry | None, source_lm: Any) -> Any:
    """The saved LM built again from its configured model, or None when no configured model matches."""
    if models is None or lm_state.get(_LM_CLASS_KEY) != "dspy.clients.lm.LM" or lm_state.get("engine"):
        return None
    model, base = lm_state.get("model"), lm_state.get("api_base")
    entry = next(
        (
            models.get(n)
            for n in models.names()
            if models.get(n).model == model and (models.get(n).api_base or None) == (base or None)
        ),
        None,
    )
    if entry is None:
        return None
    from dspex.lm.models import SAMPLING_KEYS

    sampling = {k: lm_state[k] for k in SAMPLING_KEYS if lm_state.get(k) is not None}
    names = getattr(source_lm, "fallback_names", None)
    same = getattr(source_lm, "model", None) == model
    return models.build(entry.name, fallbacks=list(names) if names and same else None, **sampling)


def _rebuild_lm(lm_state: Mapping[str, Any], where: str) -> Any:
    try:
        return dspy.BaseLM.load_state(dict(lm_state), allow_custom_lm_class=True)
    except Exception as exc:  # any failure here means the same thing to the caller: no LM to run with
        engine = lm_state.get("engine")
        engine_class = engine.get("class") if isinstance(engine, dict) else None
        what = f"custom engine `{engine_class}`" if engine_class else f"class `{lm_state.get(_LM_CLASS_KEY)}`"
        raise ConfigurationError(
            f"{where}: its LM {lm_state.get('model')!r} ({what}) cannot be rebuilt: "
            f"{type(exc).__name__}: {exc}. Make that class importable where the program loads, or save "
            "the version without a per-predictor LM and pass the LM at run time"
        ) from exc
