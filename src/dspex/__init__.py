"""DSPex: run DSPy programs in production.

The public names are listed in ``__all__``. Errors load eagerly (they are tiny); everything else loads
on first use, so ``import dspex`` costs almost nothing and never imports FastAPI, SQLAlchemy, Optuna
or LiteLLM.
"""

import importlib as _importlib
import typing as _typing

from dspex.errors import (
    ConfigurationError,
    DSPexError,
    FieldIssue,
    LMError,
    RunError,
    SignatureError,
    SpecError,
    UserError,
    ValidationError,
)

if _typing.TYPE_CHECKING:
    from dspex.lm import build_lm, using
    from dspex.settings import Settings

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY: dict[str, str] = {
    "Settings": "dspex.settings",
    "build_lm": "dspex.lm",
    "using": "dspex.lm",
}

__all__ = [
    "ConfigurationError",
    "DSPexError",
    "FieldIssue",
    "LMError",
    "RunError",
    "Settings",
    "SignatureError",
    "SpecError",
    "UserError",
    "ValidationError",
    "build_lm",
    "using",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
