"""Evaluation and holistic optimization of DSPy programs.

::

    from dspex.optimize import EarlyStop, Evaluator, HolisticOptimizer, exact_match, f1, lm_judge

    evaluator = Evaluator({"em": exact_match, "f1": f1}, concurrency=32)
    result = evaluator.run(dspy.Predict("question -> answer"), devset, lm=lm)
    print(result.score, result.scores["f1"], result.to_json(records=False))

The optimizer (and Optuna with it) loads on first use of its names.
"""

import typing as _typing

from dspex import _lazy
from dspex.optimize.cache import CachedResult, CacheKey, EvalCache, MemoryCache, example_hash
from dspex.optimize.evaluate import Evaluator, ProgressCallback, configuration_fingerprint
from dspex.optimize.metrics import LMJudge, Metric, MetricLike, Score, as_metric, exact_match, f1, lm_judge
from dspex.optimize.result import EarlyStop, EvaluationAborted, EvaluationResult, ExampleRecord

if _typing.TYPE_CHECKING:
    from dspex.optimize.search import OBJECTIVES, HolisticOptimizer, Objective, OptimizationResult, Pruning

_LAZY = dict.fromkeys(
    ("OBJECTIVES", "HolisticOptimizer", "Objective", "OptimizationResult", "Pruning"), "dspex.optimize.search"
)

__all__ = [
    "OBJECTIVES",
    "CacheKey",
    "CachedResult",
    "EarlyStop",
    "EvalCache",
    "EvaluationAborted",
    "EvaluationResult",
    "Evaluator",
    "ExampleRecord",
    "HolisticOptimizer",
    "LMJudge",
    "MemoryCache",
    "Metric",
    "MetricLike",
    "Objective",
    "OptimizationResult",
    "ProgressCallback",
    "Pruning",
    "Score",
    "as_metric",
    "configuration_fingerprint",
    "exact_match",
    "example_hash",
    "f1",
    "lm_judge",
]

__getattr__, __dir__ = _lazy.attach("dspex.optimize", _LAZY, globals(), __all__)
