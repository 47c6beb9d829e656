"""Metrics for the evaluation engine: exact match, token F1, any DSPy-style callable, and an LM judge.

A metric scores one (example, prediction) pair. Every metric here is a :class:`Metric`: a name, a
synchronous ``metric(example, prediction, trace=None) -> float`` (so it also works as a metric for
``dspy.Evaluate`` and DSPy's optimizers) and an ``await metric.ascore(example, prediction)`` returning
a :class:`Score` (value and optional feedback) that the evaluator uses, so a judge's LM call never
blocks the event loop::

    exact_match(example, prediction)                 # 1.0 / 0.0 on the `answer` field
    exact_match(field="short_answer")                # a Metric on another field
    f1(field="answer")                               # token F1 in [0, 1]
    as_metric(lambda example, pred, trace=None: pred.answer.isdigit())   # any DSPy-style metric
    lm_judge("the answer names the same city as the gold answer", lm=judge_lm)

Text is normalised as DSPy's ``answer_exact_match`` does (Unicode NFD, lower case, no punctuation, no
English articles, collapsed whitespace); a gold value may be a string or a list of acceptable strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import dspy
from dspy.evaluate.metrics import normalize_text

from dspex.errors import ConfigurationError

__all__ = ["LMJudge", "Metric", "MetricLike", "Score", "as_metric", "exact_match", "f1", "lm_judge"]


@dataclass(frozen=True, slots=True)
class Score:
    """One metric's verdict on one example: a number and, for judges, why."""

    value: float
    feedback: str | None = None


def to_score(value: Any, name: str) -> Score:
    """Turn what a metric returned into a :class:`Score`.

    Accepts numbers, booleans and objects with a ``score`` (``dspy.Prediction(score=..., feedback=...)``,
    the shape GEPA metrics return); anything else is a mistake in the metric and says so.
    """
    feedback = None
    if not isinstance(value, bool | int | float) and hasattr(value, "score"):
        feedback = getattr(value, "feedback", None)
        value = value.score
    if isinstance(value, bool):
        return Score(1.0 if value else 0.0, feedback)
    if isinstance(value, int | float) and math.isfinite(value):
        return Score(float(value), None if feedback is None else str(feedback))
    raise ConfigurationError(
        f"metric {name!r} returned {value!r} ({type(value).__name__}); a metric returns a finite number, "
        "a bool, or dspy.Prediction(score=..., feedback=...)"
    )


class Metric:
    """A named metric. Subclasses implement :meth:`__call__`; :meth:`ascore` defaults to calling it.

    >>> class Length(Metric):
    ...     name = "length"
    ...     def __call__(self, example, prediction, trace=None):
    ...         return min(1.0, len(prediction.answer) / 100)
    """

    name: str = "metric"
    # True when scoring must be awaited (an async callable): from a worker thread it then runs on the loop.
    is_async: bool = False

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        raise NotImplementedError

    async def ascore(self, example: Any, prediction: Any) -> Score:
        """The score for the evaluator; override when scoring waits on I/O (an LM, a service)."""
        return to_score(self(example, prediction), self.name)

    def score_sync(self, example: Any, prediction: Any) -> Score:
        """The score with its feedback, computed in the calling thread (the evaluator's worker threads)."""
        return to_score(self(example, prediction), self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _wants_trace(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a third positional argument (DSPy's ``trace``); unknown means yes."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return True
    positional = 0
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


class FunctionMetric(Metric):
    """A callable ``(example, prediction[, trace]) -> float | bool`` as a :class:`Metric`.

    Async callables are awaited. A ``dspy.Module`` used as a metric (``dspy.evaluate.SemanticF1``) runs
    in a worker thread, since its LM call would otherwise block the event loop; ``threaded=True`` does
    the same for any other slow synchronous metric.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, threaded: bool | None = None):
        if not callable(fn):
            raise ConfigurationError(f"a metric must be callable, got {type(fn).__name__} {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self._async = self.is_async = _is_async(fn)
        self._trace = _wants_trace(fn)
        self._threaded = isinstance(fn, dspy.Module) if threaded is None else threaded

    def _call(self, example: Any, prediction: Any, trace: Any = None) -> Any:
        return self.fn(example, prediction, trace) if self._trace else self.fn(example, prediction)

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        if self._async:
            raise ConfigurationError(
                f"metric {self.name!r} is async; await metric.ascore(example, prediction) instead"
            )
        return to_score(self._call(example, prediction, trace), self.name).value

    def score_sync(self, example: Any, prediction: Any) -> Score:
        return to_score(self._call(example, prediction), self.name)

    async def ascore(self, example: Any, prediction: Any) -> Score:
        if self._async:
            result = await self._call(example, prediction)
        elif self._threaded:
            # to_thread copies this context, so dspy.context(lm=...) reaches the thread.
            result = await asyncio.to_thread(self._call, example, prediction)
        else:
            result = self._call(example, prediction)
        return to_score(result, self.name)


MetricLike = Metric | Callable[..., Any]


def as_metric(metric: MetricLike, *, name: str | None = None) -> Metric:
    """``metric`` as a :class:`Metric` (renamed when ``name`` is given).

    >>> as_metric(lambda example, pred: pred.answer == example.answer, name="same").name
    'same'
    """
    if isinstance(metric, Metric):
        if name is None or name == metric.name:
            return metric
        renamed = copy.copy(metric)  # keeps what it is (a judge keeps its feedback), under another name
        renamed.name = name
        return renamed
    return FunctionMetric(metric, name=name)


# -- text metrics ----------------------------------------------------------------------------------


def _field_values(example: Any, prediction: Any, field: str) -> tuple[str, list[str]]:
    """(predicted text, gold texts) of ``field``; a missing field is an error naming the ones present."""
    try:
        predicted = prediction[field] if isinstance(prediction, dict) else getattr(prediction, field)
    except (AttributeError, KeyError):
        keys = sorted(prediction.keys()) if hasattr(prediction, "keys") else []
        raise ConfigurationError(
            f"the prediction has no field {field!r} (it has: {', '.join(keys) or 'none'}); "
            "pass the field to score, e.g. exact_match(field=...)"
        ) from None
    try:
        gold = example[field]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"the example has no label {field!r}; exact match and F1 compare against a gold value"
        ) from None
    golds = [str(g) for g in gold] if isinstance(gold, list | tuple) else [str(gold)]
    if not golds:
        raise ConfigurationError(f"the example's {field!r} is an empty list; give at least one gold value")
    return ("" if predicted is None else str(predicted)), golds


def _token_f1(predicted: str, gold: str) -> float:
    predicted_tokens = normalize_text(predicted).split()
    gold_tokens = normalize_text(gold).split()
    if not predicted_tokens and not gold_tokens:
        return 1.0  # both empty agree; DSPy prints a warning and returns 0 here, which punishes "no answer"
    same = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


class _TextMetric(Metric):
    def __init__(self, kind: str, field: str, score: Callable[[str, str], float]) -> None:
        self.field = field
        self.name = kind if field == "answer" else f"{kind}:{field}"
        self._score = score

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        predicted, golds = _field_values(example, prediction, self.field)
        return max(self._score(predicted, gold) for gold in golds)


def _em(predicted: str, gold: str) -> float:
    return 1.0 if normalize_text(predicted) == normalize_text(gold) else 0.0


_UNSET: Any = object()


@overload
def exact_match(example: Any, prediction: Any, trace: Any = None) -> float: ...
@overload
def exact_match(*, field: str = "answer") -> Metric: ...
def exact_match(
    example: Any = _UNSET, prediction: Any = _UNSET, trace: Any = None, *, field: str = "answer"
) -> float | Metric:
    """Normalised exact match of ``field`` (default ``answer``): called on a pair it scores it, called
    with only ``field=`` it returns the metric for that field.

    >>> exact_match(dspy.Example(answer="Paris"), dspy.Prediction(answer="paris."))
    1.0
    >>> Evaluator(exact_match(field="city"))
    """
    metric = _TextMetric("exact_match", field, _em)
    if example is _UNSET and prediction is _UNSET:
        return metric
    if example is _UNSET or prediction is _UNSET:
        raise ConfigurationError("exact_match takes (example, prediction) or only field=...")
    return metric(example, prediction, trace)


@overload
def f1(example: Any, prediction: Any, trace: Any = None) -> float: ...
@overload
def f1(*, field: str = "answer") -> Metric: ...
def f1(
    example: Any = _UNSET, prediction: Any = _UNSET, trace: Any = None, *, field: str = "answer"
) -> float | Metric:
    """Token F1 of ``field`` against the gold value(s), after the same normalisation as exact match.

    >>> round(f1(dspy.Example(answer="Eiffel Tower"), dspy.Prediction(answer="the Eiffel Tower, Paris")), 2)
    0.8
    """
    metric = _TextMetric("f1", field, _token_f1)
    if example is _UNSET and prediction is _UNSET:
        return metric
    if example is _UNSET or prediction is _UNSET:
        raise ConfigurationError("f1 takes (example, prediction) or only field=...")
    return metric(example, prediction, trace)


# -- LM judge --------------------------------------------------------------------------------------

_JUDGE_INSTRUCTIONS = (
    "You are grading an answer. Criteria: {criteria}\n"
    "`question` holds the task's inputs, `gold` a reference answer (it may be empty), `answer` the answer "
    "to grade. Set `verdict` to true only if the answer meets the criteria, and say why in `reason`."
)


class LMJudge(Metric):
    """A metric that asks an LM whether the answer meets ``criteria``: 1.0 if it does, else 0.0.

    The judge is a ``dspy.Predict`` with the signature ``question, gold, answer -> verdict: bool,
    reason``; its reason becomes the example's feedback. With ``lm=None`` it uses the LM in context
    (the evaluator's). See :func:`lm_judge`.
    """

    def __init__(self, criteria: str, *, lm: Any = None, field: str = "answer", name: str = "lm_judge"):
        if not criteria.strip():
            raise ConfigurationError("lm_judge needs criteria, e.g. 'the answer is factually correct'")
        self.criteria = criteria
        self.lm = lm
        self.field = field
        self.name = name
        signature = dspy.Signature(
            "question, gold, answer -> verdict: bool, reason",
            _JUDGE_INSTRUCTIONS.format(criteria=criteria.strip()),
        )
        self.predict = dspy.Predict(signature)

    def _inputs(self, example: Any, prediction: Any) -> dict[str, str]:
        try:
            answer = (
                prediction[self.field] if isinstance(prediction, dict) else getattr(prediction, self.field)
            )
        except (AttributeError, KeyError):
            raise ConfigurationError(
                f"the prediction has no field {self.field!r} for the judge; pass lm_judge(..., field=...)"
            ) from None
        inputs = example.inputs().toDict() if hasattr(example, "inputs") else {}
        question = (
            str(next(iter(inputs.values())))
            if len(inputs) == 1
            else "\n".join(f"{k}: {v}" for k, v in inputs.items())
        )
        gold = example.get(self.field, "") if hasattr(example, "get") else ""
        return {"question": question, "gold": "" if gold is None else str(gold), "answer": str(answer)}

    def _context(self) -> contextlib.AbstractContextManager[Any]:
        return dspy.context(lm=self.lm) if self.lm is not None else contextlib.nullcontext()

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        with self._context():
            verdict = self.predict(**self._inputs(example, prediction))
        return 1.0 if verdict.verdict is True else 0.0

    async def ascore(self, example: Any, prediction: Any) -> Score:
        with self._context():
            verdict = await self.predict.acall(**self._inputs(example, prediction))
        return Score(1.0 if verdict.verdict is True else 0.0, str(verdict.reason))

    def score_sync(self, example: Any, prediction: Any) -> Score:
        with self._context():
            verdict = self.predict(**self._inputs(example, prediction))
        return Score(1.0 if verdict.verdict is True else 0.0, str(verdict.reason))


def lm_judge(criteria: str, *, lm: Any = None, field: str = "answer", name: str = "lm_judge") -> LMJudge:
    """An LM-as-judge metric: 1.0 when the judge finds the prediction's ``field`` meets ``criteria``.

    >>> judge = lm_judge("names the same city as the gold answer", lm=dspy.LM("openai/gpt-4o-mini"))
    >>> Evaluator([exact_match, judge], primary="lm_judge")
    """
    return LMJudge(criteria, lm=lm, field=field, name=name)
