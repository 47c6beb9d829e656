"""Agents: capabilities decide who fits, the record decides the ranking, and consensus learns its weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from dspex import ConfigurationError, Settings
from dspex.agents import (
    Agent,
    Capabilities,
    Task,
    consensus,
    coordinate,
    learned_weights,
    measure_fitness,
    record_outcome,
)
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    engine = ScriptedEngine({"answer": lambda inputs: str(inputs["question"]).upper()})
    settings = Settings.load(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'dspex.db'}")
    with App(settings, lm=engine.lm("sim")) as app:
        yield app


def _record(app: App, program: str, scores: list[float], kind: str = "arithmetic") -> None:
    for score in scores:
        run = app.run(program, {"question": "q"})
        record_outcome(app, run.execution_id, kind, score)


def test_fitness_is_the_smoothed_mean_of_scored_runs_of_that_kind(app: App) -> None:
    app.programs.register("solver", {"module": "predict", "signature": "question -> answer"})
    assert measure_fitness(app, "solver", "arithmetic").score == 0.5  # no record: the prior
    _record(app, "solver", [1.0, 1.0, 1.0, 0.0])
    _record(app, "solver", [0.0, 0.0], kind="trivia")  # another kind does not count
    app.run("solver", {"question": "unrated"})  # nor a run nobody rated
    fitness = measure_fitness(app, "solver", "arithmetic")
    assert (fitness.runs, fitness.mean) == (4, 0.75)
    assert fitness.score == pytest.approx((3.0 + 0.5 * 2) / (4 + 2))
    assert measure_fitness(app, "solver", "trivia").mean == 0.0


def test_coordinate_keeps_fitting_agents_ranked_by_measured_fitness(app: App) -> None:
    for name in ("weak", "strong", "fresh"):
        app.programs.register(name, {"module": "predict", "signature": "question -> answer"})
    _record(app, "weak", [0.0, 1.0, 0.0])
    _record(app, "strong", [1.0, 1.0, 1.0])
    caps = Capabilities(provides={"answer"}, requires={"question"}, kinds={"arithmetic"})
    agents = [
        Agent("weak", "weak", caps),
        Agent("fresh", "fresh", caps),
        Agent("strong", "strong", caps),
        Agent("poet", "fresh", Capabilities(provides={"poem"}, requires={"question"})),
        Agent("lookup", "fresh", Capabilities(provides={"answer"}, requires={"table"})),
        Agent("historian", "fresh", Capabilities(provides={"answer"}, kinds={"history"})),
    ]
    ranked = coordinate(Task.of("arithmetic", needs="answer", supplies={"question"}), agents, app=app)
    assert [r.agent.name for r in ranked] == ["strong", "fresh", "weak"]
    assert ranked[0].fitness.runs == 3
    assert ranked[1].fitness.runs == 0
    assert [
        r.agent.name for r in coordinate(Task.of("arithmetic", needs="answer"), agents, app=app, top=1)
    ] == ["strong"]
    with pytest.raises(ConfigurationError, match="poet does not provide answer"):
        coordinate(Task.of("arithmetic", needs="answer"), agents[3:4])
    with pytest.raises(ConfigurationError, match="lookup requires table"):
        coordinate(Task.of("arithmetic", needs="answer", supplies="question"), agents[4:5])
    with pytest.raises(ConfigurationError, match="serves history, not arithmetic"):
        coordinate(Task.of("arithmetic", needs="answer"), agents[5:6])


def test_weighted_consensus_learns_its_weights_from_the_record(app: App) -> None:
    for name in ("good", "bad1", "bad2"):
        app.programs.register(name, {"module": "predict", "signature": "question -> answer"})
    _record(app, "good", [1.0] * 6)
    _record(app, "bad1", [0.0] * 6)
    _record(app, "bad2", [0.0] * 6)

    def member(answer: str) -> dspy.Module:
        module = dspy.Predict("question -> answer")
        module.lm = ScriptedEngine({"answer": answer}).lm(answer)
        return module

    caps = Capabilities(provides="answer")
    agents = [
        Agent("good", member("4"), caps, record="good"),
        Agent("bad1", member("5"), caps, record="bad1"),
        Agent("bad2", member("5"), caps, record="bad2"),
    ]
    assert learned_weights(app, agents, "arithmetic") == pytest.approx([7 / 8, 1 / 8, 1 / 8])
    majority = consensus(agents, {"question": "2+2?"}, signature="question -> answer", app=app)
    assert (majority.answer, majority.chosen, majority.agreement) == ("5", "bad1", 2 / 3)
    learned = consensus(
        agents,
        {"question": "2+2?"},
        signature="question -> answer",
        method="weighted",
        app=app,
        kind="arithmetic",
    )
    assert (learned.answer, learned.chosen) == ("4", "good")
    assert learned.agreement == pytest.approx(7 / 9)
    assert learned.execution_id is not None
    app.flush()
    record = app.executions.get(learned.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    with pytest.raises(ConfigurationError, match="pass app= and kind="):
        consensus(agents, {"question": "2+2?"}, signature="question -> answer", method="weighted")


def test_registered_programs_run_as_consensus_members(app: App) -> None:
    for name in ("a", "b"):
        app.programs.register(name, {"module": "predict", "signature": "question -> answer"})
    agents = [Agent(n, n, Capabilities(provides="answer")) for n in ("a", "b")]
    result = consensus(agents, {"question": "hi"}, signature="question -> answer", app=app)
    assert (result.answer, result.agreement, result.tied) == ("HI", 1.0, False)
    with pytest.raises(ConfigurationError, match="pass app= to load it"):
        consensus(agents, {"question": "hi"}, signature="question -> answer")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Capabilities(provides=()), "need 'provides'"),
        (lambda: Capabilities(provides={"an answer"}), "provides holds names"),
        (lambda: Agent("x y", dspy.Predict("q -> a"), Capabilities(provides="a")), "agent name"),
        (lambda: Agent("x", 3, Capabilities(provides="a")), "dspy.Module or a registered program"),
        (lambda: Task.of(""), "kind holds names"),
    ],
)
def test_bad_agent_definitions_name_the_field(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()  # type: ignore[operator]


def test_consensus_of_registered_programs_on_a_worker_pool(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/p.db", pools={"general": {"size": 2}})
    with App(settings) as app:
        for name, factory in (("four", "build_four"), ("five", "build_five"), ("four-too", "build_four")):
            app.programs.register(name, f"agents_pool_programs:{factory}")
        caps = Capabilities(provides="answer")
        agents = [Agent(n, n, caps) for n in ("five", "four", "four-too")]
        result = consensus(
            agents, {"question": "2+2?"}, signature="question -> answer", app=app, pool="general"
        )
        assert (result.answer, result.chosen, result.agreement) == ("4", "four", 2 / 3)
        weighted = consensus(
            agents,
            {"question": "2+2?"},
            signature="question -> answer",
            method="weighted",
            weights=[3.0, 1.0, 1.0],
            app=app,
            pool="general",
        )
        assert (weighted.answer, weighted.chosen) == ("5", "five")
        app.flush()
        members = [app.executions.get(i) for i in result.member_execution_ids]
        assert [m.program for m in members if m is not None] == ["five", "four", "four-too"]
        assert all(m is not None and (m.placement or {}).get("target") == "pool" for m in members)
        with pytest.raises(ConfigurationError, match="'judge' runs in process"):
            consensus(
                agents,
                {"question": "q"},
                signature="question -> answer",
                method="judge",
                app=app,
                pool="general",
            )
        built = [Agent("inline", dspy.Predict("question -> answer"), caps), agents[0]]
        with pytest.raises(ConfigurationError, match="hold built modules"):
            consensus(built, {"question": "q"}, signature="question -> answer", app=app, pool="general")
