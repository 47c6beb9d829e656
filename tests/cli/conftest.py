"""Fixtures of the CLI tests: invoking ``dspex`` in-process, and an LM configured through the environment.

The CLI builds its LM from settings, exactly as in production: ``DSPEX_LM`` and ``DSPEX_API_BASE`` point
at the simulated OpenAI-compatible server, so runs make real HTTP calls and record real spans and usage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Invoke
from click.testing import Result
from typer.testing import CliRunner

from dspex.cli import app


@pytest.fixture
def dspex() -> Invoke:
    """``dspex(*args, code=0, input=None)``: run the CLI in-process and check its exit code."""
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, input: str | None = None) -> Result:
        result = runner.invoke(app, list(args), input=input)
        if result.exit_code != code:
            raise AssertionError(
                f"dspex {' '.join(args)} exited {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            ) from result.exception
        return result

    return invoke


@pytest.fixture
def qa_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "qa.yaml"
    spec.write_text("module: chain_of_thought\nsignature: question -> answer\n", encoding="utf-8")
    return spec
