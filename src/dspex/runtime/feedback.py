"""``app.feedback``: give feedback on a run (a score, a label, a comment) and read it back.

::

    result = app.run("qa", {"question": "2 + 2?"})
    app.feedback(result.execution_id, score=1.0, label="correct")
    app.feedback(result.execution_id, comment="terse but right", actor="reviewer:ana")
    [f.score for f in app.feedback.list(result.execution_id)]          # [1.0, None]

A score is a number from 0 (worst) to 1 (best); labels are at most 200 characters, comments 10,000;
``detail`` keeps any JSON object (16 KiB at most) with it. At least one of score, label and comment.
Feedback is committed before the call returns (never behind it, unlike execution records), and counts in
the quality signals of :mod:`dspex.telemetry.signals`. The table is described in
:mod:`dspex.store.feedback`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex.store.feedback import FeedbackRecord, FeedbackRepository, UnknownExecution

if TYPE_CHECKING:
    from dspex.store.executions import ExecutionRecord, ExecutionRepository

__all__ = ["Feedback"]

_FLUSH_S = 5.0


class Feedback:
    """Feedback on runs, over one App's store (``app.feedback``). Thread-safe."""

    def __init__(
        self,
        executions: Callable[[], ExecutionRepository],
        repository: Callable[[], FeedbackRepository],
        flush: Callable[[float], bool],
    ) -> None:
        self._executions = executions
        self._repository = repository
        self._flush = flush

    def __call__(
        self,
        execution_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        detail: Mapping[str, Any] | None = None,
        actor: str = "local",
    ) -> FeedbackRecord:
        """Store feedback on the execution ``execution_id`` (its id, or a unique prefix of 6+ characters).

        Raises ``ValidationError`` naming each unacceptable field, and
        :class:`~dspex.store.feedback.UnknownExecution` when no such execution is recorded.
        """
        record = self.execution(execution_id)
        return self._repository().add(
            record.id, score=score, label=label, comment=comment, detail=detail, actor=actor
        )

    def execution(self, execution_id: str) -> ExecutionRecord:
        """The execution feedback would go to; its record is flushed first when this process ran it and
        it is not in the store yet. Raises :class:`~dspex.store.feedback.UnknownExecution`."""
        executions = self._executions()
        record = executions.get(execution_id)
        if record is None:  # a run of this process may still be waiting in the writer
            self._flush(_FLUSH_S)
            record = executions.get(execution_id)
        if record is None:
            raise UnknownExecution(
                f"no execution {execution_id!r} to give feedback on; "
                "dspex executions list (or GET /v1/executions) shows the recorded ones"
            )
        return record

    def list(self, execution_id: str) -> list[FeedbackRecord]:
        """The feedback on one execution (full id or unique prefix), oldest first."""
        return self._repository().for_execution(self.execution(execution_id).id)

    def for_executions(self, execution_ids: Sequence[str]) -> dict[str, Sequence[FeedbackRecord]]:
        """The feedback on each of these executions (full ids), oldest first; ids without any are absent."""
        return dict(self._repository().for_executions(execution_ids))
