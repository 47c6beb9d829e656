"""pytest fixtures for testing DSPy programs offline: the simulated LM server and the scripted engine.

Installed as the ``dspex`` pytest plugin (a ``pytest11`` entry point), so the fixtures are available
in any project that installs dspex. Importing this module is light: DSPy, Starlette and uvicorn load
only when a fixture is used::

    def test_answers(sim_lm_server):
        with dspy.context(lm=sim_lm_server.lm("sim-medium")):
            dspy.Predict("question -> answer")(question="What is the capital of Peru?")
        assert sim_lm_server.stats().statuses == {200: 1}

    @pytest.mark.sim_lm(fail_first=[429], retry_after=0.1)
    def test_retries(sim_lm_server): ...

    def test_scripted(scripted_lm):
        with dspy.context(lm=scripted_lm({"answer": "42"})):
            assert dspy.Predict("question -> answer")(question="?").answer == "42"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dspex.testing.server import SimServer

__all__ = ["FIXTURE_KNOBS", "scripted_lm", "sim_lm_server", "sim_lm_server_session"]

# Tests want answers, not waiting: the fixture server has no per-model latency unless a test asks.
FIXTURE_KNOBS: Mapping[str, Any] = {"latency_scale": 0.0}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sim_lm(**knobs): knobs of the simulated LM server for one test (see dspex.testing.server.SimConfig)",
    )


@pytest.fixture(scope="session")
def sim_lm_server_session() -> Iterator[SimServer]:
    """One simulated server for the whole session; prefer ``sim_lm_server``, which resets it per test."""
    from dspex.testing.server import SimServer

    with SimServer(**FIXTURE_KNOBS) as server:
        yield server


@pytest.fixture
def sim_lm_server(
    request: pytest.FixtureRequest, sim_lm_server_session: SimServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SimServer]:
    """The session's simulated server with fresh counters and this test's ``sim_lm`` marker knobs."""
    server = sim_lm_server_session
    if not server.running:  # a test stopped it; later tests still get a server
        server.start()
    # DSPy would otherwise try a 5 s remote price-map fetch on the first call; a fake stays offline.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    marker = request.node.get_closest_marker("sim_lm")
    knobs = {**FIXTURE_KNOBS, **(marker.kwargs if marker else {})}
    with server.knobs(**knobs):
        server.reset()
        yield server
    server.reset()


@pytest.fixture
def scripted_lm() -> Callable[..., Any]:
    """A factory of ``dspy.LM``s on a :class:`~dspex.testing.engine.ScriptedEngine` (rules per field).

    Example: ``scripted_lm({"answer": lambda inputs: inputs["question"].upper()}, latency=0.01)``.
    """

    def make(rules: Mapping[str, Any] | None = None, *, name: str = "default", **engine_kwargs: Any) -> Any:
        from dspex.testing.engine import ScriptedEngine

        return ScriptedEngine(rules, **engine_kwargs).lm(name)

    return make
