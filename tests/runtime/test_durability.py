"""Durability: ``sync`` commits the terminal record before the run returns, so a kill -9 right after the
answer never contradicts it; ``async`` writes it behind the call. Plus the per-program setting and the
per-run input size limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspex import ConfigurationError, ValidationError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine

WORKER = Path(__file__).with_name("durable_worker.py")


def _run_and_kill(database_url: str, home: Path, durability: str, log: Path) -> str:
    with log.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), database_url, str(home), durability],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert worker.stdout is not None
            execution_id = worker.stdout.readline().strip()
        finally:
            worker.send_signal(signal.SIGKILL)  # the instant the caller has its answer
            worker.wait(timeout=30)
            if worker.stdout is not None:
                worker.stdout.close()
    assert execution_id, log.read_text()
    return execution_id


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_kill_right_after_the_answer(database_url: str, tmp_path: Path, durability: str) -> None:
    execution_id = _run_and_kill(database_url, tmp_path / "home", durability, tmp_path / "worker.log")
    with App(Settings(database_url=database_url, home=tmp_path / "home")) as app:
        record = app.executions.get(execution_id)
        if durability == "sync":
            assert record is not None
            assert record.status == "succeeded"
            assert record.outputs == {"answer": "cba"}
        else:
            # Behind the call: the caller was told it succeeded, the store never heard of it.
            assert record is None


def _engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: "ok"})


def test_program_durability_is_set_read_and_overridden(database_url: str, tmp_path: Path) -> None:
    spec = {"module": "predict", "signature": "question -> answer"}
    with App(Settings(database_url=database_url), lm=_engine().lm()) as app:
        app.programs.register("qa", spec)
        assert app.programs.get("qa").durability is None
        app.set_durability("qa", "sync")
        assert app.programs.get("qa").durability == "sync"
        writer = app._open().writer
        # A sync run waits for its record: nothing is left pending when it returns.
        result = app.run("qa", {"question": "q"})
        assert not writer._pending
        assert app.executions.get(result.execution_id) is not None
        app.set_durability("qa", None)
        assert app.programs.get("qa").durability is None
        with pytest.raises(ConfigurationError, match="durability is 'sync' or 'async'"):
            app.set_durability("qa", "later")  # type: ignore[arg-type]  # the misuse under test
        with pytest.raises(ConfigurationError, match="unknown program"):
            app.set_durability("nope", "sync")
        with pytest.raises(ConfigurationError, match="durability is 'sync' or 'async'"):
            app.run("qa", {"question": "q"}, durability="later")  # type: ignore[arg-type]  # the misuse under test


async def test_arun_with_sync_durability_has_its_record_committed(database_url: str) -> None:
    with App(Settings(database_url=database_url, durability="sync"), lm=_engine().lm()) as app:
        result = await app.arun(dspy.Predict("question -> answer"), {"question": "q"})
        record = app.executions.get(result.execution_id)
        assert record is not None
        assert record.status == "succeeded"
        with pytest.raises(ValidationError):
            await app.arun(dspy.Predict("question -> answer"), {"nope": "q"})
        assert app.executions.count() == 2


def test_inputs_over_the_size_limit_fail_and_are_not_stored(database_url: str) -> None:
    settings = Settings(database_url=database_url, max_input_bytes=1000)
    with App(settings, lm=_engine().lm()) as app:
        program = dspy.Predict("question -> answer")
        app.run(program, {"question": "x" * 900}, durability="sync")
        with pytest.raises(ValidationError, match=r"1015 bytes of JSON, over the limit of 1000") as caught:
            app.run(program, {"question": "x" * 1000}, durability="sync")
        execution_id: Any = getattr(caught.value, "execution_id", None)
        record = app.executions.get(execution_id)
        assert record is not None
        assert record.status == "failed"
        assert record.inputs == {"__omitted__": {"reason": "too_large", "bytes": 1015, "limit": 1000}}
        assert record.error is not None
        assert record.error["code"] == "validation_error"


async def test_arun_checks_the_size_limit_too(database_url: str) -> None:
    settings = Settings(database_url=database_url, max_input_bytes=100)
    with (
        App(settings, lm=_engine().lm()) as app,
        pytest.raises(ValidationError, match="over the limit of 100"),
    ):
        await app.arun(dspy.Predict("question -> answer"), {"question": "y" * 200})


def test_the_default_size_limit_is_a_few_megabytes() -> None:
    assert Settings().max_input_bytes == 4_000_000
    assert os.environ.get("DSPEX_MAX_INPUT_BYTES") is None
