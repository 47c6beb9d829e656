"""Fitness per task kind, measured from the record: how well a program did on runs of that kind.

A run counts for kind ``K`` when it has feedback whose ``detail`` says ``{"task_kind": "K"}``
(:func:`record_outcome` writes such feedback; any feedback with that detail and a score counts). Its score
is the mean of those feedback scores; a run of that kind that failed scores 0 unless feedback scored it.
Fitness is the smoothed mean over the program's runs of the kind,
``(sum of scores + prior * strength) / (runs + strength)`` (prior 0.5, strength 2), so one lucky run does
not outrank a long record, and a program with no record sits at the prior. No table of its own: the
executions and feedback tables hold everything (read through their repositories).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = ["Fitness", "measure_fitness", "record_outcome"]

PRIOR = 0.5
STRENGTH = 2.0
TASK_KIND_KEY = "task_kind"
_SCAN = 2000  # most recent runs read per program


@dataclass(frozen=True, slots=True)
class Fitness:
    """A program's measured fitness for one task kind."""

    program: str
    kind: str
    runs: int
    mean: float | None  # the raw mean score (None: no runs of this kind)
    score: float  # the smoothed score used for ranking and weights

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "kind": self.kind,
            "runs": self.runs,
            "mean": self.mean,
            "score": self.score,
        }


def record_outcome(app: App, execution_id: str, kind: str, score: float, *, actor: str = "local") -> None:
    """Feedback that the run ``execution_id`` was of task kind ``kind`` and scored ``score`` (0 to 1)."""
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError(f"kind is a task kind name such as 'arithmetic', got {kind!r}")
    app.feedback(execution_id, score=score, label=kind, detail={TASK_KIND_KEY: kind}, actor=actor)


def measure_fitness(app: App, program: str, kind: str) -> Fitness:
    """The fitness of registered program ``program`` on task kind ``kind``, from its recorded runs."""
    from dspex.store.executions import ExecutionFilter

    app.flush()
    runs = app.executions.find(ExecutionFilter(program=program), limit=_SCAN)
    notes = app.feedback.for_executions([r.id for r in runs]) if runs else {}
    scores: list[float] = []
    for run in runs:
        mine = [f for f in notes.get(run.id, []) if (f.detail or {}).get(TASK_KIND_KEY) == kind]
        if not mine:
            continue
        rated = [f.score for f in mine if f.score is not None]
        if rated:
            scores.append(sum(rated) / len(rated))
        elif run.status == "failed":
            scores.append(0.0)
    mean = sum(scores) / len(scores) if scores else None
    smoothed = (sum(scores) + PRIOR * STRENGTH) / (len(scores) + STRENGTH)
    return Fitness(program, kind, len(scores), mean, smoothed)
