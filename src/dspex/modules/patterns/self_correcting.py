"""Self-correcting chain of thought: answer, validate, and on failure try again with the critique.

::

    def exact(inputs, prediction):                      # a Python check: bool, a score, or (ok, critique)
        ok = eval_arithmetic(inputs["question"]) == prediction.answer
        return ok, "" if ok else "the arithmetic does not check out; recompute step by step"

    solver = SelfCorrectingCoT("question -> answer: int", validator=exact, max_corrections=2)
    solver = build_module("self_correcting_cot", "question -> answer: int",
                          validator="critic", max_corrections=2)                   # an LM critic
    solver = build_module("self_correcting_cot", "question -> answer",
                          validator={"signature": "answer: Literal['yes', 'no']"})  # a signature constraint

The first attempt is ``solve`` (a ``dspy.ChainOfThought`` over the signature); each correction is
``correct``, the same signature plus the rejected attempt and the validator's critique as inputs, so the
LM backtracks from a known-bad answer. Both are real predictors that DSPy's optimizers compile. It stops at
the first attempt the validator passes, or after ``max_corrections`` corrections, returning the best
attempt (``passed=False`` when none passed). Every attempt is a span (``attempt 0``, ``attempt 1``...)
with ``passed``, ``score`` and ``critique``. A validator that raises fails the run: the error propagates
and the run's record says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dspy

from dspex.errors import ConfigurationError, ValidationError
from dspex.modules._signature import _to_signature
from dspex.modules.patterns._nodes import Node, annotate, check_minimum

__all__ = ["Check", "SelfCorrectingCoT", "Verdict"]

Check = Callable[[dict[str, Any], dspy.Prediction], Any]
"""``check(inputs, prediction)`` returning ``bool``, a score (passes at ``threshold``) or ``(ok, critique)``."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a validator said about one attempt."""

    passed: bool
    score: float
    critique: str


def _verdict(result: Any, threshold: float) -> Verdict:
    critique = ""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, critique = result
    if isinstance(result, bool):
        return Verdict(result, 1.0 if result else 0.0, critique)
    if isinstance(result, int | float):
        return Verdict(float(result) >= threshold, float(result), critique)
    raise TypeError(
        "a self_correcting_cot validator returns a bool, a number or (bool | number, critique: str); "
        f"got {type(result).__name__} {result!r}"
    )


def _prediction_text(prediction: dspy.Prediction, names: list[str]) -> str:
    return "\n".join(f"{name}: {prediction.get(name)}" for name in names)


class SelfCorrectingCoT(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Chain of thought plus a validator, retried with the critique as feedback (see the module doc)."""

    def __init__(
        self,
        signature: str | type[dspy.Signature],
        validator: Check | str | Mapping[str, str] = "critic",
        max_corrections: int = 2,
        threshold: float = 1.0,
        **config: Any,
    ) -> None:
        super().__init__()
        check_minimum("self_correcting_cot", "max_corrections", max_corrections, 0)
        sig = _to_signature(signature)
        self.signature = sig  # what pipelines and App.run read: the inputs and outputs it takes
        self.max_corrections = max_corrections
        self.threshold = float(threshold)
        self.output_names = list(sig.output_fields)
        self.solve = dspy.ChainOfThought(sig, **config)
        self.correct = dspy.ChainOfThought(
            sig.append(
                "rejected_attempt", dspy.InputField(desc="an earlier answer that failed validation"), str
            )
            .append("critique", dspy.InputField(desc="why it failed: fix this"), str)
            .append_instructions(
                "An earlier attempt was rejected; backtrack and correct it using the critique."
            ),
            **config,
        )
        self.critic: dspy.Module | None = None
        self._check: Check | None = None
        self._constraint: type[dspy.Signature] | None = None
        if validator == "critic":
            critic_sig = _to_signature(
                f"{', '.join([*sig.input_fields, 'proposed_answer'])} -> ok: bool, critique"
            ).with_instructions(
                "Check the proposed answer. ok is true only if it is correct and complete; otherwise the "
                "critique says what is wrong."
            )
            self.critic = dspy.ChainOfThought(critic_sig)
        elif isinstance(validator, Mapping):
            self._constraint = _constraint(sig, validator)
        elif callable(validator):
            self._check = validator
        else:
            raise ConfigurationError(
                "self_correcting_cot option 'validator' is 'critic', {'signature': 'answer: int'} or a "
                f"check function; got {validator!r}"
            )

    def validate(self, inputs: dict[str, Any], prediction: dspy.Prediction) -> Verdict:
        """The validator's verdict on ``prediction`` (raises what the validator raises)."""
        if self._check is not None:
            return _verdict(self._check(dict(inputs), prediction), self.threshold)
        if self._constraint is not None:
            from dspex.signatures import validate_outputs

            names = list(self._constraint.output_fields)
            try:
                validate_outputs(self._constraint, {name: prediction.get(name) for name in names})
            except ValidationError as exc:
                return Verdict(False, 0.0, exc.message)
            return Verdict(True, 1.0, "")
        assert self.critic is not None
        judged = self.critic(**inputs, proposed_answer=_prediction_text(prediction, self.output_names))
        ok = bool(judged.ok)
        return Verdict(ok, 1.0 if ok else 0.0, str(judged.critique or ""))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        attempts: list[tuple[dspy.Prediction, Verdict]] = []
        for index in range(self.max_corrections + 1):
            previous = attempts[-1] if attempts else None

            def attempt(
                previous: tuple[dspy.Prediction, Verdict] | None = previous, index: int = index
            ) -> Any:
                if previous is None:
                    prediction = self.solve(**inputs)
                else:
                    prediction = self.correct(
                        **inputs,
                        rejected_attempt=_prediction_text(previous[0], self.output_names),
                        critique=previous[1].critique or "the answer failed validation",
                    )
                verdict = self.validate(inputs, prediction)
                annotate(attempt=index, passed=verdict.passed, score=verdict.score, critique=verdict.critique)
                return prediction, verdict

            attempts.append(Node(f"attempt {index}", attempt)())
            if attempts[-1][1].passed:
                break
        # The last passing attempt, else the best-scored one (the later one on a tie: it saw more feedback).
        best, verdict = max(reversed(attempts), key=lambda pair: (pair[1].passed, pair[1].score))
        return dspy.Prediction(
            **{name: best.get(name) for name in best},
            passed=verdict.passed,
            score=verdict.score,
            attempts=len(attempts),
            critiques=[v.critique for _, v in attempts if not v.passed],
        )


def _constraint(sig: type[dspy.Signature], validator: Mapping[str, str]) -> type[dspy.Signature]:
    text = validator.get("signature")
    if set(validator) != {"signature"} or not isinstance(text, str) or not text.strip():
        raise ConfigurationError(
            "a signature-constraint validator is {'signature': 'answer: int'}: output fields with the types "
            f"they must have; got {dict(validator)!r}"
        )
    constraint = _to_signature(f"{', '.join(sig.input_fields) or '_'} -> {text}")
    unknown = [name for name in constraint.output_fields if name not in sig.output_fields]
    if unknown:
        raise ConfigurationError(
            f"validator signature names {', '.join(unknown)}, which the module does not output "
            f"({', '.join(sig.output_fields)})"
        )
    result: type[dspy.Signature] = constraint
    return result
