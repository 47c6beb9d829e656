from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from dspex import ConfigurationError, Settings, build_lm, using
from dspex.testing.engine import ScriptedEngine


def test_precedence_explicit_over_file_over_env_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.load().num_retries == 3  # default
    monkeypatch.setenv("DSPEX_NUM_RETRIES", "5")
    monkeypatch.setenv("DSPEX_LM", "openai/env-model")
    assert Settings.load().num_retries == 5  # environment over default
    (tmp_path / "dspex.toml").write_text('lm = "openai/file-model"\nnum_retries = 7\n')
    loaded = Settings.load()
    assert (loaded.lm, loaded.num_retries) == ("openai/file-model", 7)  # project file over environment
    assert Settings.load(num_retries=1).num_retries == 1  # explicit over project file


def test_bad_settings_say_what_to_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'temperature'"):
        Settings.load(temprature=0.2)
    monkeypatch.setenv("DSPEX_TEMPERATURE", "hot")
    with pytest.raises(ConfigurationError, match=r"temperature \(DSPEX_TEMPERATURE\).*'hot'"):
        Settings.load()
    monkeypatch.delenv("DSPEX_TEMPERATURE")
    (tmp_path / "dspex.toml").write_text("lm = \n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        Settings.load()
    (tmp_path / "dspex.toml").write_text('modle = "x"\n')
    with pytest.raises(ConfigurationError, match=r"unknown setting 'modle'"):
        Settings.load()
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.load(project_file=tmp_path / "missing.toml")


def test_build_lm_from_settings() -> None:
    lm = build_lm(
        Settings.load(
            lm="openai/gpt-4o-mini", temperature=0.3, max_tokens=200, api_base="http://127.0.0.1:9/v1"
        )
    )
    assert lm.model == "openai/gpt-4o-mini"
    assert lm.kwargs["temperature"] == 0.3
    assert lm.kwargs["max_tokens"] == 200


def test_build_lm_errors() -> None:
    with pytest.raises(ConfigurationError, match="no language model configured: set DSPEX_LM"):
        build_lm(Settings.load())
    with pytest.raises(ConfigurationError, match="needs a provider prefix, like 'openai/gpt-4o'"):
        build_lm(Settings.load(lm="gpt-4o"))


def test_build_lm_with_engine_runs_in_a_scoped_context() -> None:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"][::-1]})
    lm = build_lm(Settings.load(lm="scripted/qa", api_base="http://ignored"), engine=engine, cache=False)
    with using(lm):
        assert dspy.Predict("question -> answer")(question="abc").answer == "cba"
    assert dspy.settings.lm is None  # nothing leaked into global settings
    assert engine.calls == 1
