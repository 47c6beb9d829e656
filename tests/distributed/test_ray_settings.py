"""The Ray settings: the cluster address from DSPEX_RAY_ADDRESS, a pool's backend checked by name."""

from __future__ import annotations

import pydantic
import pytest

from dspex.settings import Settings


def test_the_ray_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_RAY_ADDRESS", "ray://head:10001")
    assert Settings.load().ray_address == "ray://head:10001"


def test_an_unknown_backend_is_refused_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"pools\.cluster\.backend"):
        Settings(pools={"cluster": {"backend": "dask"}})
    assert Settings(pools={"cluster": {"backend": "ray"}}).pools["cluster"].actor_cpus == 1.0
