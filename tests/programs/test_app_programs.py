"""Running registered programs through App by name: the version runs and is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from programs_sample import build_qa

from dspex import Settings
from dspex.errors import ConfigurationError
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: str(inputs["question"]).upper()})


@pytest.fixture
def app(database_url: str, engine: ScriptedEngine, tmp_path: Path) -> Iterator[App]:
    settings = Settings.load(home=tmp_path / "home", database_url=database_url)
    with App(settings, lm=engine.lm("qa")) as app:
        yield app


def with_demos(count: int) -> dspy.Module:
    program = build_qa()
    program.predict.demos = [{"question": f"q{i}", "reasoning": "r", "answer": "a"} for i in range(count)]
    return program


def test_run_by_name_runs_production_and_records_name_and_version(app: App, engine: ScriptedEngine) -> None:
    draft = app.programs.register("qa", "programs_sample:build_qa")
    production = app.programs.save_version("qa", with_demos(2))
    app.programs.promote("qa", production.id)

    result = app.run("qa", {"question": "hi"})
    assert result.outputs["answer"] == "HI"
    assert engine.history[-1].prompt.demos == 2  # the production version ran, not the draft

    pinned = app.run("qa", {"question": "hey"}, version_id=draft.id[:10])
    assert engine.history[-1].prompt.demos == 0
    assert app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert (record.program, record.version_id, record.status) == ("qa", production.id, "succeeded")
    pinned_record = app.executions.get(pinned.execution_id)
    assert pinned_record is not None
    assert (pinned_record.program, pinned_record.version_id) == ("qa", draft.id)


async def test_arun_by_name(app: App, engine: ScriptedEngine) -> None:
    version = app.programs.register("qa", "programs_sample:build_qa")
    result = await app.arun("qa", {"question": "async"})
    assert result.outputs["answer"] == "ASYNC"
    assert app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert (record.program, record.version_id) == ("qa", version.id)


def test_run_by_name_errors(app: App) -> None:
    app.programs.register("support-qa", "programs_sample:build_qa")
    with pytest.raises(ConfigurationError, match="did you mean 'support-qa'"):
        app.run("support_qa", {"question": "hi"})
    with pytest.raises(ConfigurationError, match="unknown version 'deadbeef' of program 'support-qa'"):
        app.run("support-qa", {"question": "hi"}, version_id="deadbeef")
    with pytest.raises(ConfigurationError, match="program_name='other' names another program"):
        app.run("support-qa", {"question": "hi"}, program_name="other")


def test_modules_still_run_directly(app: App) -> None:
    result = app.run(dspy.Predict("question -> answer"), {"question": "direct"})
    assert result.outputs["answer"] == "DIRECT"
    assert app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert (record.program, record.version_id) == ("Predict", None)


async def test_arun_by_name_prepares_on_the_loop_once_the_program_is_in_memory(
    app: App, engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run by name whose settings and version were just read, and whose program is built, reads no
    row: it starts on the event loop with no thread hop. Anything else still reads off the loop, and
    what this process changes in the registry is seen by the next run."""
    import asyncio

    import dspex.runtime.app as app_module

    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(fn: object, /, *args: object, **kwargs: object) -> object:
        if getattr(fn, "__module__", "").startswith("dspex."):  # DSPy's own hops (pricing) are not ours
            hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)  # type: ignore[arg-type]

    # What is read stays fresh for a second; a slow machine must not make it stale between two runs.
    monkeypatch.setattr("dspex.runtime.cache.POLICY_REFRESH_S", 60.0)
    monkeypatch.setattr(app_module.asyncio, "to_thread", counted)
    first = app.programs.register("qa", "programs_sample:build_qa")
    await app.arun("qa", {"question": "one"})
    assert hops  # the first run reads the program's settings and version, and builds it, off the loop
    hops.clear()
    again = await app.arun("qa", {"question": "two"})
    assert again.outputs["answer"] == "TWO"
    assert hops == []

    production = app.programs.save_version("qa", with_demos(2))  # this process changes the registry
    app.programs.promote("qa", production.id)
    moved = await app.arun("qa", {"question": "three"})
    assert hops  # the version is read again, off the loop
    assert engine.history[-1].prompt.demos == 2
    hops.clear()
    await app.arun("qa", {"question": "four"}, version_id=first.id)
    assert hops  # a version asked for by id is resolved (and built) once, off the loop
    hops.clear()
    await app.arun("qa", {"question": "five"}, version_id=first.id)
    assert hops == []
    assert engine.history[-1].prompt.demos == 0

    app.set_cache("qa", 60)  # a result cache reads (and writes) the cache table: never on the loop
    hops.clear()
    await app.arun("qa", {"question": "six"})
    assert hops
    assert app.flush()
    for result in (again, moved):
        record = app.executions.get(result.execution_id)
        assert record is not None
        assert record.status == "succeeded"
