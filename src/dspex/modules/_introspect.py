"""What a DSPy module takes and how to await it: shared by the runtime and pipelines."""

from __future__ import annotations

from typing import Any

import dspy

__all__ = ["acall_module", "has_native_async", "single_signature"]


def single_signature(module: Any) -> Any:
    """The module's signature (``module.signature``, or its only predictor's), or None when ambiguous."""
    signature = getattr(module, "signature", None)
    if signature is not None and hasattr(signature, "input_fields"):
        return signature
    predictors = module.named_predictors() if hasattr(module, "named_predictors") else []
    if len(predictors) == 1:
        return predictors[0][1].signature
    return None


def has_native_async(module: Any) -> bool:
    """Whether the module's class (below ``dspy.Module``) defines ``aforward`` or ``acall`` itself.

    Only Predict, ChainOfThought, ReAct and a few others do; ``dspy.Module.acall`` of the rest fails.
    """
    for cls in type(module).__mro__:
        if cls is dspy.Module:
            return False
        if "aforward" in vars(cls) or "acall" in vars(cls):
            return True
    return False


async def acall_module(module: Any, **kwargs: Any) -> Any:
    """Await the module: its native ``acall`` when it has one, else DSPy's ``asyncify`` (a worker thread)."""
    if has_native_async(module):
        return await module.acall(**kwargs)
    return await dspy.asyncify(module)(**kwargs)
