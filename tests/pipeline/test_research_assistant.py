"""The research-assistant example: its corpus, retrieval, fusion, citations, shape, and full runs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError
from dspex.examples.research_assistant import (
    Passage,
    ResearchIndex,
    arun_example,
    build_pipeline,
    cite,
    default_questions,
    load_corpus,
    majority,
    merge_by_id,
    parse_query,
    rerank,
    run_example,
    select_evidence,
    tokenize,
)
from dspex.pipeline import Event, Map, ModuleStep, Parallel, StepFinished, StepStarted, Token
from dspex.testing import ScriptedEngine, SimServer, load_task
from dspex.testing.simtask import _CAPITALS

DEADLOCK = 20.0
STEPS = (
    "parse_query",
    "refine",
    "search_terms",
    "retrieve",
    "rerank",
    "select_evidence",
    "drafts",
    "compare",
    "cite",
)


@pytest.fixture(scope="module")
def index() -> ResearchIndex:
    return ResearchIndex(load_corpus())


def test_the_bundled_corpus_covers_every_capital_of_the_simulated_task() -> None:
    corpus = load_corpus()
    assert len(corpus) >= 40
    assert len({p.id for p in corpus}) == len(corpus)
    by_title = {p.title: p for p in corpus}
    for country, city in _CAPITALS:
        assert city in by_title[country].text, country


def test_parse_query_normalises_and_extracts_keywords() -> None:
    parsed = parse_query("  Which CITY is the capital\n of New Zealand?? ")
    assert parsed == {
        "query": "which city is the capital of new zealand",
        "keywords": ["capital", "new", "zealand"],
    }
    assert tokenize("What's Peru's capital in 2 words?") == ["peru", "capital", "2", "words"]
    with pytest.raises(ValueError, match="empty"):
        parse_query(" ?? ")


@pytest.mark.parametrize(
    ("terms", "bm25_top", "keyword_top"),
    [
        (["capital", "peru"], "peru", "peru"),
        (["capital", "new", "zealand"], "new-zealand", "new-zealand"),
        (["largest", "australia"], "australia-sydney", "australia-sydney"),
        (["former", "capital", "brazil", "rio"], "brazil-rio", "brazil-rio"),
    ],
)
def test_both_sources_find_the_relevant_passage(
    index: ResearchIndex, terms: list[str], bm25_top: str, keyword_top: str
) -> None:
    bm25 = index.bm25(terms)
    keyword = index.keyword(terms)
    assert bm25[0]["id"] == bm25_top
    assert keyword[0]["id"] == keyword_top
    for hits, source in ((bm25, "bm25"), (keyword, "keyword")):
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert {h["source"] for h in hits} == {source}
        assert len(hits) <= index.k
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert scores[-1] > 0


def test_unknown_terms_find_nothing(index: ResearchIndex) -> None:
    assert index.bm25(["everest", "height"]) == []
    assert index.keyword(["everest", "height"]) == []
    assert index.bm25([]) == index.keyword([]) == []


def test_an_index_rejects_duplicate_ids() -> None:
    with pytest.raises(ConfigurationError, match="repeated: a"):
        ResearchIndex([Passage("a", "A", "x"), Passage("a", "A2", "y")])


def _hit(pid: str, source: str, rank: int) -> dict[str, Any]:
    return {
        "id": pid,
        "title": pid.upper(),
        "text": f"about {pid}",
        "source": source,
        "rank": rank,
        "score": 1.0,
    }


def test_merge_by_id_keeps_each_sources_rank() -> None:
    bm25 = [_hit("a", "bm25", 1), _hit("b", "bm25", 2)]
    keyword = [_hit("b", "keyword", 1), _hit("c", "keyword", 2)]
    merged = merge_by_id([bm25, keyword])
    assert [(m["id"], m["ranks"]) for m in merged] == [
        ("a", {"bm25": 1}),
        ("b", {"bm25": 2, "keyword": 1}),
        ("c", {"keyword": 2}),
    ]
    assert merge_by_id([bm25, []]) == merge_by_id([bm25])


def test_rerank_fuses_ranks_deterministically() -> None:
    hits = merge_by_id(
        [
            [_hit("a", "bm25", 1), _hit("b", "bm25", 2), _hit("d", "bm25", 3)],
            [_hit("b", "keyword", 1), _hit("c", "keyword", 2), _hit("e", "keyword", 3)],
        ]
    )
    ranked = rerank(hits, limit=10)
    # b is found by both sources; a and c tie on score with d and e behind; ties go to best rank, then id.
    assert [h["id"] for h in ranked] == ["b", "a", "c", "d", "e"]
    assert ranked[0]["rrf"] == pytest.approx(1 / 62 + 1 / 61)
    shuffled = list(hits)
    random.Random(7).shuffle(shuffled)
    assert rerank(shuffled, limit=10) == ranked
    assert rerank(hits, limit=2) == ranked[:2]


def test_select_evidence_always_gives_one_passage_per_attempt() -> None:
    ranked = rerank(merge_by_id([[_hit("a", "bm25", 1), _hit("b", "bm25", 2)]]))
    chosen = select_evidence(ranked, 3)
    assert chosen["evidence"] == ["[a] A: about a", "[b] B: about b", "[a] A: about a"]
    assert [s["id"] for s in chosen["sources"]] == ["a", "b"]
    empty = select_evidence([], 2)
    assert len(empty["evidence"]) == 2
    assert empty["sources"] == []


def test_cite_names_the_passages_that_mention_the_answer() -> None:
    sources = [
        {"id": "peru", "title": "Peru", "text": "Lima is the capital of Peru."},
        {"id": "chile", "title": "Chile", "text": "Santiago is the capital of Chile."},
        {"id": "limassol", "title": "Limassol", "text": "Limassol is a port in Cyprus."},
    ]
    drafts = [{"reasoning": "r", "answer": "Lima"}] * 3
    out = cite("Lima", drafts, sources)
    assert out["citations"] == [{"id": "peru", "title": "Peru"}]  # a whole-word match, not "Limassol"
    assert out["answer_source"] == "compare"
    assert out["text"].startswith("Lima [1]")
    assert "[1] Peru (peru)" in out["text"]
    unsupported = cite("Quito", drafts, sources)
    assert unsupported["citations"] == []
    assert "no retrieved passage mentions this answer" in unsupported["text"]
    # An empty comparison falls back to the drafts' majority.
    votes = [{"answer": "Santiago"}, {"answer": " lima "}, {"answer": "Lima"}]
    fallback = cite("", votes, sources)
    assert (fallback["answer"], fallback["answer_source"]) == ("lima", "drafts")
    assert fallback["citations"] == [{"id": "peru", "title": "Peru"}]
    assert majority(["", "  "]) == ""


def test_the_pipeline_has_the_documented_shape() -> None:
    pipeline = build_pipeline(attempts=4)
    assert [s.name for s in pipeline.steps] == list(STEPS)
    assert pipeline.local_inputs == ("question",)
    retrieve = pipeline.steps[STEPS.index("retrieve")]
    assert isinstance(retrieve, Parallel)
    assert [b.name for b in retrieve.branches] == ["bm25", "keyword_index"]
    assert retrieve.merge == {"hits": merge_by_id}
    drafts = pipeline.steps[STEPS.index("drafts")]
    assert isinstance(drafts, Map)
    assert (drafts.over, drafts.item, drafts.into, drafts.concurrency) == ("evidence", "passage", "drafts", 4)
    assert isinstance(drafts.inner, ModuleStep)
    assert isinstance(drafts.inner.module, dspy.ChainOfThought)
    compare = pipeline.steps[STEPS.index("compare")]
    assert isinstance(compare, ModuleStep)
    assert isinstance(compare.module, dspy.MultiChainComparison)
    assert compare.module.M == 4
    assert compare.reads == ("question", "drafts")
    assert compare.writes == ("rationale", "compared_answer")
    # Steps are DSPy modules: an optimizer finds the three LM predictors.
    assert len(pipeline.named_predictors()) == 3
    # Retrieval runs after refinement, in parallel branches, and the drafts wait for the evidence.
    deps = {pipeline.steps[i].name: {pipeline.steps[j].name for j in d} for i, d in enumerate(pipeline._deps)}
    assert deps["retrieve"] == {"search_terms"}
    assert "select_evidence" in deps["drafts"]


def _scripted_lm() -> Any:
    engine = ScriptedEngine(
        {
            "refined_query": lambda inputs: f"capital city of {inputs['query'].rsplit(' ', 1)[-1]}",
            "reasoning": "The passage names the capital.",
            "rationale": "All attempts agree on the capital.",
            "answer": "Lima",
        },
        chunk_size=4,
    )
    return engine.lm()


async def test_a_full_run_answers_with_citations() -> None:
    pipeline = build_pipeline()
    with dspy.context(lm=_scripted_lm()):
        result = await asyncio.wait_for(pipeline.acall(question="What is the capital of Peru?"), DEADLOCK)
    assert result.refined_query == "capital city of peru"
    assert result.terms[:2] == ["capital", "peru"]
    assert result.ranked[0]["id"] == "peru"
    assert len(result.drafts) == 3
    assert all(d["answer"] == "Lima" for d in result.drafts)
    assert (result.answer, result.answer_source) == ("Lima", "compare")
    assert result.citations == [{"id": "peru", "title": "Peru"}]
    assert result.text.startswith("Lima [1]")


async def test_a_streamed_run_reports_every_step_and_streams_the_lm_steps() -> None:
    seen: list[Event] = []
    rows = await asyncio.wait_for(
        arun_example(
            _scripted_lm(),
            ["What is the capital of Peru?"],
            task=load_task(20),
            on_event=lambda _question, event: seen.append(event),
        ),
        DEADLOCK,
    )
    started = {e.step for e in seen if isinstance(e, StepStarted)}
    finished = [e.step for e in seen if isinstance(e, StepFinished)]
    every = {*STEPS, "bm25", "keyword_index", "draft"}
    assert started == every
    assert set(finished) == every
    assert finished.count("draft") == 3
    streamed = {(e.step, e.field) for e in seen if isinstance(e, Token)}
    assert streamed == {
        ("refine", "refined_query"),
        ("draft", "reasoning"),
        ("draft", "answer"),
        ("compare", "rationale"),
        ("compare", "compared_answer"),
    }
    (row,) = rows
    assert row.tokens == sum(isinstance(e, Token) for e in seen)
    assert row.steps == tuple(finished)
    assert row.gold is None
    assert row.correct is None


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


def test_run_example_against_the_simulated_server(sim: SimServer) -> None:
    questions = default_questions(sim.task)
    assert len(questions) == 3
    assert all(sim.task.lookup(q) is not None for q in questions)
    rows = run_example(sim.lm("sim-medium", num_retries=0), task=sim.task)
    assert [r.question for r in rows] == list(questions)
    for row in rows:
        assert row.gold == sim.task.lookup(row.question).answer  # type: ignore[union-attr]
        assert row.answer
        assert row.tokens > 0
        assert set(STEPS) <= set(row.steps)
        for citation in row.citations:  # cited passages really name the answer
            passage = next(p for p in load_corpus() if p.id == citation.id)
            assert row.answer.lower() in passage.text.lower()
        if row.correct:  # the country's own passage was retrieved, so a right answer is always cited
            assert row.citations
    assert any(row.correct for row in rows)
    # Every LM step went over HTTP as a streamed request: refine, three drafts, compare per question.
    assert sim.stats().total_requests == 5 * len(questions)
    assert all(r.stream for r in sim.requests())
