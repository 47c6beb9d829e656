"""``dspex scaffold``: the command runs the loop on the settings' LM and exits 1 when no spec is acceptable."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Invoke

from dspex.testing.server import SimServer


def test_scaffold_without_an_acceptable_spec_exits_1_and_bad_tests_exit_2(
    dspex: Invoke, settings_sim: SimServer, tmp_path: Path
) -> None:
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"inputs": {"question": "2+3"}, "expected": {"answer": "5"}}) + "\n")
    # The simulated server answers a spec request with prose, never a pipeline: every proposal is rejected.
    result = dspex("scaffold", "add the numbers", "--tests", str(tests), "--iterations", "2", code=1)
    assert "no acceptable pipeline spec in 2 iteration" in result.output
    assert settings_sim.stats().statuses == {200: 2}
    tests.write_text("not json\n")
    result = dspex("scaffold", "add the numbers", "--tests", str(tests), code=2)
    assert "tests line 1 is not JSON" in result.output
