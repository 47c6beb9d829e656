"""Batch runs: one recorded run per input, JSONL in and out, a rerun skips what succeeded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dspex.cli import app as cli
from dspex.distributed.batch import done_keys, input_key, read_inputs, run_batch, run_batch_file
from dspex.errors import ConfigurationError
from dspex.runtime.app import App
from dspex.server import create_app
from dspex.settings import Settings
from dspex.store.executions import ExecutionFilter
from dspex.testing import ScriptedEngine

QA = {"module": "predict", "signature": "question -> answer"}


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})


@pytest.fixture
def app(database_url: str, engine: ScriptedEngine) -> Iterator[App]:
    """On SQLite, and on PostgreSQL when DSPEX_TEST_POSTGRES_URL is set."""
    with App(Settings(database_url=database_url, lm_cache=False), lm=engine.lm(cache=False)) as app:
        app.programs.register("qa", QA)
        yield app


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_batch_records_a_run_per_input_and_a_rerun_skips_the_succeeded(
    app: App, engine: ScriptedEngine, tmp_path: Path
) -> None:
    rows: list[Any] = [{"question": f"q{i}"} for i in range(5)] + [{"wrong_field": "x"}]
    source, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    seen: list[tuple[int, int]] = []
    report = run_batch_file(app, "qa", source, out, concurrency=3, progress=lambda d, t: seen.append((d, t)))
    assert (report.total, report.succeeded, report.failed, report.skipped) == (6, 5, 1, 0)
    assert seen[-1] == (6, 6)
    lines = sorted(_lines(out), key=lambda line: line["index"])
    assert [line["outputs"]["answer"] for line in lines[:5]] == [f"answer to q{i}" for i in range(5)]
    assert lines[5]["status"] == "failed"
    assert lines[5]["error"]["code"] == "validation_error"
    app.flush()
    ids = {line["execution_id"] for line in lines}
    assert len(ids) == 6  # every input, failed or not, has its own record
    records = [app.executions.get(i) for i in ids]
    assert sorted(r.status for r in records if r is not None) == ["failed"] + ["succeeded"] * 5
    calls = engine.calls

    again = run_batch_file(app, "qa", source, out)
    assert (again.total, again.skipped, again.succeeded, again.failed) == (6, 5, 0, 1)  # the failed one again
    assert engine.calls == calls
    assert done_keys(out) == {input_key(i, rows[i]) for i in range(5)}


def test_a_batch_that_dies_midway_resumes_where_it_stopped(
    app: App, engine: ScriptedEngine, tmp_path: Path
) -> None:
    rows = [{"question": f"q{i}"} for i in range(12)]
    source, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"

    class Crash(Exception):
        pass

    def crash(done: int, total: int) -> None:
        if done == 4:
            raise Crash("the driver dies after the 4th result")

    with pytest.raises(Crash):
        run_batch_file(app, "qa", source, out, concurrency=2, progress=crash)
    written = _lines(out)
    assert 4 <= len(written) < 12
    with out.open("ab") as handle:
        handle.write(b'{"index": 11, "key": "11:')  # a line torn by the crash
    report = run_batch_file(app, "qa", source, out, concurrency=2)
    assert report.skipped == len(written)
    assert report.succeeded == 12 - len(written)
    done = [line for line in _lines_tolerant(out) if line.get("status") == "succeeded"]
    assert sorted(line["index"] for line in done) == list(range(12))  # each input exactly once


def _lines_tolerant(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue
    return out


def test_bad_input_lines_and_unknown_programs_are_clear_errors(app: App, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"line 2: a list, not a JSON object"):
        list(read_inputs(bad))
    bad.write_text('{"question": \n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"line 1: not JSON"):
        run_batch_file(app, "qa", bad, tmp_path / "o.jsonl", progress=lambda d, t: None)
    with pytest.raises(ConfigurationError, match="unknown program"):
        run_batch(app, "nope", [{"question": "a"}])
    with pytest.raises(ConfigurationError, match="unknown pool"):
        run_batch(app, "qa", [{"question": "a"}], pool="nowhere")


def test_the_api_takes_inputs_in_the_body_and_skips_the_keys_sent_back(app: App) -> None:
    client = TestClient(create_app(app, auth=False))
    inputs = [{"question": "a"}, {"question": "b"}, {"question": "c"}]
    first = client.post("/v1/programs/qa/batch", json={"inputs": inputs[:2]})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["report"]["succeeded"] == 2
    assert [line["outputs"]["answer"] for line in body["lines"]] == ["answer to a", "answer to b"]
    skip = [line["key"] for line in body["lines"]]
    second = client.post("/v1/programs/qa/batch", json={"inputs": inputs, "skip": skip}).json()
    assert second["report"] == {**second["report"], "skipped": 2, "succeeded": 1}
    assert [line["index"] for line in second["lines"]] == [2]
    # A path is not an input: the body has no field for one.
    refused = client.post("/v1/programs/qa/batch", json={"inputs": inputs, "input_path": "/etc/passwd"})
    assert refused.status_code == 422
    assert "input_path" in refused.text
    assert client.post("/v1/programs/nope/batch", json={"inputs": inputs}).status_code == 404
    app.flush()
    assert app.executions.count(ExecutionFilter(program="qa")) == 3


def test_dspex_batch_run_on_the_command_line(settings_sim: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    spec = tmp_path / "qa.yaml"
    spec.write_text("module: predict\nsignature: question -> answer\n", encoding="utf-8")
    assert runner.invoke(cli, ["programs", "register", "qa", str(spec)]).exit_code == 0
    source = _write(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        cli, ["batch", "run", "qa", "--input", str(source), "--output", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["succeeded"] == 4
    again = runner.invoke(cli, ["batch", "run", "qa", "--input", str(source), "--output", str(out)])
    assert again.exit_code == 0, again.output
    assert "4 skipped as done" in again.stdout
    missing = runner.invoke(cli, ["batch", "run", "qa", "--input", "nowhere.jsonl", "--output", str(out)])
    assert missing.exit_code != 0
    assert "nowhere.jsonl" in missing.output
