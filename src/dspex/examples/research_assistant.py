"""The research assistant: a pipeline over a bundled corpus that runs offline against the simulated LM.

::

    question -> parse_query -> refine (ChainOfThought) -> search_terms
             -> retrieve: parallel(bm25 (rank_bm25), keyword_index), hits merged by passage id
             -> rerank (reciprocal rank fusion) -> select_evidence (the top M passages)
             -> drafts: map(draft (ChainOfThought), one per passage) -> compare (MultiChainComparison)
             -> cite (the answer, with the passages that mention it)

The corpus (``research_corpus.jsonl`` next to this module) holds short passages about the countries and
capitals of the simulated task (:mod:`dspex.testing.simtask`), and some distractors (the largest city
that is not the capital), so retrieval has something to get right. ::

    from dspex.testing import SimServer

    with SimServer() as sim:
        for row in run_example(sim.lm("sim-large")):
            print(row.question, "->", row.answer, [c.id for c in row.citations], row.correct)

``examples/research_assistant/run.py`` is the runnable version; ``dspex demo`` calls :func:`run_example`.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import dspy

from dspex.errors import ConfigurationError
from dspex.pipeline import Event, Finished, Pipeline, StepFinished, Token, map, parallel, step
from dspex.testing.simtask import SimTask, load_task

__all__ = [
    "RRF_K",
    "Citation",
    "Passage",
    "ResearchIndex",
    "ResearchRow",
    "arun_example",
    "build_pipeline",
    "cite",
    "default_questions",
    "keep_query",
    "load_corpus",
    "majority",
    "merge_by_id",
    "parse_query",
    "rerank",
    "run_example",
    "search_terms",
    "select_evidence",
    "tokenize",
]

RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009): damps the top ranks' weight
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset({
    "a", "about", "after", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "city",
    "country", "did", "do", "does", "for", "from", "has", "have", "how", "i", "in", "into", "is", "it",
    "its", "me", "my", "named", "of", "on", "or", "please", "tell", "that", "the", "their", "there",
    "this", "to", "was", "what", "when", "where", "which", "who", "whose", "why", "with", "you",
})  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Lower-case words without stopwords; retrieval and query parsing share it so their terms match.

    >>> tokenize("What is the capital of France?")
    ['capital', 'france']
    """
    # Single letters are left-overs of possessives and initials ("peru's" -> "peru", "s"): noise for search.
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


# -- the corpus and its two indexes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """One corpus passage."""

    id: str
    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "text": self.text}


def load_corpus(path: str | Path | None = None) -> tuple[Passage, ...]:
    """The bundled corpus, or a JSON-lines file of ``{"id", "title", "text"}`` objects."""
    if path is None:
        text = resources.files("dspex.examples").joinpath("research_corpus.jsonl").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    passages = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            passages.append(Passage(str(row["id"]), str(row["title"]), str(row["text"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"corpus line {number}: expected a JSON object with id, title and text ({exc})"
            ) from None
    return tuple(passages)


class ResearchIndex:
    """Two retrieval sources over one corpus: BM25 (``rank_bm25.BM25Okapi``) and an inverted keyword index.

    Both return hits as dicts ``{"id", "title", "text", "source", "rank", "score"}`` (plain values, so a
    run's record stays JSON), best first, at most ``k``, only passages sharing a term with the query.
    """

    def __init__(self, passages: Sequence[Passage], *, k: int = 5) -> None:
        from rank_bm25 import BM25Okapi  # type: ignore[import-untyped]  # rank_bm25 ships no type hints

        if not passages:
            raise ConfigurationError("a research index needs at least one passage")
        seen = Counter(p.id for p in passages)
        duplicated = sorted(i for i, n in seen.items() if n > 1)
        if duplicated:
            raise ConfigurationError(f"passage ids must be unique; repeated: {', '.join(duplicated)}")
        if k < 1:
            raise ConfigurationError(f"k must be >= 1 hit, got {k}")
        self.passages = tuple(passages)
        self.k = k
        self._bm25 = BM25Okapi([tokenize(f"{p.title} {p.text}") for p in self.passages])
        # term -> {passage index: weight}; a term in the title counts twice, since titles name the subject.
        self._postings: dict[str, dict[int, int]] = {}
        for i, p in enumerate(self.passages):
            for term in set(tokenize(p.text)):
                self._postings.setdefault(term, {})[i] = 1
            for term in set(tokenize(p.title)):
                self._postings.setdefault(term, {})[i] = 2

    def _hits(self, scores: Iterable[tuple[int, float]], source: str) -> list[dict[str, Any]]:
        # Ties go to corpus order, so equal scores rank the same way on every run.
        ranked = sorted(((i, s) for i, s in scores if s > 0), key=lambda pair: (-pair[1], pair[0]))
        return [
            {**self.passages[i].to_dict(), "source": source, "rank": rank, "score": round(float(s), 6)}
            for rank, (i, s) in enumerate(ranked[: self.k], 1)
        ]

    def bm25(self, terms: list[str]) -> list[dict[str, Any]]:
        """The passages BM25 scores highest for ``terms``."""
        return self._hits(enumerate(self._bm25.get_scores(terms)), "bm25") if terms else []

    def keyword(self, terms: list[str]) -> list[dict[str, Any]]:
        """The passages holding the most of ``terms`` (title matches weigh double)."""
        scores: Counter[int] = Counter()
        for term in dict.fromkeys(terms):  # each distinct term once, in order
            scores.update(self._postings.get(term, {}))
        return self._hits(scores.items(), "keyword")


# -- the step functions --------------------------------------------------------------------------


def parse_query(question: str) -> dict[str, Any]:
    """Normalise the question (one line, lower case, no trailing punctuation) and extract its keywords."""
    query = " ".join(question.split()).lower().rstrip("?!.")
    if not query:
        raise ValueError("the question is empty; ask something")
    return {"query": query, "keywords": tokenize(query)}


def keep_query(query: str) -> str:
    """The refinement's fallback: search with the parsed query as it is."""
    return query


def search_terms(keywords: list[str], refined_query: str) -> list[str]:
    """The question's keywords, then the refinement's new terms: a poor refinement cannot lose the
    user's own words, only add to them."""
    return list(dict.fromkeys([*keywords, *tokenize(refined_query)]))


def merge_by_id(branches: list[Any]) -> list[dict[str, Any]]:
    """The retrieval merge rule: one entry per passage id with its rank in each source that found it.

    Takes the branches' hit lists in branch order (the ``parallel`` merge protocol) and keeps the first
    appearance order, so the result does not depend on which branch finished first.
    """
    merged: dict[str, dict[str, Any]] = {}
    for hits in branches:
        for hit in hits or []:
            entry = merged.setdefault(
                hit["id"], {"id": hit["id"], "title": hit["title"], "text": hit["text"], "ranks": {}}
            )
            entry["ranks"][hit["source"]] = hit["rank"]
    return list(merged.values())


def rerank(hits: list[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """Reciprocal rank fusion: score ``sum(1 / (RRF_K + rank))`` over the sources that found a passage.

    Ties go to the better best rank, then to the passage id, so the order is fully deterministic.
    """
    scored = [{**h, "rrf": round(sum(1.0 / (RRF_K + r) for r in h["ranks"].values()), 8)} for h in hits]
    scored.sort(key=lambda h: (-h["rrf"], min(h["ranks"].values()), h["id"]))
    return scored[:limit]


def _passage_text(hit: dict[str, Any]) -> str:
    return f"[{hit['id']}] {hit['title']}: {hit['text']}"


def select_evidence(ranked: list[dict[str, Any]], attempts: int) -> dict[str, Any]:
    """The top ``attempts`` passages, one per draft; MultiChainComparison compares exactly that many.

    With fewer passages the best ones are reused (and with none, every draft says so), so the number of
    drafts never depends on retrieval.
    """
    sources = ranked[:attempts]
    texts = [_passage_text(h) for h in sources] or ["(no passage in the corpus matches the question)"]
    evidence = [texts[i % len(texts)] for i in range(attempts)]
    return {"evidence": evidence, "sources": sources}


def _normal(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def majority(answers: Sequence[str]) -> str:
    """The most common non-empty answer (compared without case or spacing); ties go to the earliest."""
    counts = Counter(_normal(a) for a in answers if _normal(a))
    if not counts:
        return ""
    best = max(counts.values())
    return next(a.strip() for a in answers if counts.get(_normal(a)) == best)


def cite(compared_answer: str, drafts: list[dict[str, Any]], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer with citations: the retrieved passages that mention it.

    The comparison's answer wins; when it is empty (an LM that filled only the rationale) the drafts'
    majority answer stands in, and ``answer_source`` says which one it is. A passage is cited only when
    its text names the answer, so an answer no passage supports has no citations and says so.
    """
    answer = " ".join(str(compared_answer or "").split())
    answer_source = "compare"
    if not answer:
        answer, answer_source = majority([str(d.get("answer", "")) for d in drafts]), "drafts"
    pattern = re.compile(rf"\b{re.escape(answer)}\b", re.IGNORECASE) if answer else None
    citations = [
        {"id": h["id"], "title": h["title"]}
        for h in sources
        if pattern is not None and pattern.search(f"{h['title']} {h['text']}")
    ]
    if citations:
        marks = "".join(f"[{n}]" for n in range(1, len(citations) + 1))
        notes = "\n".join(f"[{n}] {c['title']} ({c['id']})" for n, c in enumerate(citations, 1))
        text = f"{answer} {marks}\n\nSources:\n{notes}"
    else:
        looked = ", ".join(h["id"] for h in sources) or "nothing"
        text = (
            f"{answer or '(no answer)'}\n\n(no retrieved passage mentions this answer; retrieved: {looked})"
        )
    return {"answer": answer, "answer_source": answer_source, "citations": citations, "text": text}


# -- the pipeline --------------------------------------------------------------------------------


def _multi_chain_comparison(attempts: int) -> Any:
    # DSPy builds MultiChainComparison's fields with the deprecated prefix= argument; the warning is about
    # DSPy's own code and would otherwise reach every `dspex demo` user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The 'prefix' argument", category=DeprecationWarning)
        return dspy.MultiChainComparison("question -> answer", M=attempts)


def build_pipeline(
    corpus: Sequence[Passage] | None = None, *, attempts: int = 3, top_k: int = 5, lm_timeout: float = 60.0
) -> Pipeline:
    """The research-assistant pipeline over ``corpus`` (default: the bundled one); see the module docstring.

    ``attempts`` is the number of drafts MultiChainComparison compares, ``top_k`` the hits per source.
    Inputs: ``question``. Outputs: ``answer``, ``citations``, ``text`` and the intermediate fields. ::

        with dspy.context(lm=lm):
            result = build_pipeline().acall(question="What is the capital of Peru?")
    """
    if attempts < 1:
        raise ConfigurationError(f"attempts must be >= 1 draft, got {attempts}")
    index = ResearchIndex(load_corpus() if corpus is None else corpus, k=top_k)

    def choose_evidence(ranked: list[dict[str, Any]]) -> dict[str, Any]:
        return select_evidence(ranked, attempts)

    def fuse(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rerank(hits, limit=max(top_k, attempts))

    return Pipeline(
        [
            step(parse_query, outputs=["query", "keywords"]),
            step(
                dspy.ChainOfThought("query -> refined_query"),
                name="refine",
                outputs={"reasoning": None},
                timeout=lm_timeout,
                fallback=step(keep_query, name="keep_query", outputs="refined_query"),
            ),
            step(search_terms, outputs="terms"),
            parallel(
                step(index.bm25, name="bm25", outputs="hits"),
                step(index.keyword, name="keyword_index", outputs="hits"),
                merge={"hits": merge_by_id},
                name="retrieve",
            ),
            step(fuse, name="rerank", outputs="ranked"),
            step(choose_evidence, name="select_evidence", outputs=["evidence", "sources"]),
            map(
                step(dspy.ChainOfThought("question, passage -> answer"), name="draft", timeout=lm_timeout),
                over="evidence",
                item="passage",
                into="drafts",
                concurrency=attempts,
                name="drafts",
            ),
            step(
                _multi_chain_comparison(attempts),
                name="compare",
                input_fields=["question", "completions"],
                output_fields=["rationale", "answer"],
                inputs={"completions": "drafts"},
                outputs={"answer": "compared_answer"},
                timeout=lm_timeout,
            ),
            step(cite, outputs=["answer", "answer_source", "citations", "text"]),
        ],
        name="research_assistant",
        inputs=["question"],
        outputs=[
            "query",
            "refined_query",
            "terms",
            "ranked",
            "drafts",
            "rationale",
            "compared_answer",
            "answer",
            "answer_source",
            "citations",
            "text",
        ],
    )


# -- running it ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Citation:
    """A cited passage."""

    id: str
    title: str


@dataclass(frozen=True, slots=True)
class ResearchRow:
    """One question through the research assistant: its answer, citations and what the run did."""

    question: str
    refined_query: str
    answer: str
    answer_source: Literal["compare", "drafts"]
    citations: tuple[Citation, ...]
    text: str
    gold: str | None  # the simulated task's answer, when the question is one of its questions
    steps: tuple[str, ...]  # the steps that finished, in order
    tokens: int  # Token events streamed
    duration_ms: float

    @property
    def correct(self) -> bool | None:
        return None if self.gold is None else _normal(self.answer) == _normal(self.gold)


def default_questions(task: SimTask | None = None, n: int = 3) -> tuple[str, ...]:
    """The first ``n`` capital-city questions of the simulated task (the server knows their answers)."""
    items = (task or load_task()).items
    return tuple(ex.question for ex in items if ex.kind == "capital")[:n]


async def arun_example(
    lm: Any,
    questions: Sequence[str] | None = None,
    *,
    task: SimTask | None = None,
    pipeline: Pipeline | None = None,
    on_event: Callable[[str, Event], None] | None = None,
) -> list[ResearchRow]:
    """Stream each question through the pipeline on ``lm``, one after the other; ``on_event`` sees every
    event (with its question) as it happens, LM tokens included."""
    task = task or load_task()
    pipeline = pipeline or build_pipeline()
    rows = []
    for question in default_questions(task) if questions is None else questions:
        started = time.perf_counter()
        finished: list[str] = []
        tokens = 0
        result: Any = None
        with dspy.context(lm=lm):
            async for event in pipeline.stream(question=question):
                if on_event is not None:
                    on_event(question, event)
                if isinstance(event, Token):
                    tokens += 1
                elif isinstance(event, StepFinished):
                    finished.append(event.step)
                elif isinstance(event, Finished):
                    result = event.result
        gold = task.lookup(question)
        rows.append(
            ResearchRow(
                question=question,
                refined_query=str(result.refined_query),
                answer=str(result.answer),
                answer_source=result.answer_source,
                citations=tuple(Citation(c["id"], c["title"]) for c in result.citations),
                text=str(result.text),
                gold=gold.answer if gold is not None else None,
                steps=tuple(finished),
                tokens=tokens,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
    return rows


def run_example(
    lm: Any,
    questions: Sequence[str] | None = None,
    *,
    task: SimTask | None = None,
    pipeline: Pipeline | None = None,
    on_event: Callable[[str, Event], None] | None = None,
) -> list[ResearchRow]:
    """Synchronous :func:`arun_example` (safe to call from inside an event loop too). ::

    with SimServer() as sim:
        rows = run_example(sim.lm("sim-large"))
    """
    from dspex.pipeline._sync import run_coroutine

    return run_coroutine(arun_example(lm, questions, task=task, pipeline=pipeline, on_event=on_event))
