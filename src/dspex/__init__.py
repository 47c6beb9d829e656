"""DSPex: run DSPy programs in production.

The public names are listed in ``__all__``. Errors load eagerly (they are tiny); everything else loads
on first use, so ``import dspex`` costs almost nothing and never imports FastAPI, SQLAlchemy, Optuna
or LiteLLM.
"""

import typing as _typing

from dspex import _lazy
from dspex.errors import (
    ConfigurationError,
    DSPexError,
    EvaluationAborted,
    ExecutionError,
    FieldIssue,
    LMError,
    RunError,
    SignatureError,
    SpecError,
    StepError,
    UserError,
    ValidationError,
)

if _typing.TYPE_CHECKING:
    from dspex.lm import build_lm, using
    from dspex.modules import ToolRegistry, build_module, module_from_spec
    from dspex.optimize import Evaluator
    from dspex.pipeline import Pipeline, RetryPolicy
    from dspex.programs import Datasets, ProgramRegistry
    from dspex.runtime import App, RunResult
    from dspex.settings import Settings
    from dspex.signatures import signature, to_spec, validate_inputs, validate_outputs
    from dspex.variables import Configuration, Variable, VariableSpace

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY: dict[str, str] = {
    "App": "dspex.runtime",
    "Datasets": "dspex.programs",
    "Evaluator": "dspex.optimize",
    "Pipeline": "dspex.pipeline",
    "ProgramRegistry": "dspex.programs",
    "RetryPolicy": "dspex.pipeline",
    "RunResult": "dspex.runtime",
    "Settings": "dspex.settings",
    "Configuration": "dspex.variables",
    "Variable": "dspex.variables",
    "VariableSpace": "dspex.variables",
    "ToolRegistry": "dspex.modules",
    "build_module": "dspex.modules",
    "module_from_spec": "dspex.modules",
    "signature": "dspex.signatures",
    "to_spec": "dspex.signatures",
    "validate_inputs": "dspex.signatures",
    "validate_outputs": "dspex.signatures",
    "build_lm": "dspex.lm",
    "using": "dspex.lm",
}

__all__ = [
    "App",
    "Configuration",
    "ConfigurationError",
    "DSPexError",
    "Datasets",
    "EvaluationAborted",
    "Evaluator",
    "ExecutionError",
    "FieldIssue",
    "LMError",
    "Pipeline",
    "ProgramRegistry",
    "RetryPolicy",
    "RunError",
    "RunResult",
    "Settings",
    "SignatureError",
    "SpecError",
    "StepError",
    "ToolRegistry",
    "UserError",
    "ValidationError",
    "Variable",
    "VariableSpace",
    "build_lm",
    "build_module",
    "module_from_spec",
    "signature",
    "to_spec",
    "using",
    "validate_inputs",
    "validate_outputs",
]


__getattr__, __dir__ = _lazy.attach("dspex", _LAZY, globals(), __all__)
