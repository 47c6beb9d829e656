"""The simulated server's chaos knobs through DSPy's real client path: a model endpoint that is down, an
error rate per model, a mixed fault storm, and the server killed and started again on the same port."""

from __future__ import annotations

from collections import Counter

import dspy
import httpx
import pytest

from dspex.errors import ConfigurationError
from dspex.testing.server import SimConfig, SimServer

CAPITAL = "What is the capital of Peru?"


def _ask(lm: dspy.LM) -> dspy.Prediction:
    with dspy.context(lm=lm):
        return dspy.Predict("question -> answer")(question=CAPITAL)


@pytest.mark.sim_lm(down_models=["sim-small"], error_retry_after=0.05)
def test_a_model_that_is_down_answers_503_while_the_others_work(sim_lm_server: SimServer) -> None:
    with pytest.raises(dspy.LMServerError) as info:
        _ask(sim_lm_server.lm("sim-small", num_retries=1))
    assert info.value.status == 503
    assert "'sim-small' is unavailable" in str(info.value)
    assert dspy.is_retryable_lm_error(info.value)
    assert _ask(sim_lm_server.lm("sim-medium", num_retries=0)).answer
    stats = sim_lm_server.stats()
    assert stats.models["sim-small"].statuses == {503: 2}  # the retry hit the dead endpoint too
    assert stats.models["sim-medium"].statuses == {200: 1}
    assert [r.outcome for r in sim_lm_server.requests()] == ["down", "down", "ok"]
    sim_lm_server.configure(down_models=())  # back up
    assert _ask(sim_lm_server.lm("sim-small", num_retries=0)).answer


@pytest.mark.sim_lm(model_error_rates={"sim-small": 1.0})
def test_an_error_rate_per_model(sim_lm_server: SimServer) -> None:
    with pytest.raises(dspy.LMServerError) as info:
        _ask(sim_lm_server.lm("sim-small", num_retries=0))
    assert info.value.status == 500
    assert _ask(sim_lm_server.lm("sim-large", num_retries=0)).answer
    assert sim_lm_server.config.error_rate_for("sim-large") == 0.0
    assert sim_lm_server.stats().statuses == {500: 1, 200: 1}


def test_a_mixed_fault_storm_reaches_dspy_as_its_typed_errors(sim_lm_server: SimServer) -> None:
    storm = SimConfig.storm(0.8, timeout_seconds=10, retry_after=0.01, seed=3)
    assert (storm.rate_limit_rate, storm.error_rate, storm.timeout_rate, storm.malformed_rate) == (0.2,) * 4
    knobs = {
        k: getattr(storm, k) for k in ("rate_limit_rate", "error_rate", "timeout_rate", "malformed_rate")
    }
    sim_lm_server.configure(**knobs, timeout_seconds=10, retry_after=0.01, seed=3)
    lm = sim_lm_server.lm("sim-medium", num_retries=0, timeout=0.3)  # the client gives up, not the server
    seen: Counter[str] = Counter()
    for _ in range(30):
        try:
            _ask(lm)
        except (dspy.LMError, dspy.AdapterParseError) as exc:
            seen[type(exc).__name__] += 1
        else:
            seen["ok"] += 1
    outcomes = Counter(r.outcome for r in sim_lm_server.requests())
    assert set(outcomes) == {"ok", "rate_limit", "error", "timeout", "malformed"}
    assert {"ok", "LMRateLimitError", "LMServerError", "LMTransportError"} <= set(seen)
    assert sum(seen.values()) == 30


def test_the_server_restarts_on_the_same_port_and_clients_reconnect() -> None:
    with SimServer(latency_scale=0) as sim:
        lm = sim.lm("sim-small", num_retries=0)
        url = sim.url
        assert _ask(lm).answer
        sim.stop()
        assert not sim.running
        with pytest.raises(dspy.LMTransportError):  # connection refused: the server is gone
            _ask(lm)
        sim.start()
        assert sim.url == url
        assert _ask(lm).answer  # the same LM, the same URL
        sim.restart(downtime=0.05)
        assert sim.url == url
        assert _ask(lm).answer
        assert sim.stats().statuses == {200: 3}  # counters survive restarts


def test_fault_knobs_are_validated_and_served_as_json(sim_lm_server: SimServer) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'sim-small'"):
        SimConfig(down_models=("sim-smal",))
    with pytest.raises(ConfigurationError, match="model_error_rates"):
        SimConfig(model_error_rates={"sim-small": 1.5})
    with pytest.raises(ConfigurationError, match="model_error_rates"):
        SimConfig(rate_limit_rate=0.6, model_error_rates={"sim-small": 0.6})
    assert SimConfig(down_models="sim-large").down_models == ("sim-large",)  # type: ignore[arg-type]  # one name
    with httpx.Client(base_url=sim_lm_server.base_url, timeout=10) as http:
        knobs = {"down_models": ["sim-large"], "model_error_rates": {"sim-small": 0.25}}
        answer = http.post("/sim/config", json=knobs).json()
        assert (answer["down_models"], answer["model_error_rates"]) == (["sim-large"], {"sim-small": 0.25})
        assert sim_lm_server.config.down_models == ("sim-large",)
        bad = http.post("/sim/config", json={"down_models": ["nope"]})
        assert bad.status_code == 400
        assert "unknown model 'nope'" in bad.json()["error"]["message"]
