"""Pipelines: DSPy modules and Python functions composed over named fields, run concurrently.

::

    from dspex.pipeline import Pipeline, RetryPolicy, map, parallel, step, when

    research = Pipeline(
        [
            step(parse_query, outputs=["query"]),
            parallel(step(bm25, outputs=["passages"]), step(keywords, outputs=["passages"]),
                     merge={"passages": "concat"}),
            when("needs_summary", then=map(step(summarise, outputs="summary"), over="passages",
                                            item="passage", into="summaries")),
            step(dspy.ChainOfThought("query, passages -> answer"), timeout=30,
                 retry=RetryPolicy(attempts=2)),
        ],
        name="research",
    )

A pipeline is a ``dspy.Module``: call it, ``await acall`` it, save and load its state, compile it with
a DSPy optimizer; ``stream()`` yields progress events. See :mod:`dspex.pipeline.flow` for the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dspex.pipeline.events import (
    Event,
    Finished,
    StepFailed,
    StepFinished,
    StepRetried,
    StepSkipped,
    StepStarted,
    Token,
)
from dspex.pipeline.flow import MERGE_RULES, Map, Parallel, Pipeline, When
from dspex.pipeline.spec import pipeline_from_spec, pipeline_to_spec, to_yaml
from dspex.pipeline.steps import FunctionStep, ModuleStep, RetryPolicy, Step, StepLike, step

__all__ = [
    "MERGE_RULES",
    "Event",
    "Finished",
    "FunctionStep",
    "Map",
    "ModuleStep",
    "Parallel",
    "Pipeline",
    "RetryPolicy",
    "Step",
    "StepFailed",
    "StepFinished",
    "StepLike",
    "StepRetried",
    "StepSkipped",
    "StepStarted",
    "Token",
    "When",
    "map",
    "parallel",
    "pipeline_from_spec",
    "pipeline_to_spec",
    "step",
    "to_yaml",
    "when",
]


def parallel(
    *branches: StepLike | Sequence[StepLike], merge: Any = None, name: str = "parallel", **options: Any
) -> Parallel:
    """Branches run concurrently; see :class:`~dspex.pipeline.flow.Parallel`."""
    return Parallel(*branches, merge=merge, name=name, **options)


def when(
    condition: str | Callable[..., Any],
    then: StepLike | Sequence[StepLike],
    otherwise: StepLike | Sequence[StepLike] | None = None,
    *,
    name: str = "when",
    **options: Any,
) -> When:
    """Run ``then`` or ``otherwise`` by a condition; see :class:`~dspex.pipeline.flow.When`."""
    return When(condition, then, otherwise, name=name, **options)


def map(  # the construct's name in the pipeline vocabulary; builtins.map stays reachable
    inner: StepLike,
    over: str,
    *,
    item: str = "item",
    into: str | None = None,
    concurrency: int = 4,
    name: str = "map",
    **options: Any,
) -> Map:
    """Fan ``inner`` out over the list field ``over``; see :class:`~dspex.pipeline.flow.Map`."""
    return Map(inner, over, item=item, into=into, concurrency=concurrency, name=name, **options)
