"""The one service facade: every run, from Python, the CLI or the server, goes through :class:`App`."""

from __future__ import annotations

from dspex.runtime.app import App, RunResult

__all__ = ["App", "RunResult"]
