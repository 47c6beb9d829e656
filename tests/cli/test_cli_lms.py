"""``dspex lms status``: the configured models' limits and fallbacks, and breaker states shared through
Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import dspy
import pytest
from cli_support import Invoke, as_json

from dspex.errors import LMError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer

REDIS = "redis://127.0.0.1:6379/0"


def _toml(sim: SimServer, extra: str = "") -> None:
    Path("dspex.toml").write_text(
        f"""
[models.backup]
model = "openai/sim-large"
api_base = "{sim.url}"
api_key = "sim"

[resilience]
retries = 0
[resilience.breaker]
min_calls = 2
cooldown_s = 30
[resilience.models."openai/sim-medium"]
rpm = 600
max_concurrent = 8
fallbacks = ["backup"]
{extra}
""",
        encoding="utf-8",
    )


def test_status_lists_each_models_limits_and_chain(dspex: Invoke, settings_sim: SimServer) -> None:
    _toml(settings_sim)
    data = as_json(dspex("lms", "status", "--json"))
    assert data["source"] == "this process"
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["openai/sim-medium"]["rpm"] == 600
    assert by_name["openai/sim-medium"]["max_concurrent"] == 8
    assert by_name["openai/sim-medium"]["fallbacks"] == ["backup"]
    assert by_name["backup"]["fallbacks"] == []
    table = dspex("lms", "status").stdout
    assert "sim-medium" in table
    assert "backup" in table
    assert "DSPEX_REDIS_URL" in table  # says why no breaker is shown


def test_status_shows_a_breaker_another_process_opened_through_redis(
    dspex: Invoke, settings_sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis does not answer at 127.0.0.1:6379")
    # [resilience] is the last table: its redis_prefix keeps this test's keys apart from any other's
    _toml(settings_sim, extra="[resilience.programs.other]\nfallbacks = []\n")
    text = Path("dspex.toml").read_text(encoding="utf-8")
    text = text.replace("[resilience]\n", f'[resilience]\nredis_prefix = "t{uuid.uuid4().hex[:8]}"\n')
    Path("dspex.toml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("DSPEX_REDIS_URL", REDIS)
    settings_sim.configure(error_rate=1.0)
    with App(Settings.load()) as app:
        for _ in range(2):
            with pytest.raises(LMError):
                app.run(dspy.Predict("question -> answer"), {"question": "q"})
    data = as_json(dspex("lms", "status", "--json"))
    assert data["source"] == "shared through Redis"
    states = {b["endpoint"]: b["state"] for b in data["breakers"]}
    assert states[f"openai/sim-medium@{settings_sim.url}"] == "open"
