"""Evaluation (and, next, optimization) of DSPy programs.

::

    from dspex.optimize import EarlyStop, Evaluator, exact_match, f1, lm_judge

    evaluator = Evaluator({"em": exact_match, "f1": f1}, concurrency=32)
    result = evaluator.run(dspy.Predict("question -> answer"), devset, lm=lm)
    print(result.score, result.scores["f1"], result.to_json(records=False))
"""

from dspex.optimize.cache import CachedResult, CacheKey, EvalCache, MemoryCache, example_hash
from dspex.optimize.evaluate import Evaluator, ProgressCallback, configuration_fingerprint
from dspex.optimize.metrics import LMJudge, Metric, MetricLike, Score, as_metric, exact_match, f1, lm_judge
from dspex.optimize.result import EarlyStop, EvaluationAborted, EvaluationResult, ExampleRecord

__all__ = [
    "CacheKey",
    "CachedResult",
    "EarlyStop",
    "EvalCache",
    "EvaluationAborted",
    "EvaluationResult",
    "Evaluator",
    "ExampleRecord",
    "LMJudge",
    "MemoryCache",
    "Metric",
    "MetricLike",
    "ProgressCallback",
    "Score",
    "as_metric",
    "configuration_fingerprint",
    "exact_match",
    "example_hash",
    "f1",
    "lm_judge",
]
