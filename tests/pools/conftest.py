"""Fixtures of the pool tests: Apps whose ``general`` pool runs the programs of ``pool_programs``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from dspex.runtime.app import App
from dspex.settings import Settings

SCRIPTED = "pool_programs:scripted"


@pytest.fixture
def pool_app(database_url: str) -> Iterator[Callable[..., App]]:
    """``pool_app(programs, pool, **settings)``: an App whose ``general`` pool has the settings ``pool``
    (the scripted LM's initializer unless it names one), with ``pool_programs:build_<name>`` registered
    for each of ``programs``; closed after the test."""
    apps: list[App] = []

    def make(programs: Iterable[str], pool: Mapping[str, Any], **settings: Any) -> App:
        pools = {"general": {"initializer": SCRIPTED, **pool}}
        app = App(Settings(database_url=database_url, pools=pools, **settings))
        apps.append(app)
        for name in programs:
            app.programs.register(name, f"pool_programs:build_{name}")
        return app

    yield make
    for app in apps:
        app.close()
