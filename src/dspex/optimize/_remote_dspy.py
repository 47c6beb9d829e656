"""DSPy's candidate evaluations elsewhere: ``dspy.Evaluate`` whose program calls run on workers.

::

    evaluate = RemoteEvaluate(remote=lambda candidate: app.pooled(...), devset=valset, metric=metric)
    optimizer = RemoteMIPROv2(metric, evaluate_with=lambda local: RemoteEvaluate(...), auto="light")

:class:`RemoteEvaluate` returns what ``dspy.Evaluate`` returns (``score`` is ``round(100 * sum / n, 2)``
over the metric's values, a failed example counts ``failure_score``, ``max_errors`` failures stop it),
but it sends the candidate to ``remote`` (a function giving the candidate as a
:class:`~dspex.optimize.evaluate.RemoteProgram`: a registered version on a pool with the candidate's
state) and runs the examples there in shards through :class:`~dspex.optimize.Evaluator`; the metric runs
here. Traces do not come back: it is for evaluations that only need each example's prediction (MIPROv2's
minibatch and full evaluations), never for bootstrapping, GEPA's reflective minibatches or SIMBA's
trajectories. :class:`RemoteMIPROv2` is ``dspy.MIPROv2`` with the ``dspy.Evaluate`` that ``compile``
builds for its trials swapped for the one ``evaluate_with`` makes. The pooled versions bound to a
worker pool are :mod:`dspex.distributed.prompts`; the DSPex run of an optimizer uses these from
:func:`~dspex.optimize.dspy_run.optimize_with_dspy` (``remote=``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.evaluate.evaluate import EvaluationResult
from dspy.utils.callback import with_callbacks

from dspex.errors import ConfigurationError
from dspex.optimize.cache import EvalCache
from dspex.optimize.evaluate import Evaluator, RemoteProgram
from dspex.optimize.result import EvaluationResult as DSPexEvaluation

__all__ = ["RemoteEvaluate", "RemoteMIPROv2"]


class RemoteEvaluate(dspy.Evaluate):  # type: ignore[misc]  # dspy is untyped
    """``dspy.Evaluate`` whose program calls run where ``remote(program)`` says (see the module
    docstring). Subclasses may override :meth:`_remote_program` (what is sent) and :meth:`_evaluated`
    (what the caller learns from each evaluation)."""

    def __init__(
        self,
        *,
        remote: Callable[[Any], RemoteProgram],
        devset: Sequence[Any],
        metric: Any,
        num_threads: int | None = None,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        provide_traceback: bool | None = None,
        cache: bool | EvalCache = True,
    ) -> None:
        super().__init__(
            devset=list(devset),
            metric=metric,
            num_threads=num_threads,
            display_progress=False,
            display_table=False,
            max_errors=max_errors,
            failure_score=failure_score,
            provide_traceback=provide_traceback,
        )
        self.remote = remote
        self.cache = cache

    def _remote_program(self, program: Any) -> RemoteProgram:
        return self.remote(program)

    def _evaluated(self, program: Any, result: DSPexEvaluation) -> None:
        """Called with each finished evaluation (its records: cached or not, score, error)."""

    @with_callbacks  # type: ignore[untyped-decorator]  # dspy's callbacks decorator is untyped
    def __call__(
        self,
        program: Any,
        metric: Any = None,
        devset: list[Any] | None = None,
        num_threads: int | None = None,
        display_progress: bool | None = None,
        display_table: bool | int | None = None,
        callback_metadata: dict[str, Any] | None = None,
        save_as_csv: str | None = None,
        save_as_json: str | None = None,
    ) -> EvaluationResult:
        if display_table or save_as_csv or save_as_json:
            raise ConfigurationError(
                "a pooled evaluation returns its results; it does not draw tables or write files "
                "(display_table, save_as_csv, save_as_json)"
            )
        metric = metric if metric is not None else self.metric
        devset = list(devset if devset is not None else self.devset)
        if not devset:
            raise ValueError("devset must contain at least one example, got an empty devset.")
        threads = num_threads or self.num_threads or dspy.settings.num_threads or 1
        max_errors = self.max_errors if self.max_errors is not None else dspy.settings.max_errors
        remote = self._remote_program(program)
        # dspy stops once failures reach max_errors; the Evaluator once they pass it.
        evaluator = Evaluator(
            metric,
            concurrency=max(1, int(threads)),
            cache=self.cache,
            max_errors=None if max_errors is None else max(0, int(max_errors) - 1),
            failure_score=float(self.failure_score),
        )
        result = evaluator.run(remote, devset)
        self._evaluated(program, result)
        by_index = {r.index: r for r in result.records}
        results = []
        for index, example in enumerate(devset):
            record = by_index[index]
            prediction = (
                dspy.Prediction(**record.prediction) if record.prediction is not None else dspy.Prediction()
            )
            results.append((example, prediction, record.score))
        ncorrect = sum(score for *_, score in results)
        return EvaluationResult(score=round(100 * ncorrect / len(devset), 2), results=results)


class RemoteMIPROv2(dspy.MIPROv2):  # type: ignore[misc]  # dspy is untyped
    """``dspy.MIPROv2`` whose trial evaluations are ``evaluate_with(evaluate)``, given the
    ``dspy.Evaluate`` that ``compile`` built (its devset, metric, threads and error settings). Every
    other argument is MIPROv2's own."""

    def __init__(
        self, metric: Any, *, evaluate_with: Callable[[dspy.Evaluate], dspy.Evaluate], **options: Any
    ) -> None:
        super().__init__(metric, **options)
        self.evaluate_with = evaluate_with

    def _optimize_prompt_parameters(
        self,
        program: Any,
        instruction_candidates: dict[int, list[str]],
        demo_candidates: list[Any] | None,
        evaluate: dspy.Evaluate,
        valset: list[Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        return super()._optimize_prompt_parameters(
            program,
            instruction_candidates,
            demo_candidates,
            self.evaluate_with(evaluate),
            valset,
            *args,
            **kwargs,
        )
