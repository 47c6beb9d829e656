from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dspy

from dspex.demo import DEMO_MODELS, DEMO_MODULES, DEMO_SIGNATURES, run_demo
from dspex.runtime import App
from dspex.settings import Settings
from dspex.store.executions import ExecutionFilter


def test_demo_registers_runs_and_records(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path / "home")
    report = run_demo(examples=3, settings=settings, optimize_trials=6)
    assert [row.spec for row in report.signatures] == list(DEMO_SIGNATURES)
    assert report.signatures[2].outputs[1] == ("keywords", "list[str]")
    assert len(report.modules) == len(DEMO_MODULES) * len(DEMO_MODELS)
    assert all(0 <= row.correct <= row.examples == 3 for row in report.modules)
    assert all(row.tokens > 0 and row.cost_usd > 0 for row in report.modules)
    # sim-large costs more per token than sim-small
    by_model = {row.model: row.cost_usd for row in report.modules if row.module == "predict"}
    assert by_model["sim-large"] > by_model["sim-small"]
    assert len(report.research) == 3
    assert all(row.answer and row.citations and row.spans > 20 for row in report.research)
    assert report.recorded == 3 * len(report.modules) + len(report.research)
    assert report.requests >= report.recorded
    o = report.optimization
    assert o is not None
    assert o.trials == 6
    assert o.lm_calls > 0
    assert o.heldout == 50
    assert o.devset == 30
    assert set(o.before) == set(o.after) == {"model", "temperature", "module", "demos"}
    assert 0.0 <= o.before_quality <= 1.0
    assert 0.0 <= o.after_quality <= 1.0
    assert o.before_cost_per_example > 0
    assert o.after_cost_per_example > 0
    # the search picks by dev score: its pick is expected to beat the default on the task's formula
    assert o.after_expected > o.before_expected
    with App(settings) as app:
        assert app.optimizations.get(o.optimization_id).status == "succeeded"
        assert app.programs.version(o.version_id).status == "optimizing"
        app.programs.promote(o.program, o.version_id)
        assert app.programs.resolve(o.program).id == o.version_id
        # the promoted version runs the module type the search chose, whatever the source says
        chosen = {"predict": dspy.Predict, "chain_of_thought": dspy.ChainOfThought}[o.after["module"]]
        assert type(app.programs.load(o.program)) is chosen
        for name, version_id in report.programs:
            assert app.programs.resolve(name).id == version_id
            assert app.programs.resolve(name).status == "production"
            assert app.executions.count(ExecutionFilter(program=name, version_id=version_id)) == 3 * len(
                DEMO_MODELS
            )


def test_dspex_demo_command_runs_offline(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dspex.cli", "demo", "--examples", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "chain_of_thought" in out.stdout
    assert "runs recorded" in out.stdout
    assert "Research-assistant pipeline" in out.stdout
    assert "Holistic optimizer on demo-qa" in out.stdout
    assert "after (best found)" in out.stdout
    assert "is in optimizing" in out.stdout
    assert "promote it with" in out.stdout
    assert "new study created" not in out.stderr
    assert (tmp_path / "home" / "dspex.db").exists()  # DSPEX_HOME, set for every test
