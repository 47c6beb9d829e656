"""DSPy programs written the way DSPy's tutorials write them (importable, for the registry's import path)."""

from __future__ import annotations

from typing import Literal

import dspy

CORPUS = [
    "Paris is the capital of France.",
    "The Seine flows through Paris.",
    "Berlin is the capital of Germany.",
    "DSPy is a framework for programming language models.",
]


def search(query: str, k: int = 2) -> list[str]:
    """A keyword retriever over a tiny corpus (the tutorials use ColBERT; any function will do)."""
    words = set(query.lower().split())
    ranked = sorted(CORPUS, key=lambda passage: -len(words & set(passage.lower().rstrip(".").split())))
    return ranked[:k]


class RAG(dspy.Module):
    """DSPy's RAG tutorial: the module computes ``context`` itself; callers give only ``question``."""

    def __init__(self, num_docs: int = 2) -> None:
        self.num_docs = num_docs
        self.respond = dspy.ChainOfThought("context: list[str], question: str -> answer: str")

    def forward(self, question: str) -> dspy.Prediction:
        context = search(question, k=self.num_docs)
        return self.respond(context=context, question=question)


class MultiHop(dspy.Module):
    """The multi-hop pattern: generate queries, collect notes, answer."""

    def __init__(self, hops: int = 2) -> None:
        self.hops = hops
        self.generate_query = dspy.ChainOfThought("claim, notes: list[str] -> query: str")
        self.answer = dspy.Predict("claim, notes: list[str] -> verdict: bool")

    def forward(self, claim: str) -> dspy.Prediction:
        notes: list[str] = []
        for _ in range(self.hops):
            query = self.generate_query(claim=claim, notes=notes).query
            notes.extend(search(query, k=1))
        return self.answer(claim=claim, notes=notes)


class Emotion(dspy.Signature):
    """Classify the emotion of a sentence."""

    sentence: str = dspy.InputField()
    sentiment: Literal["sadness", "joy", "love", "anger", "fear", "surprise"] = dspy.OutputField()


class AsyncQA(dspy.Module):
    """A module with its own ``aforward`` (and ``forward``), as DSPy's async tutorial writes it."""

    def __init__(self) -> None:
        self.qa = dspy.Predict("question -> answer")

    def forward(self, question: str, style: str = "short") -> dspy.Prediction:
        return self.qa(question=f"{question} ({style})")

    async def aforward(self, question: str, style: str = "short") -> dspy.Prediction:
        return await self.qa.acall(question=f"{question} ({style})")


def build_rag() -> RAG:
    return RAG()
