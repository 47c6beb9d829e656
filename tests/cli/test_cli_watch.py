"""``dspex watch --once`` (the live view's snapshot) and ``dspex feedback``, over runs made by the CLI."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_support import Invoke, as_json

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer

QUESTION = "question=What is the capital of Peru?"


@pytest.fixture
def ran(dspex: Invoke, settings_sim: SimServer, qa_spec: Path) -> list[str]:
    """Three recorded runs of qa through the simulated LM."""
    dspex("programs", "register", "qa", str(qa_spec))
    return [as_json(dspex("run", "qa", "-i", QUESTION, "--json"))["execution_id"] for _ in range(3)]


def test_feedback_is_given_listed_and_shown(dspex: Invoke, ran: list[str]) -> None:
    given = as_json(dspex("feedback", ran[0][:8], "--score", "0.8", "--label", "good", "--json"))
    assert (given["execution_id"], given["score"], given["label"], given["actor"]) == (
        ran[0],
        0.8,
        "good",
        "local",
    )
    said = dspex(
        "feedback", ran[0], "--comment", "a bit long", "--actor", "reviewer:ana", "--detail", '{"t": 1}'
    )
    assert f"stored on execution {ran[0]}" in said.stdout
    listed = as_json(dspex("feedback", ran[0], "--list", "--json"))
    assert [(f["score"], f["comment"], f["detail"]) for f in listed] == [
        (0.8, None, None),
        (None, "a bit long", {"t": 1}),
    ]
    table = dspex("feedback", ran[0], "--list").stdout
    assert "reviewer:ana" in table
    assert "a bit long" in table
    shown = dspex("executions", "show", ran[0]).stdout
    assert "Feedback" in shown
    assert "good" in shown
    assert [f["label"] for f in as_json(dspex("executions", "show", ran[0], "--json"))["feedback"]] == [
        "good",
        None,
    ]


def test_bad_feedback_says_what_to_change(dspex: Invoke, ran: list[str]) -> None:
    too_high = dspex("feedback", ran[0], "--score", "1.5", code=2)
    assert "score: got 1.5 (expected a finite number from 0 (worst) to 1 (best))" in too_high.stderr
    nothing = dspex("feedback", ran[0], code=2)
    assert "no score, label or comment given" in nothing.stderr
    unknown = dspex("feedback", "0123456789ab", "--score", "1", code=2)
    assert "no execution '0123456789ab' to give feedback on" in unknown.stderr
    both = dspex("feedback", ran[0], "--list", "--score", "1", code=2)
    assert "--list only lists feedback" in both.output


def _slow_runs(count: int, ms: float, start: dt.datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "program": "qa",
            "version_id": None,
            "status": "succeeded",
            "inputs": {"question": "q"},
            "outputs": {"answer": "a"},
            "error": None,
            "started_at": start + dt.timedelta(milliseconds=10 * i - ms),
            "ended_at": start + dt.timedelta(milliseconds=10 * i),
            "duration_ms": ms,
            "usage": None,
            "total_tokens": None,
            "cost_usd": None,
            "variables": None,
            "trace": None,
            "cache_hit": False,
            "runner": "test:1",
        }
        for i in range(count)
    ]


def test_watch_once_prints_the_signals(dspex: Invoke, ran: list[str]) -> None:
    dspex("feedback", ran[0], "--score", "1")
    out = dspex("watch", "--once").stdout
    assert "Signals at" in out
    assert "last 60 min" in out
    assert "qa" in out
    assert "100.0%" in out  # three successful runs
    assert "1.00 (1)" in out  # quality: one score

    snapshot = as_json(dspex("watch", "--once", "--json", "--program", "qa", "--by", "program"))
    program = next(g for g in snapshot["report"]["groups"] if g["where"]["dimension"] == "program")
    assert (program["runs"], program["succeeded"], program["ratings"], program["quality"]) == (3, 3, 1, 1.0)
    assert program["p50_ms"] > 0
    assert {g["where"]["dimension"] for g in snapshot["report"]["groups"]} >= {"program", "version", "model"}
    assert snapshot["events"] == []

    only_programs = dspex("watch", "--once", "--by", "program").stdout
    assert "@" not in only_programs
    assert "model=" not in only_programs
    assert "model=openai/sim-medium" in out


def test_watch_once_shows_an_anomaly(dspex: Invoke, ran: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    with App(Settings.load(), record=False) as app:
        app.executions.upsert(_slow_runs(30, 100.0, now))
        app.executions.upsert(_slow_runs(12, 2000.0, now + dt.timedelta(seconds=1)))
    out = dspex("watch", "--once", "--program", "qa").stdout
    assert "latency_spike" in out
    assert "Events (newest last)" in out
    events = as_json(dspex("watch", "--once", "--json"))["events"]
    assert [e["kind"] for e in events if e["type"] == "anomaly"] == ["latency_spike"]


def test_watch_options_are_checked(dspex: Invoke) -> None:
    assert (
        "--by takes some of program, version, model, config"
        in dspex("watch", "--once", "--by", "team", code=2).stderr
    )
    assert "--window takes a positive duration" in dspex("watch", "--once", "--window", "soon", code=2).stderr
    assert "use it with --once" in dspex("watch", "--json", code=2).output
    assert "no runs in the window" in dspex("watch", "--once").stdout


def test_watch_starts_from_the_signals_settings_and_options_override_them(dspex: Invoke) -> None:
    Path("dspex.toml").write_text("[signals]\nwindow_s = 900\nwindow_runs = 50\n", encoding="utf-8")
    report = as_json(dspex("watch", "--once", "--json"))["report"]
    assert (report["window_s"], report["window_runs"]) == (900, 50)
    assert "last 15 min, at most 50 runs" in dspex("watch", "--once").stdout
    report = as_json(dspex("watch", "--once", "--json", "--window", "2h"))["report"]
    assert (report["window_s"], report["window_runs"]) == (7200, 50)  # the option wins, the rest stays
    report = as_json(dspex("watch", "--once", "--json", "--window-runs", "20"))["report"]
    assert (report["window_s"], report["window_runs"]) == (900, 20)
