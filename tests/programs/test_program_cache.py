"""The program-level cache: repeated runs of a cached program return stored outputs without DSPy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from dspex import Settings
from dspex.errors import ConfigurationError, ValidationError
from dspex.runtime import App
from dspex.store.executions import ExecutionFilter
from dspex.store.schema import program_cache
from dspex.testing.engine import ScriptedEngine

SPEC = {"module": "predict", "signature": "question -> answer"}


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: str(inputs["question"]).upper()})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings.load(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def app(settings: Settings, engine: ScriptedEngine) -> Iterator[App]:
    with App(settings, lm=engine.lm("qa")) as app:
        app.programs.register("qa", SPEC)
        yield app


def test_a_repeated_run_is_served_from_the_cache_and_recorded_as_a_hit(
    app: App, engine: ScriptedEngine
) -> None:
    first = app.run("qa", {"question": "hi"})
    assert not first.cache_hit  # no TTL yet: the cache is opt-in
    app.set_cache("qa", 60)
    miss = app.run("qa", {"question": "hi"})
    hit = app.run("qa", {"question": "hi"})
    other = app.run("qa", {"question": "ho"})
    assert (miss.cache_hit, hit.cache_hit, other.cache_hit) == (False, True, False)
    assert hit.outputs == miss.outputs == {"answer": "HI"}
    assert hit.prediction.answer == "HI"
    assert hit.execution_id != miss.execution_id
    assert len(engine.history) == 3  # first, miss, other: the hit never reached DSPy
    assert app.flush()
    hit_record = app.executions.get(hit.execution_id)
    assert hit_record is not None
    assert (hit_record.status, hit_record.cache_hit, hit_record.outputs) == (
        "succeeded",
        True,
        {"answer": "HI"},
    )
    assert hit_record.version_id == app.programs.resolve("qa").id
    assert hit_record.cost_usd == 0.0
    assert app.executions.count(ExecutionFilter(program="qa")) == 4


async def test_arun_shares_the_cache_with_run(app: App, engine: ScriptedEngine) -> None:
    app.set_cache("qa", 60)
    app.run("qa", {"question": "a"})
    hit = await app.arun("qa", {"question": "a"})
    assert hit.cache_hit
    again = await app.arun("qa", {"question": "b"})
    assert not again.cache_hit
    assert (await app.arun("qa", {"question": "b"})).cache_hit
    assert len(engine.history) == 2


def test_another_process_reads_the_shared_cache(app: App, settings: Settings, engine: ScriptedEngine) -> None:
    app.set_cache("qa", 60)
    app.run("qa", {"question": "shared"})
    other_engine = ScriptedEngine({"answer": "never asked"})
    with App(settings, lm=other_engine.lm("qa")) as other:
        result = other.run("qa", {"question": "shared"})
    assert result.cache_hit
    assert result.outputs == {"answer": "SHARED"}
    assert len(other_engine.history) == 0


def test_variables_versions_and_failures_are_part_of_the_key(app: App, engine: ScriptedEngine) -> None:
    app.set_cache("qa", 60)
    app.run("qa", {"question": "x"}, variables={"t": 0.1})
    assert not app.run("qa", {"question": "x"}, variables={"t": 0.2}).cache_hit
    assert app.run("qa", {"question": "x"}, variables={"t": 0.1}).cache_hit
    with pytest.raises(ValidationError):
        app.run("qa", {"wrong": "x"})
    with pytest.raises(ValidationError):
        app.run("qa", {"wrong": "x"})  # a failure is never cached
    # a new production version is another key (a fresh App sees the promotion at once)
    program = app.programs.load("qa")
    program.demos = [{"question": "q", "answer": "A"}]
    v2 = app.programs.save_version("qa", program)
    app.programs.promote("qa", v2.id)
    with App(app.settings, lm=engine.lm("qa")) as fresh:
        assert not fresh.run("qa", {"question": "x"}, variables={"t": 0.1}).cache_hit


def test_expired_entries_are_not_served_and_turning_the_cache_off_stops_hits(app: App) -> None:
    app.set_cache("qa", 60)
    app.run("qa", {"question": "old"})
    assert app.cache.count("qa") == 1
    with app.cache.db.write() as connection:  # age the entry past its TTL
        connection.execute(sa.update(program_cache).values(expires_at=sa.func.current_timestamp()))
    with App(app.settings, lm=app.lm()) as fresh:
        assert not fresh.run("qa", {"question": "old"}).cache_hit
        assert fresh.run("qa", {"question": "old"}).cache_hit
        fresh.set_cache("qa", None)
        assert not fresh.run("qa", {"question": "old"}).cache_hit
    assert app.cache.purge() == 0  # the refreshed entry is still live


def test_bad_ttls_and_unknown_programs_are_refused(app: App) -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigurationError, match="whole number of seconds"):
            app.set_cache("qa", bad)  # type: ignore[arg-type]  # wrong types on purpose
    with pytest.raises(ConfigurationError, match="unknown program"):
        app.set_cache("nope", 10)


def test_cli_turns_the_cache_on_and_off(
    app: App, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspex.cli import app as cli

    monkeypatch.setenv("DSPEX_DATABASE_URL", settings.resolved_database_url)
    runner = CliRunner()
    on = runner.invoke(cli, ["programs", "cache", "qa", "--ttl", "120"])
    assert on.exit_code == 0, on.output
    assert "120 s" in on.output
    assert app.programs.get("qa").cache_ttl_s == 120
    shown = runner.invoke(cli, ["programs", "show", "qa"])
    assert "results cached for 120 s" in shown.output
    both = runner.invoke(cli, ["programs", "cache", "qa", "--ttl", "5", "--off"])
    assert both.exit_code == 2
    off = runner.invoke(cli, ["programs", "cache", "qa", "--off", "--json"])
    assert off.exit_code == 0, off.output
    assert app.programs.get("qa").cache_ttl_s is None
