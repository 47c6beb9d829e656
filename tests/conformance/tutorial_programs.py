"""DSPy programs written the way DSPy's tutorials write them (importable, for the registry's import path)."""

from __future__ import annotations

from typing import Literal

import dspy
import pydantic

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


def build_multihop() -> MultiHop:
    return MultiHop()


def build_classify() -> dspy.Module:
    return dspy.Predict(Emotion)


def build_async_qa() -> AsyncQA:
    return AsyncQA()


# -- ReAct with tools (DSPy's agents tutorial) ---------------------------------------------------------


def lookup(query: str) -> str:
    """Look a query up in the corpus; returns the best passage."""
    return search(query, k=1)[0]


def build_agent() -> dspy.Module:
    return dspy.ReAct("question -> answer", tools=[lookup], max_iters=3)


# -- typed outputs with Pydantic models --------------------------------------------------------------


class Person(pydantic.BaseModel):
    name: str
    age: int


class ExtractPerson(dspy.Signature):
    """Extract the person the text is about."""

    text: str = dspy.InputField()
    person: Person = dspy.OutputField()
    confidence: float = dspy.OutputField()


def build_extract() -> dspy.Module:
    return dspy.ChainOfThought(ExtractPerson)


# -- conversations with dspy.History ---------------------------------------------------------------------


class Chat(dspy.Signature):
    """Answer the question, taking the conversation so far into account."""

    question: str = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()


class Conversation(dspy.Module):
    """A chat turn: the caller keeps the history, as DSPy's conversation tutorial does."""

    def __init__(self) -> None:
        self.respond = dspy.Predict(Chat)

    def forward(self, question: str, history: dspy.History) -> dspy.Prediction:
        return self.respond(question=question, history=history)


def build_conversation() -> Conversation:
    return Conversation()


# -- a dspy.Parallel batch ---------------------------------------------------------------------------------


class BatchQA(dspy.Module):
    """Answers several questions at once with ``dspy.Parallel`` (threads), as DSPy's docs show."""

    def __init__(self) -> None:
        self.qa = dspy.Predict("question -> answer")
        self.parallel = dspy.Parallel(num_threads=4)

    def forward(self, questions: list[str]) -> dspy.Prediction:
        pairs = [(self.qa, dspy.Example(question=q).with_inputs("question")) for q in questions]
        return dspy.Prediction(answers=[p.answer for p in self.parallel(pairs)])


def build_batch() -> BatchQA:
    return BatchQA()


# -- a program saved with save() and loaded back ------------------------------------------------------------

SAVED_DEMOS = [
    dspy.Example(
        context=["Paris is the capital of France."],
        question="What is the capital of France?",
        reasoning="The passage says so.",
        answer="Paris",
    ),
]


def saved_rag(path: str) -> RAG:
    """A RAG program with a demo and edited instructions, saved to ``path`` (JSON) the DSPy way."""
    program = RAG()
    program.respond.predict.demos = list(SAVED_DEMOS)
    program.respond.predict.signature = program.respond.predict.signature.with_instructions(
        "Answer from the context only."
    )
    program.save(path)
    return program


def loaded_rag(path: str) -> RAG:
    program = RAG()
    program.load(path)
    return program
