"""The side-by-side benchmark (benchmarks/optimizers.py) at tiny sizes, so that it cannot rot: every
method runs on both tasks, the tables, the targets' verdicts and the plot come out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "optimizers.py"
METHODS = ("bootstrap", "bootstrap_rs", "ensemble", "copro", "miprov2", "simba", "gepa", "holistic",
           "holistic+bs", "tpe", "random")  # fmt: skip


def test_the_optimizers_benchmark_runs_at_tiny_sizes(tmp_path: Path) -> None:
    plot = tmp_path / "optimizers.png"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--seeds", "1", "--out", str(plot)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for task in ("qa", "cls"):
        section = out.split(f"## task {task}", 1)[1].split("## task", 1)[0].split("## target 1 across", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert sorted(row.split(" | ")[0].removeprefix("| ") for row in rows) == sorted(METHODS)
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert int(cells[2]) > 0  # every method made LM calls, counted
            assert 0.0 <= float(cells[3]) <= 1.0
        assert "target 1: holistic within 2% of the best" in section
        assert "target 2 on " + task in section
    across = out.split("## target 1 across seeds", 1)[1]
    for task in ("qa", "cls"):
        seeds = [line for line in across.splitlines() if line.startswith(f"| {task} | ")]
        assert [line.split(" | ")[1] for line in seeds] == ["0", "1", "median"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
