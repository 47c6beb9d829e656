"""The module catalog: build any DSPy module from a name, a signature and options, in Python or from a spec.

Usage::

    from dspex.modules import ToolRegistry, build_module, module_from_spec

    qa = build_module("chain_of_thought", "question -> answer")
    agent = module_from_spec('''
        module: react
        signature: question -> answer
        options: {tools: [search], max_iters: 5}
    ''', registry=ToolRegistry([search]))

Code-executing modules (program_of_thought, code_act, rlm, flex) run generated code in DSPy's sandboxed
``PythonInterpreter`` unless the option ``interpreter="local"`` opts in to ``dspy.LocalInterpreter``, a plain
subprocess that is not a sandbox.
"""

from dspex.modules._options import REQUIRED, Option, OptionKind
from dspex.modules._yaml import load_yaml
from dspex.modules.build import SPEC_KEYS, build_module, module_from_spec
from dspex.modules.catalog import (
    NOT_IN_CATALOG,
    ModuleEntry,
    Stability,
    catalog,
    module_entry,
    module_names,
)
from dspex.modules.tools import ToolRegistry

__all__ = [
    "NOT_IN_CATALOG",
    "REQUIRED",
    "SPEC_KEYS",
    "ModuleEntry",
    "Option",
    "OptionKind",
    "Stability",
    "ToolRegistry",
    "build_module",
    "catalog",
    "load_yaml",
    "module_entry",
    "module_from_spec",
    "module_names",
]
