from __future__ import annotations

import subprocess
import sys
import types

import dspex


def test_all_lists_exactly_the_public_names() -> None:
    # "@py_builtins" and friends are pytest's assertion-rewriting artifacts, not ours; submodules appear as
    # attributes once imported and are not part of the curated surface.
    public = sorted(
        name
        for name in dir(dspex)
        if not name.startswith(("_", "@")) and not isinstance(getattr(dspex, name), types.ModuleType)
    )
    assert dspex.__all__ == public


def test_every_public_name_resolves() -> None:
    for name in dspex.__all__:
        assert getattr(dspex, name) is not None


def test_import_stays_light() -> None:
    heavy = ["fastapi", "sqlalchemy", "optuna", "litellm", "ray", "starlette", "uvicorn", "typer", "rich"]
    code = f"import sys, dspex; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_testing_surface_is_lazy_and_complete() -> None:
    import dspex.testing

    assert set(dspex.testing.__all__) == set(dspex.testing._LAZY)
    for name in dspex.testing.__all__:
        assert getattr(dspex.testing, name) is not None
