"""``dspex programs durability`` and ``dspex run --durability``."""

from __future__ import annotations

from pathlib import Path

from cli_support import Invoke, as_json

from dspex.runtime import App
from dspex.testing.server import SimServer


def test_program_durability_set_shown_and_reset(dspex: Invoke, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    assert "durability sync" in dspex("programs", "durability", "qa", "sync").stdout
    assert "durability: sync" in dspex("programs", "show", "qa").stdout
    [row] = as_json(dspex("programs", "list", "--json"))
    assert row["durability"] == "sync"
    assert as_json(dspex("programs", "durability", "qa", "--default", "--json")) == {
        "program": "qa",
        "durability": None,
    }
    [row] = as_json(dspex("programs", "list", "--json"))
    assert row["durability"] is None
    bad = dspex("programs", "durability", "qa", "later", code=2)
    assert "durability is 'sync' or 'async'" in bad.stderr
    neither = dspex("programs", "durability", "qa", code=2)
    assert "pass exactly one of sync, async or --default" in neither.stderr
    assert "unknown program" in dspex("programs", "durability", "nope", "sync", code=2).stderr


def test_run_with_sync_durability_is_recorded(dspex: Invoke, settings_sim: SimServer, qa_spec: Path) -> None:
    dspex("programs", "register", "qa", str(qa_spec))
    data = as_json(dspex("run", "qa", "-i", "question=hi", "--durability", "sync", "--json"))
    with App() as app:
        record = app.executions.get(data["execution_id"])
        assert record is not None
        assert record.status == "succeeded"
    bad = dspex("run", "qa", "-i", "question=hi", "--durability", "soon", code=2)
    assert "durability is 'sync' or 'async'" in bad.stderr
