"""The ``dspex`` pytest plugin: per-test knobs from the marker, reset between tests, scripted LMs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy
import pytest

from dspex.testing.pytest_plugin import FIXTURE_KNOBS
from dspex.testing.server import SimServer


@pytest.mark.sim_lm(fail_first=[500], error_retry_after=0, seed=3)
def test_marker_sets_knobs(sim_lm_server: SimServer) -> None:
    assert (sim_lm_server.config.fail_first, sim_lm_server.config.seed) == ((500,), 3)
    with dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=1)):
        assert dspy.Predict("question -> answer")(question="hi").answer
    assert sim_lm_server.stats().statuses == {500: 1, 200: 1}
    sim_lm_server.configure(error_rate=0.5)  # the next test must not see this


def test_each_test_starts_from_the_fixture_defaults(sim_lm_server: SimServer) -> None:
    # runs after test_marker_sets_knobs on the same session server
    assert sim_lm_server.config == SimServer(**FIXTURE_KNOBS).config
    assert sim_lm_server.stats().total_requests == 0
    assert sim_lm_server.requests() == []


def test_session_server_is_shared(sim_lm_server: SimServer, sim_lm_server_session: SimServer) -> None:
    assert sim_lm_server is sim_lm_server_session
    assert sim_lm_server.running


def test_scripted_lm_factory(scripted_lm: Callable[..., Any]) -> None:
    lm = scripted_lm({"answer": lambda inputs: inputs["question"].upper()}, model="shout")
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="hi").answer == "HI"
