"""Shared helpers for the module catalog tests: a registry of sample tools."""

from __future__ import annotations

import pytest
from modules_sample_tools import add, one_if_good, shout

from dspex.modules import ToolRegistry


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([add, shout, one_if_good])
