from __future__ import annotations

import subprocess
import sys

import dspex


def test_all_lists_exactly_the_public_names() -> None:
    # "@py_builtins" and friends are pytest's assertion-rewriting artifacts, not ours.
    public = sorted(name for name in dir(dspex) if not name.startswith(("_", "@")) and name not in _MODULES)
    assert dspex.__all__ == public


def test_every_public_name_resolves() -> None:
    for name in dspex.__all__:
        assert getattr(dspex, name) is not None


def test_import_stays_light() -> None:
    heavy = ["fastapi", "sqlalchemy", "optuna", "litellm", "ray", "starlette", "uvicorn", "typer", "rich"]
    code = f"import sys, dspex; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# Submodules appear as attributes once imported; they are not part of the curated surface.
_MODULES = {
    "errors",
    "settings",
    "lm",
    "testing",
    "signatures",
    "modules",
    "cli",
    "runtime",
    "store",
    "telemetry",
    "jsonable",
    "demo",
}
