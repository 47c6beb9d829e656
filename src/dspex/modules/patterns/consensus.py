"""Consensus: run several modules (or one module on several models) on one input, in parallel, and combine.

::

    vote = Consensus("question -> answer", modules=[a, b, c])                  # majority
    vote = Consensus("question -> answer", modules=[a, b], method="weighted", weights=[0.8, 0.6])
    vote = Consensus("question -> answer", modules=[qa], lms=[small, medium, large])   # one module, 3 models
    vote = build_module("consensus", "question -> answer",
                        modules=["chain_of_thought", {"module": "predict"}], method="judge")
    result = vote(question="...")
    result.answer, result.agreement, result.votes       # the answer, the share of weight behind it, the tally

Members run in parallel (``num_threads``), each as its own span. ``majority`` counts one vote per member,
``weighted`` adds each member's weight (``weights`` is a plain attribute, so a DSPex variable can bind and
optimize it, and :func:`dspex.agents.learned_weights` sets it from recorded accuracy), ``judge`` asks an LM
(``judge``, a real predictor) to pick among the distinct candidates. Answers are compared on ``field`` (the
signature's last output by default) after trimming and case-folding. A tie goes to the candidate first
given by a member in member order (``tied=True`` in the result). A member that fails fails the consensus:
its error propagates rather than being outvoted silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from dspex.errors import ConfigurationError, ExecutionError
from dspex.modules._signature import _to_signature
from dspex.modules.patterns._nodes import annotate, check_minimum, run_parallel

__all__ = ["Consensus", "ConsensusMethod", "Vote", "combine_votes", "normalise_answer"]

ConsensusMethod = Literal["majority", "weighted", "judge"]
_METHODS: tuple[ConsensusMethod, ...] = ("majority", "weighted", "judge")


def normalise_answer(value: Any) -> str:
    """How answers are compared: the text, trimmed, whitespace-collapsed and case-folded."""
    return " ".join(str(value).split()).casefold()


@dataclass(frozen=True, slots=True)
class Vote:
    """How answers combined: the weight behind each (normalised) answer, the winner's index among the
    answers, the share of weight (or of members) behind it, and whether it won a tie."""

    tally: dict[str, float]
    chosen: int
    agreement: float
    tied: bool

    @classmethod
    def judged(cls, answers: Sequence[Any], winner: str) -> Vote:
        keys = [normalise_answer(a) for a in answers]
        tally = {k: float(keys.count(k)) for k in dict.fromkeys(keys)}
        return cls(tally, keys.index(winner), keys.count(winner) / len(keys), False)


def combine_votes(answers: Sequence[Any], weights: Sequence[float] | None = None) -> Vote:
    """Majority (``weights=None``) or weighted vote over ``answers``; a tie goes to the first answer given.

    >>> combine_votes(["4", "5", " 4"]).chosen, combine_votes(["4", "5"], [1.0, 2.0]).chosen
    (0, 1)
    """
    if not answers:
        raise ConfigurationError("a vote needs at least one answer")
    keys = [normalise_answer(a) for a in answers]
    counted = [1.0] * len(keys) if weights is None else list(weights)
    tally: dict[str, float] = {}
    for key, weight in zip(keys, counted, strict=True):
        tally[key] = tally.get(key, 0.0) + weight
    top = max(tally.values())
    leaders = [k for k in tally if tally[k] == top]  # first-seen order: member order
    winner = leaders[0]
    total = sum(tally.values())
    agreement = (
        keys.count(winner) / len(keys) if weights is None else (tally[winner] / total if total else 0.0)
    )
    return Vote(tally, keys.index(winner), agreement, len(leaders) > 1)


class Consensus(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Several modules or models on one input, combined by majority, weights or an LM judge."""

    def __init__(
        self,
        signature: str | type[dspy.Signature],
        modules: Sequence[dspy.Module] = (),
        method: ConsensusMethod = "majority",
        weights: list[float] | None = None,
        field: str | None = None,
        lms: Sequence[dspy.BaseLM] | None = None,
        num_threads: int = 4,
    ) -> None:
        super().__init__()
        sig = _to_signature(signature)
        self.signature = sig  # what pipelines and App.run read: the inputs and outputs it takes
        if method not in _METHODS:
            raise ConfigurationError(
                f"consensus option 'method' is one of {', '.join(_METHODS)}; got {method!r}"
            )
        check_minimum("consensus", "num_threads", num_threads, 1)
        members = list(modules) if modules else [dspy.Predict(sig)]
        if lms:
            # One copy of each module per model: "several models" is several members.
            members = [_on_lm(m, lm) for lm in lms for m in members]
        if len(members) < 2:
            raise ConfigurationError(
                "consensus needs at least 2 members: give 'modules' (2 or more), or 'lms' (models to run "
                f"the module on); got {len(members)}"
            )
        self.members = members
        self.method: ConsensusMethod = method
        self.field = field if field is not None else list(sig.output_fields)[-1]
        if self.field not in sig.output_fields:
            raise ConfigurationError(
                f"consensus option 'field' names an output of the signature ({', '.join(sig.output_fields)}); "
                f"got {field!r}"
            )
        self.weights = _check_weights(weights, len(members)) if weights is not None else [1.0] * len(members)
        if method == "weighted" and weights is None:
            raise ConfigurationError(
                f"consensus method 'weighted' needs option 'weights': one number per member ({len(members)})"
            )
        self.num_threads = num_threads
        self.judge: dspy.Module | None = None
        if method == "judge":
            inputs = ", ".join([*sig.input_fields, "candidates: list[str]"])
            self.judge = dspy.ChainOfThought(
                _to_signature(f"{inputs} -> choice: int").with_instructions(
                    f"Pick the best candidate {self.field} for the inputs; choice is its number (1-based)."
                )
            )

    def forward(self, **inputs: Any) -> dspy.Prediction:
        calls: list[Callable[[], Any]] = [functools.partial(_call, m, inputs) for m in self.members]
        predictions = run_parallel(calls, self.num_threads)
        weights = _check_weights(self.weights, len(self.members))  # a variable may have set them
        answers = [p.get(self.field) for p in predictions]
        if self.method == "judge":
            assert self.judge is not None
            distinct = list(dict.fromkeys(normalise_answer(a) for a in answers))
            keys = [normalise_answer(a) for a in answers]
            candidates = [str(answers[keys.index(k)]) for k in distinct]
            choice = self.judge(**inputs, candidates=candidates).choice
            if not isinstance(choice, int) or not 1 <= choice <= len(distinct):
                raise ExecutionError(
                    f"the consensus judge chose {choice!r}; a choice is a candidate number 1-{len(distinct)}"
                )
            vote = Vote.judged(answers, distinct[choice - 1])
        else:
            vote = combine_votes(answers, weights if self.method == "weighted" else None)
        tally, chosen, agreement, tied = vote.tally, vote.chosen, vote.agreement, vote.tied
        annotate(method=self.method, votes=tally, chosen=chosen, agreement=agreement, tied=tied)
        best = predictions[chosen]
        return dspy.Prediction(
            **{name: best.get(name) for name in best},
            agreement=agreement,
            votes=tally,
            chosen=chosen,
            tied=tied,
        )


def _call(module: dspy.Module, inputs: dict[str, Any]) -> Any:
    return module(**inputs)


def _on_lm(module: dspy.Module, lm: dspy.BaseLM) -> dspy.Module:
    copy = module.deepcopy()
    copy.set_lm(lm)
    return copy


def _check_weights(weights: Any, members: int) -> list[float]:
    if not isinstance(weights, list | tuple) or len(weights) != members:
        raise ConfigurationError(
            f"consensus option 'weights' is a list of {members} numbers (one per member); got {weights!r}"
        )
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
            raise ConfigurationError(f"consensus option 'weights[{i}]' is a number >= 0; got {w!r}")
    if not any(weights):
        raise ConfigurationError("consensus option 'weights' has no positive weight; give at least one > 0")
    return [float(w) for w in weights]
