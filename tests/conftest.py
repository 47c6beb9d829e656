"""Every test gets its own home directory and offline-safe process settings."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DSPEX_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for name in ("DSPEX_LM", "DSPEX_API_BASE", "DSPEX_API_KEY", "DSPEX_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    # The price map DSPy consults would otherwise try a 5 s remote fetch on the first call.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return home
