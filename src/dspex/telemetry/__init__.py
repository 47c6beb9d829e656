"""Telemetry: what a run did, captured through DSPy's own callback and usage hooks."""

from __future__ import annotations

from dspex.telemetry.recorder import RunRecorder, Span, SpanKind

__all__ = ["RunRecorder", "Span", "SpanKind"]
