"""``dspex adapt start|show|freeze|stop`` over runs served through the simulated LM, quality from feedback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_support import Invoke, as_json

from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.variables import Bindings, Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document


def _space_file(tmp_path: Path) -> Path:
    document = space_document(
        VariableSpace([Variable.float("temperature", 0.0, 1.0)]), Bindings([bind.temperature("temperature")])
    )
    path = tmp_path / "space.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_start_show_freeze_stop(dspex: Invoke, settings_sim: Any, tmp_path: Path) -> None:
    with App(Settings.load()) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
    space = str(_space_file(tmp_path))
    started = as_json(
        dspex("adapt", "start", "qa-live", "--program", "qa", "--space", space, "--arm", '{"temperature": 0.1}',
              "--arm", '{"temperature": 0.9}', "--policy", '{"seed": 3}', "--json")
    )  # fmt: skip
    assert started["status"] == "active"
    assert sorted(a["configuration"]["temperature"] for a in started["arms"]) == [0.1, 0.9]
    assert started["reward"]["metric"] is None  # quality from feedback

    with App(Settings.load()) as app:
        adaptive = app.adapt.get("qa-live")
        served = [adaptive.serve({"question": "What is the capital of Peru?"}) for _ in range(6)]
    for result, _decision in served:
        dspex("feedback", result.execution_id, "--score", "1")
    shown = as_json(dspex("adapt", "show", "qa-live", "--json"))
    assert shown["runs"] == 6
    assert sum(a["rewarded"] for a in shown["arms"]) == 6  # the feedback became rewards of the right arms
    for arm in shown["arms"]:
        assert arm["rewarded"] == sum(1 for _, d in served if d.arm == arm["arm"])
    text = dspex("adapt", "show", "qa-live").stdout
    assert "Arms" in text
    assert "Reward over time" in text
    assert "qa-live" in dspex("adapt", "show").stdout

    arm = served[0][1].arm
    assert f"frozen on arm {arm}" in dspex("adapt", "freeze", "qa-live", "--arm", arm[:6]).stdout
    assert as_json(dspex("adapt", "show", "qa-live", "--json"))["frozen_arm"] == arm
    dspex("adapt", "stop", "qa-live")
    assert as_json(dspex("adapt", "show", "qa-live", "--json"))["status"] == "stopped"
    resumed = as_json(dspex("adapt", "start", "qa-live", "--arm", '{"temperature": 0.5}', "--json"))
    assert resumed["status"] == "active"
    assert len(resumed["arms"]) == 3


def test_errors_say_what_to_change(dspex: Invoke, settings_sim: Any, tmp_path: Path) -> None:
    with App(Settings.load()) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
    space = str(_space_file(tmp_path))
    missing = dspex("adapt", "start", "qa-live", code=2)
    assert "give --program and --space" in missing.stderr
    bad_arm = dspex(
        "adapt", "start", "qa-live", "--program", "qa", "--space", space, "--arm", '{"temp": 1}', code=2
    )
    assert "unknown variable 'temp'" in bad_arm.stderr
    dspex("adapt", "start", "qa-live", "--program", "qa", "--space", space, "--arm", '{"temperature": 0.1}')
    fixed = dspex("adapt", "start", "qa-live", "--space", space, code=2)
    assert "settings are fixed" in fixed.stderr
    assert "no adaptive program 'nope'" in dspex("adapt", "show", "nope", code=2).stderr
