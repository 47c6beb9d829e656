"""DSPy's prompt optimizers by name, with the options a caller may set, checked as plain data.

::

    spec = OPTIMIZERS["miprov2"]
    options = check_options("miprov2", {"auto": "light", "num_trials": 6})   # or ConfigurationError
    spec.init_options(options), spec.compile_options(options)

Each entry names the real DSPy class (``dspy.MIPROv2``, ``dspy.GEPA``, ``dspy.SIMBA``, ``dspy.COPRO``,
``dspy.BootstrapFewShot``, ``dspy.BootstrapFewShotWithRandomSearch``, ``dspy.Ensemble``) and the options
of its constructor and ``compile`` that are data: counts, temperatures, sizes, flags and fixed choices.
Options that would name code, files, hosts or keys (``prompt_model``, ``teacher_settings``, ``log_dir``,
``instruction_proposer``, ``wandb_api_key``...) are not options here: the LMs come from the App (or a
configured model by name) and the metric from the registered ones, so an option set is safe to accept
over HTTP. An unknown option is an error that lists the valid ones; a value of the wrong type or out of
range is an error that says what is allowed.

``ensemble`` is DSPy's documented pattern: ``BootstrapFewShotWithRandomSearch`` makes candidate programs
and ``dspy.Ensemble(reduce_fn=dspy.majority)`` votes over the best ``size`` of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dspex.errors import ConfigurationError, did_you_mean

__all__ = ["OPTIMIZERS", "OptimizerName", "OptimizerSpec", "Option", "check_options", "check_pooled"]

OptimizerName = Literal["miprov2", "gepa", "simba", "copro", "bootstrap", "bootstrap_rs", "ensemble"]
Where = Literal["init", "compile", "dspex"]
_MAX_COUNT = 10_000


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its JSON type, its bounds or choices, whether null is allowed, and where it goes
    (``init``: the optimizer's constructor, ``compile``: its ``compile``, ``dspex``: read by DSPex)."""

    kind: Literal["int", "float", "bool", "str"]
    where: Where = "init"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ConfigurationError(f"option {name!r} may not be null; {self.describe()}")
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[self.kind]
        if not ok:
            raise ConfigurationError(f"option {name!r} must be {self.describe()}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigurationError(f"option {name!r} must be {self.describe()}, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigurationError(f"option {name!r} must be {self.describe()}, got {value!r}")
        return float(value) if self.kind == "float" else value

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[
                self.kind
            ]
            if self.low is not None and self.high is not None:
                text += f" in [{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text += f" >= {self.low:g}"
        return text + (" or null" if self.nullable else "")


def _count(where: Where = "init", low: int = 0, nullable: bool = False, help: str = "") -> Option:
    return Option("int", where, low=low, high=_MAX_COUNT, nullable=nullable, help=help)


def _temperature(where: Where = "init", help: str = "") -> Option:
    return Option("float", where, low=0.0, high=2.0, help=help)


_THREADS = Option("int", "init", low=1, high=64, nullable=True, help="threads evaluating examples")
_BOOTSTRAP: Mapping[str, Option] = {
    "max_bootstrapped_demos": _count(help="demos made by running the program"),
    "max_labeled_demos": _count(help="demos taken from the trainset as they are"),
    "max_rounds": _count(low=1, help="bootstrapping attempts per example"),
    "max_errors": _count(nullable=True, help="failed calls tolerated"),
    "metric_threshold": Option("float", nullable=True, help="score a trace needs to become a demo"),
}
_RANDOM_SEARCH: Mapping[str, Option] = {
    **_BOOTSTRAP,
    "num_candidate_programs": _count(low=1, help="random demo sets to try"),
    "num_threads": _THREADS,
    "stop_at_score": Option("float", nullable=True, help="stop once a candidate scores this"),
}


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """A DSPy optimizer the jobs can run: its class (by attribute of ``dspy``) and its options."""

    name: str
    dspy_class: str
    options: Mapping[str, Option]
    uses_valset: bool = True
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    # Its program calls (candidate evaluations, traced calls too) may run on a worker pool.
    pooled: bool = False

    def init_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**self.defaults, **options}.items() if self.options[k].where == "init"}

    def compile_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**self.defaults, **options}.items() if self.options[k].where == "compile"}

    def dspex_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**self.defaults, **options}.items() if self.options[k].where == "dspex"}


OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(
    {
        "bootstrap": OptimizerSpec(
            "bootstrap",
            "BootstrapFewShot",
            _BOOTSTRAP,
            uses_valset=False,
            summary="few-shot demos from traces of the program that the metric accepts",
            pooled=True,
        ),
        "bootstrap_rs": OptimizerSpec(
            "bootstrap_rs",
            "BootstrapFewShotWithRandomSearch",
            _RANDOM_SEARCH,
            summary="BootstrapFewShot over random demo sets, the best on the valset kept",
            pooled=True,
        ),
        "ensemble": OptimizerSpec(
            "ensemble",
            "Ensemble",
            {
                **_RANDOM_SEARCH,
                "size": _count(low=1, where="dspex", help="members: the best candidate programs"),
            },
            defaults={"size": 3},
            summary="majority vote of the best bootstrap_rs candidates (dspy.Ensemble)",
            pooled=True,
        ),
        "copro": OptimizerSpec(
            "copro",
            "COPRO",
            {
                "breadth": _count(low=2, help="instructions proposed per round"),
                "depth": _count(low=1, help="rounds of refinement"),
                "init_temperature": _temperature(help="temperature of the proposals"),
                "num_threads": Option("int", "dspex", low=1, high=64, help="threads evaluating candidates"),
            },
            uses_valset=False,
            summary="coordinate ascent over instructions proposed by the LM",
            pooled=True,
        ),
        "miprov2": OptimizerSpec(
            "miprov2",
            "MIPROv2",
            {
                "auto": Option("str", choices=("light", "medium", "heavy"), nullable=True),
                "num_candidates": _count(low=1, nullable=True, help="instruction and demo candidates"),
                "max_bootstrapped_demos": _count(),
                "max_labeled_demos": _count(),
                "num_threads": _THREADS,
                "max_errors": _count(nullable=True),
                "seed": Option("int", low=0, high=2**31 - 1),
                "init_temperature": _temperature(),
                "metric_threshold": Option("float", nullable=True),
                "num_trials": _count("compile", low=1, nullable=True, help="Bayesian optimization trials"),
                "minibatch": Option("bool", "compile"),
                "minibatch_size": _count("compile", low=1),
                "minibatch_full_eval_steps": _count("compile", low=1),
                "program_aware_proposer": Option("bool", "compile"),
                "data_aware_proposer": Option("bool", "compile"),
                "view_data_batch_size": _count("compile", low=1),
                "tip_aware_proposer": Option("bool", "compile"),
                "fewshot_aware_proposer": Option("bool", "compile"),
            },
            summary="instructions and demos proposed, then searched with Optuna TPE on minibatches",
            pooled=True,
        ),
        "simba": OptimizerSpec(
            "simba",
            "SIMBA",
            {
                "bsize": _count(low=1, help="minibatch size (at most the trainset)"),
                "num_candidates": _count(low=1),
                "max_steps": _count(low=1),
                "max_demos": _count(),
                "num_threads": _THREADS,
                "temperature_for_sampling": _temperature(),
                "temperature_for_candidates": _temperature(),
                "seed": Option("int", "compile", low=0, high=2**31 - 1),
            },
            uses_valset=False,
            summary="stochastic introspective mini-batch ascent: rules and demos from hard examples",
            pooled=True,
        ),
        "gepa": OptimizerSpec(
            "gepa",
            "GEPA",
            {
                "auto": Option("str", choices=("light", "medium", "heavy"), nullable=True),
                "max_full_evals": _count(low=1, nullable=True),
                "max_metric_calls": _count(low=1, nullable=True, help="the budget in metric calls"),
                "reflection_minibatch_size": _count(low=1),
                "candidate_selection_strategy": Option("str", choices=("pareto", "current_best")),
                "skip_perfect_score": Option("bool"),
                "add_format_failure_as_feedback": Option("bool"),
                "component_selector": Option("str", choices=("round_robin", "all")),
                "use_merge": Option("bool"),
                "max_merge_invocations": _count(nullable=True),
                "num_threads": _THREADS,
                "failure_score": Option("float"),
                "perfect_score": Option("float"),
                "seed": Option("int", low=0, high=2**31 - 1, nullable=True),
            },
            summary="reflective prompt evolution: an LM reads traces and feedback and rewrites instructions",
            pooled=True,
        ),
    }
)


def check_options(optimizer: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` for ``optimizer``, checked: known names, JSON values of the right type and range.

    >>> check_options("bootstrap", {"max_bootstrapped_demos": 2})
    {'max_bootstrapped_demos': 2}
    """
    spec = OPTIMIZERS.get(optimizer)
    if spec is None:
        raise ConfigurationError(did_you_mean(optimizer, OPTIMIZERS, what="optimizer"))
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"options of {optimizer} must be a JSON object, got {type(options).__name__}"
        )
    checked: dict[str, Any] = {}
    for name, value in options.items():
        option = spec.options.get(str(name))
        if option is None:
            raise ConfigurationError(did_you_mean(str(name), spec.options, what=f"{optimizer} option"))
        checked[str(name)] = option.check(str(name), value)
    if optimizer == "miprov2":
        _check_miprov2(checked)
    if optimizer == "gepa":
        budgets = [k for k in ("auto", "max_full_evals", "max_metric_calls") if checked.get(k) is not None]
        if len(budgets) > 1:
            raise ConfigurationError(
                f"gepa takes one budget, got {', '.join(budgets)}: set one of auto, max_full_evals, "
                "max_metric_calls"
            )
    return checked


def check_pooled(optimizer: str) -> None:
    """ConfigurationError unless ``optimizer``'s candidate evaluations can run on a worker pool.

    >>> check_pooled("miprov2")
    """
    spec = OPTIMIZERS.get(optimizer)
    if spec is None:
        raise ConfigurationError(did_you_mean(optimizer, OPTIMIZERS, what="optimizer"))
    if not spec.pooled:
        pooled = ", ".join(name for name, entry in OPTIMIZERS.items() if entry.pooled)
        raise ConfigurationError(
            f"{optimizer} cannot evaluate its candidates on a pool (its evaluations need DSPy traces, or "
            f"it has no separate evaluation step); pools serve {pooled}: run {optimizer} without a pool"
        )


def _check_miprov2(checked: dict[str, Any]) -> None:
    """MIPROv2 refuses num_trials/num_candidates next to its default auto="light": giving them means auto
    off; without auto it needs both."""
    if "auto" not in checked and ("num_trials" in checked or "num_candidates" in checked):
        checked["auto"] = None
    if "auto" in checked and checked["auto"] is None:
        if checked.get("num_trials") is None or checked.get("num_candidates") is None:
            raise ConfigurationError(
                "miprov2 without auto needs both num_candidates and num_trials (e.g. 4 and 8); "
                "or set auto to light, medium or heavy"
            )
        return
    given = [k for k in ("num_trials", "num_candidates") if checked.get(k) is not None]
    if checked.get("auto") is not None and given:
        raise ConfigurationError(
            f"miprov2 with auto={checked['auto']!r} sets {' and '.join(given)} itself; "
            "drop them or set auto to null"
        )
