"""Helpers of the CLI tests, imported by bare name (tests/cli has no __init__.py, like tests/programs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from click.testing import Result

Invoke = Callable[..., Result]


def as_json(result: Result) -> Any:
    """The stdout of a ``--json`` command, which must be JSON and nothing else."""
    return json.loads(result.stdout)
