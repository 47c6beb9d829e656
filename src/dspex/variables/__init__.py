"""Variables: typed, constrained parameters shared across a program, and how they bind to it.

::

    from dspex.variables import Variable, VariableSpace, bind, apply

    space = VariableSpace([
        Variable.float("temperature", 0.0, 1.5, default=0.7),
        Variable.module_type("reasoning", choices=("predict", "chain_of_thought")),
        Variable.int("demos", 0, 8, default=4),
    ])
    config = space.validate({"temperature": 0.3})        # a hashable Configuration; config.id is its hash
    tuned = apply(program, config, [bind.temperature("temperature"), bind.module_type("reasoning", at=""),
                                    bind.demos("demos")])  # a configured copy; `program` is untouched

Names load on first use: the definitions are light, binding imports DSPy.
"""

import typing as _typing

from dspex import _lazy

if _typing.TYPE_CHECKING:
    from dspex.variables.binding import Binding, Bindings, apply, bind
    from dspex.variables.configuration import Configuration
    from dspex.variables.core import UNSET, Condition, Variable
    from dspex.variables.history import ABSENT, VariableChanged, VariableState
    from dspex.variables.kinds import (
        ChoiceVariable,
        CompositeVariable,
        FloatVariable,
        IntVariable,
        ModelVariable,
        ModuleTypeVariable,
    )
    from dspex.variables.space import Constraint, Derived, VariableSpace

_LAZY = {
    "ABSENT": "dspex.variables.history",
    "Binding": "dspex.variables.binding",
    "Bindings": "dspex.variables.binding",
    "ChoiceVariable": "dspex.variables.kinds",
    "CompositeVariable": "dspex.variables.kinds",
    "Condition": "dspex.variables.core",
    "Configuration": "dspex.variables.configuration",
    "Constraint": "dspex.variables.space",
    "Derived": "dspex.variables.space",
    "FloatVariable": "dspex.variables.kinds",
    "IntVariable": "dspex.variables.kinds",
    "ModelVariable": "dspex.variables.kinds",
    "ModuleTypeVariable": "dspex.variables.kinds",
    "UNSET": "dspex.variables.core",
    "Variable": "dspex.variables.core",
    "VariableChanged": "dspex.variables.history",
    "VariableSpace": "dspex.variables.space",
    "VariableState": "dspex.variables.history",
    "apply": "dspex.variables.binding",
    "bind": "dspex.variables.binding",
}

__all__ = [
    "ABSENT",
    "UNSET",
    "Binding",
    "Bindings",
    "ChoiceVariable",
    "CompositeVariable",
    "Condition",
    "Configuration",
    "Constraint",
    "Derived",
    "FloatVariable",
    "IntVariable",
    "ModelVariable",
    "ModuleTypeVariable",
    "Variable",
    "VariableChanged",
    "VariableSpace",
    "VariableState",
    "apply",
    "bind",
]

__getattr__, __dir__ = _lazy.attach("dspex.variables", _LAZY, globals(), __all__)
