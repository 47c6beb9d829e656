"""Helpers of the service tests, imported by bare name (tests/server has no __init__.py, like tests/cli)."""

from __future__ import annotations

import json
from typing import Any

QA_SPEC = {"module": "predict", "signature": "question -> answer"}


def sse(text: str) -> list[tuple[str, Any]]:
    """The ``(event, data)`` messages of a text/event-stream body (comments skipped)."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events
