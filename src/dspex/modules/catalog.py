"""The catalog of DSPy modules DSPex can build from a name, a signature and options.

Each :class:`ModuleEntry` names a real DSPy class (rule zero: we build DSPy's modules, never our own) and
lists the options its constructor takes, with types and DSPy's defaults. Option names are DSPy's own
constructor argument names (``N``, ``M``, ``max_iters``), so DSPy's documentation applies unchanged; the
exceptions are ``interpreter`` (for DSPy's ``interpreter_factory``) and the LM options of predictors
(``temperature``, ``max_tokens``, ``config``), which DSPy takes as ``**config``.

What dspy 3.4 ships in ``dspy.predict`` and whether it is here:

=========================  ===========================  ==================================================
DSPy class                 catalog name                 notes
=========================  ===========================  ==================================================
Predict                    predict
ChainOfThought             chain_of_thought
MultiChainComparison       multi_chain_comparison       called with ``completions=[...]`` (M attempts)
ReAct                      react                        tools
ReActV2                    react_v2                     experimental in DSPy; tools, ends with ``submit``
ProgramOfThought           program_of_thought           runs code; deprecated in DSPy 3.4 (use rlm)
CodeAct                    code_act                     runs code; tools; deprecated in DSPy 3.4 (use rlm)
RLM                        rlm                          runs code; experimental in DSPy
Flex                       flex                         runs code; experimental in DSPy
BestOfN                    best_of_n                    wraps a module; reward function
Refine                     refine                       wraps a module; reward function
Parallel                   parallel                     no signature: runs (module, example) pairs
KNN                        --                           see ``NOT_IN_CATALOG``
=========================  ===========================  ==================================================

DSPex's own patterns (``origin="dspex"``, in :mod:`dspex.modules.patterns`), for what DSPy has no module for:
``consensus`` (several modules or models voted by majority, weights or an LM judge), ``self_correcting_cot``
(chain of thought retried with a validator's critique) and ``tree_of_thoughts`` (beam search over partial
thoughts). They are ``dspy.Module`` subclasses built from DSPy predictors, so they are recorded, optimized
and used in pipelines like the rest.

Left out, and why (also in :data:`NOT_IN_CATALOG`, which a test keeps in step with DSPy):

- ``KNN`` is a retriever over a training set, not a module: it has no signature and needs a ``trainset``
  and an embedding ``vectorizer`` (and numpy); it is used through the ``KNNFewShot`` optimizer.
- ``dspy.predict.avatar.Avatar`` is not exported by dspy 3.4 and builds on ``dspy.TypedPredictor``, which
  no longer exists, so it cannot be constructed.
- ``dspy.predict.retry`` is commented out in DSPy; ``majority`` is a function, ``Tool`` a tool type.

Constructor arguments not exposed as options: ``Predict(callbacks=...)`` (set callbacks per run with
``dspy.context(callbacks=...)``) and ``ChainOfThought(rationale_field=..., rationale_field_type=...)``
(pydantic field objects; give a signature with your own ``reasoning`` field to a ``predict`` instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import dspy

from dspex.errors import ConfigurationError, did_you_mean
from dspex.modules._options import REQUIRED, Option
from dspex.modules.patterns import Consensus, SelfCorrectingCoT, TreeOfThoughts

__all__ = ["NOT_IN_CATALOG", "ModuleEntry", "Stability", "catalog", "module_entry", "module_names"]

Stability = Literal["stable", "experimental", "deprecated"]


@dataclass(frozen=True, slots=True)
class ModuleEntry:
    """A DSPy module the catalog can build.

    >>> entry = module_entry("react")
    >>> entry.dspy_class is dspy.ReAct, [o.name for o in entry.options]
    (True, ['tools', 'max_iters'])
    """

    name: str
    dspy_class: type[Any]
    description: str
    options: tuple[Option, ...]
    takes_signature: bool = True
    wraps_module: bool = False
    executes_code: bool = False
    uses_tools: bool = False
    # CodeAct re-defines each tool inside the interpreter from its source code, so its tools must be plain
    # functions whose ``def`` name is the tool name.
    tools_from_source: bool = False
    stability: Stability = "stable"
    note: str = ""
    origin: Literal["dspy", "dspex"] = "dspy"  # "dspex": a pattern DSPex adds (dspex.modules.patterns)

    def option(self, name: str) -> Option | None:
        """The option called ``name``, or ``None``."""
        return next((o for o in self.options if o.name == name), None)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


_LM_OPTIONS = (
    Option(
        "temperature", float | None, None, "Sampling temperature for this predictor (None: the LM's).", "lm"
    ),
    Option("max_tokens", int | None, None, "Output token limit for this predictor (None: the LM's).", "lm"),
    Option(
        "config",
        dict[str, Any] | None,
        None,
        "Further LM keyword arguments for this predictor, e.g. {'n': 3, 'rollout_id': 1}.",
        "lm_dict",
    ),
)

_TOOL_TYPE = list[str | Callable[..., Any]]


def _tools(doc: str = "") -> Option:
    return Option(
        "tools",
        _TOOL_TYPE,
        (),
        "Tools: names in the ToolRegistry or 'package.module:function' import paths; from Python also "
        "callables and dspy.Tool objects." + (f" {doc}" if doc else ""),
        "tools",
    )


INTERPRETER_DOC = (
    "Where generated code runs. 'sandbox' (default): DSPy's PythonInterpreter, Deno + Pyodide (WASM), "
    "isolated from the host; it needs Deno and downloads Pyodide on first use, and "
    "dspy.context(interpreter_factory=...) may substitute another sandbox. 'local': dspy.LocalInterpreter, "
    "a plain Python subprocess with the host user's files, environment, credentials and network: NOT a "
    "sandbox. Choose 'local' only for code you would run yourself."
)
_INTERPRETER = Option("interpreter", Literal["sandbox", "local"], "sandbox", INTERPRETER_DOC, "interpreter")

_REWARD_OPTIONS = (
    Option(
        "module",
        str | Mapping[str, Any] | dspy.Module,
        REQUIRED,
        "The module to run: a nested module spec {module, signature?, options?} or a catalog name (both "
        "use this spec's signature when they give none); from Python also a built dspy.Module.",
        "module",
    ),
    Option("N", int, REQUIRED, "Maximum number of attempts."),
    Option(
        "reward_fn",
        str | Callable[..., Any],
        REQUIRED,
        "reward_fn(inputs: dict, prediction) -> float: a ToolRegistry name, a 'package.module:function' "
        "import path, or (Python) a callable.",
        "function",
    ),
    Option("threshold", float, REQUIRED, "Stop at the first attempt whose reward is at least this."),
    Option("fail_count", int | None, None, "Failed attempts allowed before raising (None: N)."),
)

_ENTRIES = (
    ModuleEntry(
        "predict",
        dspy.Predict,
        "One LM call from the signature's inputs to its outputs.",
        _LM_OPTIONS,
    ),
    ModuleEntry(
        "chain_of_thought",
        dspy.ChainOfThought,
        "Predict with a 'reasoning' output written before the signature's outputs.",
        _LM_OPTIONS,
    ),
    ModuleEntry(
        "multi_chain_comparison",
        dspy.MultiChainComparison,
        "Compares M earlier attempts (call it with completions=[...], each with reasoning and the last "
        "output) and writes a corrected rationale and answer.",
        (
            Option("M", int, 3, "Number of attempts passed in completions."),
            Option("temperature", float, 0.7, "Sampling temperature of the comparison."),
            _LM_OPTIONS[1],
            _LM_OPTIONS[2],
        ),
        note="DSPy builds its fields with the deprecated prefix= argument, so construction emits a "
        "DeprecationWarning from DSPy's code.",
    ),
    ModuleEntry(
        "react",
        dspy.ReAct,
        "Agent loop: think, pick a tool and its arguments, observe; then extract the outputs.",
        (_tools(), Option("max_iters", int, 20, "Maximum tool calls before extracting the outputs.")),
        uses_tools=True,
    ),
    ModuleEntry(
        "react_v2",
        dspy.ReActV2,
        "Agent loop over dspy.ToolCalls (native function calling when the adapter supports it) that ends by "
        "calling the 'submit' tool with the outputs.",
        (_tools("'submit' is reserved."), Option("max_iters", int, 20, "Maximum tool-calling turns.")),
        uses_tools=True,
        stability="experimental",
    ),
    ModuleEntry(
        "program_of_thought",
        dspy.ProgramOfThought,
        "Writes Python code that computes the outputs, runs it, retries on errors, then answers.",
        (Option("max_iters", int, 3, "Maximum code generation attempts."), _INTERPRETER),
        executes_code=True,
        stability="deprecated",
        note="Deprecated in dspy 3.4 and removed in 3.5 (DSPy warns on construction); use rlm.",
    ),
    ModuleEntry(
        "code_act",
        dspy.CodeAct,
        "Agent that writes and runs Python code calling the given tools, then extracts the outputs.",
        (
            _tools("Plain functions defined in a source file; the tool name is the function's name."),
            Option("max_iters", int, 5, "Maximum code steps."),
            _INTERPRETER,
        ),
        executes_code=True,
        uses_tools=True,
        tools_from_source=True,
        stability="deprecated",
        note="Deprecated in dspy 3.4 and removed in 3.5 (DSPy warns on construction); use rlm.",
    ),
    ModuleEntry(
        "rlm",
        dspy.RLM,
        "Recursive language model: explores large inputs by writing code in a REPL, with llm_query() "
        "sub-calls, and finishes with SUBMIT(...).",
        (
            Option("max_iters", int, 20, "Maximum REPL iterations."),
            Option("max_llm_calls", int, 50, "Maximum llm_query sub-calls per run."),
            Option("max_output_chars", int, 10_000, "REPL output characters shown to the LM."),
            Option("verbose", bool, False, "Log each iteration."),
            _tools("Callable from the generated code."),
            Option(
                "sub_lm",
                dspy.BaseLM | None,
                None,
                "(Python only) LM for llm_query sub-calls (None: the context LM).",
            ),
            _INTERPRETER,
        ),
        executes_code=True,
        uses_tools=True,
        stability="experimental",
    ),
    ModuleEntry(
        "flex",
        dspy.Flex,
        "A module whose implementation is code GEPA can rewrite; starts as one Predict (RLM with tools), "
        "run inside the interpreter.",
        (
            _tools(),
            _INTERPRETER,
            Option("max_predictor_calls", int | None, 100, "Predictor calls per run (None: no limit)."),
        ),
        executes_code=True,
        uses_tools=True,
        stability="experimental",
        note="DSPy's bridge calls the LM with messages=, which emits a DeprecationWarning on each run.",
    ),
    ModuleEntry(
        "best_of_n",
        dspy.BestOfN,
        "Runs a module up to N times at temperature 1.0 and returns the best-rewarded prediction.",
        _REWARD_OPTIONS,
        takes_signature=False,
        wraps_module=True,
    ),
    ModuleEntry(
        "refine",
        dspy.Refine,
        "Like best_of_n, but after a low reward the LM writes advice that the next attempt receives.",
        _REWARD_OPTIONS,
        takes_signature=False,
        wraps_module=True,
    ),
    ModuleEntry(
        "parallel",
        dspy.Parallel,
        "Thread-pool runner called with (module, example) pairs; returns their results in order. Takes no "
        "signature and is not a dspy.Module.",
        (
            Option("num_threads", int | None, None, "Threads (None: dspy.settings.num_threads)."),
            Option(
                "max_errors", int | None, None, "Errors before giving up (None: dspy.settings.max_errors)."
            ),
            Option(
                "access_examples", bool, True, "Call modules with Example.inputs() rather than the Example."
            ),
            Option("return_failed_examples", bool, False, "Return (results, failed examples, exceptions)."),
            Option("provide_traceback", bool | None, None, "Log tracebacks of failures."),
            Option("disable_progress_bar", bool, False, "Hide the progress bar."),
            Option("timeout", int, 120, "Seconds before a straggling call is resubmitted."),
            Option("straggler_limit", int, 3, "Stragglers are considered once this few calls remain."),
        ),
        takes_signature=False,
    ),
)

_FUNCTION_DOC = "a ToolRegistry name, a 'package.module:function' import path, or (Python) a callable"
_THREADS = Option("num_threads", int, 4, "Threads running members or tree nodes at once.", minimum=1)

_PATTERNS = (
    ModuleEntry(
        "consensus",
        Consensus,
        "Runs several modules (or one module on several models) on one input in parallel and combines "
        "their answers by majority, learned weights or an LM judge; returns the answer and the agreement.",
        (
            Option(
                "modules",
                list[str | Mapping[str, Any] | dspy.Module],
                (),
                "The members: catalog names or nested module specs (using this spec's signature when they "
                "give none); from Python also built modules. At least 2 unless 'lms' multiplies them.",
                "modules",
            ),
            Option("method", Literal["majority", "weighted", "judge"], "majority", "How answers combine."),
            Option("weights", list[float] | None, None, "One weight >= 0 per member (method 'weighted')."),
            Option("field", str | None, None, "The output compared across members (None: the last output)."),
            Option("lms", list[dspy.BaseLM] | None, None, "(Python only) Models to run each member on."),
            _THREADS,
        ),
        origin="dspex",
    ),
    ModuleEntry(
        "self_correcting_cot",
        SelfCorrectingCoT,
        "Chain of thought checked by a validator; a failed attempt is retried with the critique as "
        "feedback, up to max_corrections times. Every attempt is a span.",
        (
            Option(
                "validator",
                str | Mapping[str, str] | Callable[..., Any],
                "critic",
                "'critic' (an LM critic), {signature: 'answer: int'} (a signature constraint on the outputs), "
                f"or check(inputs, prediction) -> bool | score | (ok, critique): {_FUNCTION_DOC}.",
                "validator",
            ),
            Option(
                "max_corrections",
                int,
                2,
                "Corrections after the first attempt (0: validate only).",
                minimum=0,
            ),
            Option("threshold", float, 1.0, "A check returning a score passes at this score or above."),
            *_LM_OPTIONS,
        ),
        origin="dspex",
    ),
    ModuleEntry(
        "tree_of_thoughts",
        TreeOfThoughts,
        "Expands partial reasoning paths breadth x depth, each level in parallel, scores them by an LM or "
        "a metric, keeps the best 'beam' and answers from the best path; the explored tree is in the trace.",
        (
            Option("breadth", int, 3, "Children proposed per kept node and level.", minimum=1),
            Option("depth", int, 2, "Levels of thoughts before answering.", minimum=1),
            Option("beam", int, 2, "Nodes kept per level.", minimum=1),
            Option(
                "scorer",
                str | Callable[..., Any],
                "lm",
                f"'lm' (an LM rates each path 0-1) or scorer(inputs, path: list[str]) -> float: {_FUNCTION_DOC}.",
                "validator",
            ),
            _THREADS,
            *_LM_OPTIONS,
        ),
        origin="dspex",
    ),
)

_CATALOG: Mapping[str, ModuleEntry] = MappingProxyType({e.name: e for e in (*_ENTRIES, *_PATTERNS)})

NOT_IN_CATALOG: Mapping[str, str] = MappingProxyType(
    {
        "KNN": "a retriever over a trainset with an embedding vectorizer, not a module with a signature; "
        "used through the KNNFewShot optimizer",
    }
)
"""DSPy classes in ``dspy.predict`` that the catalog leaves out, with the reason."""


def catalog() -> Mapping[str, ModuleEntry]:
    """Every catalog entry by name (read-only).

    >>> sorted(catalog())[:3]
    ['best_of_n', 'chain_of_thought', 'code_act']
    """
    return _CATALOG


def module_names() -> tuple[str, ...]:
    """The catalog's module names, sorted.

    >>> "chain_of_thought" in module_names()
    True
    """
    return tuple(sorted(_CATALOG))


def module_entry(name: str) -> ModuleEntry:
    """The entry called ``name``; an unknown name raises ``ConfigurationError`` with a close-match hint.

    >>> module_entry("chain_of_thougt")
    Traceback (most recent call last):
    dspex.errors.ConfigurationError: unknown module 'chain_of_thougt'; did you mean 'chain_of_thought'? ...
    """
    entry = _CATALOG.get(name)
    if entry is None:
        raise ConfigurationError(did_you_mean(name, _CATALOG, what="module"))
    return entry
