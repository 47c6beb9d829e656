"""Jobs share one trace: each attempt is a ``job <kind>`` span, and the runs a handler makes are its
children; the submitter's trace context travels in the payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dspex.jobs import Worker, submit_evaluation
from dspex.runtime import App
from dspex.settings import Settings
from dspex.telemetry.context import continue_trace
from dspex.telemetry.otel import Telemetry
from dspex.testing import ScriptedEngine

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_jobs_runs_share_its_trace_under_the_attempts_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    engine = ScriptedEngine({"answer": "a"})
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    trace_ids: dict[str, list[str | None]] = {}

    def probe(app: App, job: Any, context: Any) -> dict[str, Any]:
        results = [app.run(dspy.Predict("question -> answer"), {"question": q}) for q in ("one", "two")]
        trace_ids[job.id] = [r.trace_id for r in results]
        return {"runs": len(results)}

    with App(settings, lm=engine.lm(), telemetry=Telemetry(exporter)) as app:
        plain = app.jobs.enqueue("probe", {"v": 1})
        joined = app.jobs.enqueue("probe", {"v": 1, "traceparent": TRACEPARENT})
        Worker(app, kinds=["probe"], handlers={"probe": probe}, poll_s=0.05).run(stop_when_idle=True)
        app.flush()
    spans = list(exporter.get_finished_spans())
    assert trace_ids[plain.id] == [plain.id, plain.id]  # a job's own trace is named by its id
    assert trace_ids[joined.id] == ["4bf92f3577b34da6a3ce929d0e0e4736"] * 2
    for job, parent in ((plain, None), (joined, "00f067aa0ba902b7")):
        trace_id = int(str(trace_ids[job.id][0]), 16)
        (attempt,) = [s for s in spans if s.name == "job probe" and s.context.trace_id == trace_id]
        assert (f"{attempt.parent.span_id:016x}" if attempt.parent else None) == parent
        assert attempt.attributes is not None
        assert attempt.attributes["dspex.job.id"] == job.id
        assert attempt.attributes["dspex.job.outcome"] == "succeeded"
        runs = [s for s in spans if s.name == "run Predict" and s.context.trace_id == trace_id]
        assert len(runs) == 2
        assert all(run.parent is not None and run.parent.span_id == attempt.context.span_id for run in runs)


def test_a_submitted_job_keeps_the_submitters_trace(tmp_path: Path) -> None:
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'submit.db'}")
    with App(settings, telemetry=False) as app:
        app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
        app.datasets.import_records("qa-set", [{"question": "q", "answer": "a"}], inputs=["question"])
        with continue_trace(TRACEPARENT):
            joined = submit_evaluation(app, program="qa", dataset="qa-set")
        alone = submit_evaluation(app, program="qa", dataset="qa-set")
    assert joined.payload["traceparent"] == TRACEPARENT
    assert "traceparent" not in alone.payload
