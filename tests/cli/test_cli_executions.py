"""``dspex executions``: list with filters, show with the span tree, stats per version, prune."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cli_support import Invoke, as_json

from dspex.testing.server import SimServer

QUESTION = "question=What is the capital of Peru?"


@pytest.fixture
def runs(dspex: Invoke, settings_sim: SimServer, qa_spec: Path) -> dict[str, list[str]]:
    """Three recorded runs of qa (two succeeded, one failed) and one of a second program."""
    dspex("programs", "register", "qa", str(qa_spec))
    dspex("programs", "register", "other", "cli_sample:build_qa")
    ok = [as_json(dspex("run", "qa", "-i", QUESTION, "--json"))["execution_id"] for _ in range(2)]
    failed = dspex("run", "qa", "-i", "nope=1", code=2)
    other = as_json(dspex("run", "other", "-i", QUESTION, "--json"))["execution_id"]
    failed_id = as_json(dspex("executions", "list", "--status", "failed", "--json"))[0]["id"]
    assert failed_id in failed.stderr
    return {"ok": ok, "failed": [failed_id], "other": [other]}


def ids(dspex: Invoke, *args: str) -> set[str]:
    return {row["id"] for row in as_json(dspex("executions", "list", *args, "--json"))}


def test_list_filters(dspex: Invoke, runs: dict[str, list[str]]) -> None:
    everything = {*runs["ok"], *runs["failed"], *runs["other"]}
    assert ids(dspex) == everything
    assert ids(dspex, "--program", "qa") == {*runs["ok"], *runs["failed"]}
    assert ids(dspex, "--status", "succeeded") == {*runs["ok"], *runs["other"]}
    assert ids(dspex, "--program", "qa", "--status", "failed") == set(runs["failed"])
    assert ids(dspex, "--since", "1h") == everything
    assert ids(dspex, "--until", "1h") == set()  # all started less than an hour ago
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    assert ids(dspex, "--since", tomorrow) == set()
    assert ids(dspex, "--until", tomorrow) == everything
    assert ids(dspex, "--min-ms", "100000") == set()
    assert ids(dspex, "--max-ms", "100000", "--status", "succeeded") == {*runs["ok"], *runs["other"]}

    version = as_json(dspex("programs", "show", "qa", "--json"))["versions"][0]["id"]
    assert ids(dspex, "--version", version[:8]) == {*runs["ok"], *runs["failed"]}
    assert ids(dspex, "--program", "qa", "--version", version[:8]) == {*runs["ok"], *runs["failed"]}

    rows = as_json(dspex("executions", "list", "--limit", "1", "--json"))
    assert len(rows) == 1
    assert "trace" not in rows[0]
    table = dspex("executions", "list", "--limit", "2").stdout
    assert "2 of 4 matching executions shown" in table
    shown = [i for i in everything if i in table]
    assert len(shown) == 2  # whole ids, not folded or cut


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "faild"], "unknown execution status 'faild'; did you mean 'failed'?"),
        (["--since", "yesterday"], "--since takes an ISO 8601 time"),
        (["--until", "0h"], "--until takes a positive duration"),
        (["--version", "abc"], "no program version starts with 'abc'"),
    ],
)
def test_list_rejects_bad_filters(dspex: Invoke, args: list[str], message: str) -> None:
    result = dspex("executions", "list", *args, code=2)
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


def test_show_renders_the_trace_tree_and_json(dspex: Invoke, runs: dict[str, list[str]]) -> None:
    execution_id = runs["ok"][0]
    shown = dspex("executions", "show", execution_id).stdout
    assert f"Execution {execution_id}" in shown
    assert "What is the capital of Peru?" in shown
    lines = shown.splitlines()
    tree = lines[lines.index("trace") :]
    assert "module  ChainOfThought" in tree[1]
    assert "module  Predict" in tree[2]
    [lm_line] = [line for line in tree if "lm  openai/sim-medium" in line]
    assert " tokens (" in lm_line
    assert "cost " in lm_line
    assert lm_line.index("lm") > tree[2].index("module")  # nested under Predict

    record = as_json(dspex("executions", "show", execution_id, "--json"))
    kinds = [span["kind"] for span in record["trace"]["spans"]]
    assert kinds[:2] == ["module", "module"]
    assert "lm" in kinds
    assert record["total_tokens"] > 0

    failed = dspex("executions", "show", runs["failed"][0]).stdout
    assert "ValidationError (validation_error)" in failed
    assert "no spans" in failed

    missing = dspex("executions", "show", "nope", code=2)
    assert "no execution 'nope'" in missing.stderr


def test_stats_per_program_version(dspex: Invoke, runs: dict[str, list[str]]) -> None:
    rows = {row["program"]: row for row in as_json(dspex("executions", "stats", "--json"))}
    assert set(rows) == {"qa", "other"}
    qa = rows["qa"]
    assert (qa["count"], qa["succeeded"], qa["failed"]) == (3, 2, 1)
    assert qa["error_rate"] == pytest.approx(1 / 3)
    assert qa["p50_ms"] is not None
    assert qa["p50_ms"] <= qa["p95_ms"] <= qa["p99_ms"]
    assert qa["total_tokens"] > 0
    assert [r["program"] for r in as_json(dspex("executions", "stats", "--program", "other", "--json"))] == [
        "other"
    ]
    table = dspex("executions", "stats", "--since", "1h").stdout
    assert "33.3%" in table
    assert dspex("executions", "stats", "--since", "2099-01-01").stdout.strip() == "no executions match"


def test_prune_with_options_confirmation_and_settings(
    dspex: Invoke, runs: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = dspex("executions", "prune", "--yes", code=2)
    assert "nothing to prune by" in nothing.stderr

    declined = dspex("executions", "prune", "--keep", "1", input="n\n", code=1)
    assert "aborted; nothing pruned" in declined.stderr
    assert len(ids(dspex)) == 4

    result = as_json(dspex("executions", "prune", "--keep", "2", "--traces-only", "--yes", "--json"))
    assert result == {"affected": 1, "older_than_days": None, "keep_per_program": 2, "traces_only": True}
    oldest_ok = runs["ok"][0]
    assert as_json(dspex("executions", "show", oldest_ok, "--json"))["trace"] is None
    assert "trace: none" in dspex("executions", "show", oldest_ok).stdout

    assert "0 executions deleted" in dspex("executions", "prune", "--older-than", "30d", "--yes").stdout

    # Defaults come from the retention settings.
    monkeypatch.setenv("DSPEX_RETENTION_PER_PROGRAM", "1")
    pruned = dspex("executions", "prune", "--yes", input="")
    assert "2 executions deleted" in pruned.stdout  # qa keeps its newest run, other its only one
    assert ids(dspex) == {*runs["failed"], *runs["other"]}
    bad = dspex("executions", "prune", "--older-than", "soon", "--yes", code=2)
    assert "--older-than takes a positive duration" in bad.stderr
