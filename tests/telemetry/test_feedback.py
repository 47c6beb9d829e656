"""``app.feedback``: stored (committed before it returns), validated field by field, read back, on
SQLite and PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspex.errors import ValidationError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.store.executions import ExecutionFilter
from dspex.store.feedback import FeedbackRepository, UnknownExecution
from dspex.testing import ScriptedEngine


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    engine = ScriptedEngine({"answer": "4"})
    with App(Settings(database_url=database_url), lm=engine.lm()) as dspex_app:
        yield dspex_app


@pytest.fixture
def execution_id(app: App) -> str:
    result = app.run(dspy.Predict("question -> answer"), {"question": "2 + 2?"})
    return result.execution_id


def test_feedback_is_stored_and_read_back(app: App, execution_id: str) -> None:
    # The run's record may still be in the writer: feedback flushes it rather than answer "unknown".
    first = app.feedback(execution_id, score=0.8, label="good", detail={"rubric": {"correct": True}})
    second = app.feedback(execution_id[:8], comment="terse but right", actor="reviewer:ana")
    assert first.execution_id == second.execution_id == execution_id
    assert (first.score, first.label, first.actor) == (0.8, "good", "local")
    assert (second.score, second.comment, second.actor) == (None, "terse but right", "reviewer:ana")
    listed = app.feedback.list(execution_id)
    assert [f.id for f in listed] == [first.id, second.id]
    assert listed[0].detail == {"rubric": {"correct": True}}
    assert listed[0].to_json()["created_at"].endswith("+00:00")
    # Committed, not buffered: another connection to the store sees it at once.
    with App(Settings(database_url=app.settings.database_url), record=False) as other:
        assert [f.id for f in other.feedback.list(execution_id)] == [first.id, second.id]


def test_retention_deletes_a_runs_feedback_with_the_run(app: App, execution_id: str) -> None:
    kept = app.run(dspy.Predict("question -> answer"), {"question": "3 + 3?"}, program_name="kept")
    app.feedback(execution_id, score=0.1)
    app.feedback(kept.execution_id, score=0.9)
    assert app.prune(traces_only=True, keep_per_program=0) == 2  # traces only: feedback stays
    assert len(app.feedback.list(execution_id)) == 1
    assert app.executions.prune(keep_per_program=1) == 0  # one run per program: nothing past it
    assert app.executions.prune(keep_per_program=0) == 2
    assert app.executions.count(ExecutionFilter()) == 0
    assert FeedbackRepository(app._open().db).count() == 0


def test_feedback_on_an_unknown_execution_is_refused(app: App) -> None:
    with pytest.raises(UnknownExecution, match="no execution 'nope-nope' to give feedback on"):
        app.feedback("nope-nope", score=1.0)
    repository = FeedbackRepository(app.executions.db)
    with pytest.raises(UnknownExecution):
        repository.add("0" * 36, score=1.0)  # the repository checks too, in its transaction
    assert repository.count() == 0


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({}, "score", "no score, label or comment given"),
        ({"score": 1.5}, "score", "got 1.5"),
        ({"score": -0.1}, "score", "got -0.1"),
        ({"score": math.nan}, "score", "got nan"),
        ({"score": math.inf}, "score", "got inf"),
        ({"score": True}, "score", "got bool True"),
        ({"score": "0.5"}, "score", "got str '0.5'"),
        ({"label": ""}, "label", "empty"),
        ({"label": "x" * 201}, "label", "201 characters"),
        ({"comment": " \n"}, "comment", "empty"),
        ({"comment": "x" * 10_001}, "comment", "10,001 characters"),
        ({"label": "ok", "detail": ["a"]}, "detail", "got list"),
        ({"label": "ok", "detail": {"blob": "x" * 20_000}}, "detail", "too large"),
        ({"label": "ok", "actor": ""}, "actor", "got ''"),
    ],
)
def test_invalid_feedback_names_the_field(
    app: App, execution_id: str, values: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        app.feedback(execution_id, **values)
    issue = raised.value.issues[0]
    assert (issue.field, message in issue.message) == (field, True), raised.value.issues
    assert app.feedback.list(execution_id) == []  # nothing half-stored


def test_every_problem_is_reported_at_once(app: App, execution_id: str) -> None:
    with pytest.raises(ValidationError) as raised:
        app.feedback(execution_id, score=2.0, label="", comment="x" * 10_001)
    assert [issue.field for issue in raised.value.issues] == ["score", "label", "comment"]
    assert "invalid feedback: score:" in str(raised.value)


def test_the_score_range_is_inclusive(app: App, execution_id: str) -> None:
    assert app.feedback(execution_id, score=0).score == 0.0
    assert app.feedback(execution_id, score=1).score == 1.0
    assert len(app.feedback.list(execution_id)) == 2
