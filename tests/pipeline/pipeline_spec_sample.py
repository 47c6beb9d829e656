"""Importable functions for the pipeline spec tests (import paths like ``pipeline_spec_sample:parse_query``)."""

from __future__ import annotations

from typing import Any

import dspy

from dspex.pipeline import Pipeline, RetryPolicy, map, parallel, step, when


class Flaky(Exception):
    """Raised by ``flaky_once`` on its first call."""


_calls: dict[str, int] = {}


def parse_query(text: str) -> dict[str, Any]:
    words = text.split()
    return {"query": text.strip().lower(), "keywords": words[:2]}


def bm25(query: str) -> list[str]:
    return [f"bm25:{query}"]


def keywords(keywords: list[str]) -> list[str]:
    return [f"kw:{word}" for word in keywords]


def is_long(passages: list[str]) -> bool:
    return len(passages) > 2


def count(passages: list[str]) -> int:
    return len(passages)


def longest(values: list[Any]) -> Any:
    """A merge rule: the longest value."""
    return max(values, key=len)


def shout(passage: str) -> str:
    return passage.upper()


def flaky_once(query: str) -> str:
    """Fails on the first call per query, then answers (for retry tests)."""
    _calls[query] = _calls.get(query, 0) + 1
    if _calls[query] == 1:
        raise Flaky(f"first call for {query!r}")
    return f"ok:{query}"


NOT_CALLABLE = 42
PREDICT = dspy.Predict("question -> answer")


def build() -> Pipeline:
    """A pipeline with every construct, built in Python (for the round trip)."""
    return Pipeline(
        [
            step(parse_query, outputs=["query", "keywords"]),
            step(
                dspy.ChainOfThought("query -> refined", temperature=0.2, max_tokens=300, n=1),
                name="refine",
                outputs={"reasoning": None},
                timeout=30,
                retry=RetryPolicy(attempts=2, backoff=0.0, jitter=0.0, retry_on=(TimeoutError, Flaky)),
                fallback=step(dspy.Predict("query -> refined"), name="refine_plain"),
            ),
            parallel(
                step(bm25, outputs="passages", inputs={"query": "refined"}),
                [step(keywords, name="kw", outputs="passages")],
                merge={"passages": "concat"},
                name="retrieve",
            ),
            when(
                is_long,
                then=step(count, outputs="n"),
                otherwise=[step(count, name="count2", outputs="n")],
                name="gate",
            ),
            map(
                step(shout, outputs="loud"),
                over="passages",
                item="passage",
                into="louds",
                concurrency=2,
                name="each",
            ),
            step(dspy.Predict("query, louds: list[str] -> answer"), name="answer", continue_on_error=True),
        ],
        name="research",
        outputs=["answer", "louds", "n"],
    )
