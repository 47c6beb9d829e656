"""``App.optimize``: a registered program, a named dataset, the simulated LM; a run record and a new
version in ``optimizing`` that promotes like any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex import ConfigurationError, Settings
from dspex.optimize.search import TrialProgress
from dspex.runtime import App
from dspex.testing.server import SimServer
from dspex.variables import Variable, VariableSpace, bind

SPACE = VariableSpace(
    [
        Variable.model("model", ["openai/sim-small", "openai/sim-large"]),
        Variable.float("temperature", 0.0, 1.0, step=0.5),
    ]
)
BINDINGS = [bind.model("model"), bind.temperature("temperature")]


@pytest.fixture
def app(sim_lm_server: SimServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[App]:
    # No lms= and no App LM: the model choices are built from the settings' endpoint, as the CLI does.
    monkeypatch.setenv("DSPEX_API_BASE", sim_lm_server.url)
    monkeypatch.setenv("DSPEX_API_KEY", "sim")
    monkeypatch.setenv("DSPEX_LM_CACHE", "false")
    with App(Settings.load(home=tmp_path / "home")) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        rows = [
            {**row, "part": "train" if i < 10 else "dev"}
            for i, row in enumerate(sim_lm_server.task.dicts()[:26])
        ]
        app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
        yield app


def test_optimize_records_the_run_and_saves_a_promotable_version(app: App, sim_lm_server: SimServer) -> None:
    seen: list[TrialProgress] = []
    result = app.optimize(
        "qa", dataset="qa-set", space=SPACE, bindings=BINDINGS, n_trials=4, seed=1, on_trial=seen.append
    )
    assert result.finished == 4
    # Each trial once, in the order trials ended (the start-up bracket ends them out of number order).
    ended = sorted(result.trials, key=lambda t: (t.finished_at, t.number))
    assert [p.trial.number for p in seen] == [t.number for t in ended]
    assert seen[-1].finished == 4
    assert seen[-1].n_trials == 4
    assert seen[-1].lm_calls == result.lm_calls > 0
    assert seen[-1].best is not None
    assert seen[-1].best.number == result.best.number
    run = app.optimizations.get(result.id)
    assert run.status == "succeeded"
    assert run.program == "qa"
    assert run.result_version_id == result.version_id is not None
    assert run.best is not None
    assert run.best["number"] == result.best.number
    assert [t.number for t in app.optimizations.trials(result.id)] == [t.number for t in result.trials]
    assert [r.id for r in app.optimizations.runs(program="qa")] == [result.id]
    # the dev split (16 examples) is the devset: a complete trial saw all of it
    assert max(result.best.intermediate) == 16
    version = app.programs.version(result.version_id)
    assert version.status == "optimizing"
    assert version.variables == result.best.configuration
    app.programs.promote("qa", result.version_id)
    assert app.programs.resolve("qa").id == result.version_id
    assert app.programs.resolve("qa").status == "production"
    # the same call again resumes the finished run: no new trial, no LM call
    requests = sim_lm_server.stats().total_requests
    # Same inputs resume the finished run: same id, no new trial, no LM call. The program now resolves
    # to the promoted version, so pin the version the run started from.
    start = [v for v in app.programs.versions("qa") if v.status != "production"][-1]
    again = app.optimize(
        "qa", dataset="qa-set", space=SPACE, bindings=BINDINGS, n_trials=4, seed=1, version_id=start.id
    )
    assert again.id == result.id
    assert again.finished == 4
    assert again.version_id == result.version_id
    assert sim_lm_server.stats().total_requests == requests


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "nope"}, "dataset"),
        ({"dataset": "qa-set", "metric": "exact"}, "exact_match"),
        ({"dataset": "qa-set", "split": "test"}, "split"),
    ],
)
def test_optimize_names_bad_inputs(app: App, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.optimize("qa", space=SPACE, bindings=BINDINGS, n_trials=1, **kwargs)  # type: ignore[arg-type]


def test_optimize_unknown_program(app: App) -> None:
    with pytest.raises(ConfigurationError, match="qa"):
        app.optimize("qaa", dataset="qa-set", space=SPACE, bindings=BINDINGS, n_trials=1)
