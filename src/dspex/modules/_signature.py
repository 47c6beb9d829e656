"""The one place module building turns a signature value into a ``dspy.Signature`` class.

``dspex.signatures.signature`` (our validating parser) is used when it is importable; until then DSPy's
own ``dspy.Signature(text)``. Either way a bad string raises ``SignatureError``.
"""

from __future__ import annotations

import importlib
from typing import Any

import dspy

from dspex.errors import DSPexError, SignatureError


def _dspex_parser() -> Any:
    try:
        module = importlib.import_module("dspex.signatures")
    except ImportError:
        return None
    return getattr(module, "signature", None)


def _to_signature(value: Any) -> Any:
    """A ``dspy.Signature`` class from a signature string or class.

    >>> _to_signature("question -> answer").output_fields.keys()
    dict_keys(['answer'])
    """
    if isinstance(value, type) and issubclass(value, dspy.Signature):
        return value
    if not isinstance(value, str):
        raise SignatureError(
            f"a signature is a string like 'question -> answer' or a dspy.Signature class, got {value!r}"
        )
    parse = _dspex_parser()
    try:
        return parse(value) if parse is not None else dspy.Signature(value)
    except DSPexError:
        raise
    except (ValueError, TypeError, SyntaxError, NameError) as e:
        # DSPy's parser reports problems as these; ours raises SignatureError itself.
        raise SignatureError(f"invalid signature {value!r}: {e}", spec=value) from e
