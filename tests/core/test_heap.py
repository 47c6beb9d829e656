"""Processes DSPex owns freeze their start-up heap (``dspex._heap``): checked in child processes, since
freezing is for the whole process and the test runner's heap is not DSPex's to pin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_start_up_garbage_is_collected_and_what_lives_is_frozen() -> None:
    out = _python(
        "import gc, weakref\n"
        "import dspy\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a  # a cycle: only the collector frees it\n"
        "dead = weakref.ref(a)\n"
        "del a, b\n"
        "kept = [Node()]\n"
        "from dspex._heap import freeze_startup_heap\n"
        "frozen = freeze_startup_heap()\n"
        "print(frozen, dead() is None, gc.get_freeze_count() == frozen, len(gc.get_objects()) < frozen // 10)\n"
    )
    frozen, collected, counted, young = out.split()
    assert int(frozen) > 50_000  # DSPy's heap
    assert collected == "True"  # the dead cycle was collected first, not frozen
    assert counted == "True"
    assert young == "True"  # the collector's passes now walk a small heap


def test_the_pools_forkserver_freezes_its_heap_on_import() -> None:
    out = _python(
        "import gc\nimport dspex.pools.worker\nimport dspex.pools._forkserver\nprint(gc.get_freeze_count())"
    )
    assert int(out) > 50_000


def test_importing_dspex_freezes_nothing() -> None:
    out = _python(
        "import gc\nimport dspex\nfrom dspex.runtime import App\nimport dspex.pools.pool, dspex.pools.worker\n"
        "print(gc.get_freeze_count())"
    )
    assert out == "0"


def test_dspex_serve_freezes_its_heap_before_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import dspex._heap
    from dspex.cli import app as cli

    calls: list[str] = []
    monkeypatch.setattr(dspex._heap, "freeze_startup_heap", lambda: calls.append("freeze") or 0)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append("serve"))
    runner = CliRunner(env={"DSPEX_HOME": str(tmp_path), "DSPEX_DATABASE_URL": f"sqlite:///{tmp_path}/d.db"})
    result = runner.invoke(cli, ["serve", "--port", "0"])
    assert result.exit_code == 0, result.stderr
    assert calls == ["freeze", "serve"]
