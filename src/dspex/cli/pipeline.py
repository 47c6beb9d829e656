"""``dspex pipeline``: run a declarative pipeline spec with live progress, or check one.

    dspex pipeline check research.yaml                 # validate; print the steps with reads and writes
    dspex pipeline run research.yaml -i text="What is DSPy?"
    dspex pipeline run research.yaml --input @in.json --json

``run`` goes through the App like ``dspex run``: the LM comes from the settings and the run is recorded
(``dspex executions show ID``). While it runs, one line per step shows its status (pending, a spinner
while running, retrying, done, failed, skipped) and duration, updated from ``Pipeline.stream()`` events.
Functions in the spec are found by import path, so their modules must be importable (installed, or on
``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from dspex.cli._render import (
    console,
    emit_json,
    errors,
    fmt_cost,
    fmt_ms,
    json_object,
    key_values,
    open_app,
    text,
)
from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from dspex.pipeline import Event, Pipeline, Step

# DSPy and the pipeline engine are imported inside the commands: every `dspex` command imports this
# module, and `dspex version` should not pay for DSPy.

app = typer.Typer(help="Run and check declarative pipelines (YAML or JSON specs).", no_args_is_help=True)

_SPEC = typer.Argument(..., help="A pipeline spec file (.yaml, .yml or .json).", dir_okay=False)


def _load(spec_file: Path) -> Pipeline:
    from dspex.pipeline.spec import pipeline_from_spec

    return pipeline_from_spec(spec_file)


# -- the steps graph ---------------------------------------------------------------------------------------


def _kind(step: Step) -> str:
    from dspex.modules import catalog
    from dspex.pipeline import FunctionStep, ModuleStep

    if isinstance(step, ModuleStep):
        names = {entry.dspy_class: name for name, entry in catalog().items()}
        return names.get(type(step.module), type(step.module).__name__)
    if isinstance(step, FunctionStep):
        return "function"
    return type(step).__name__.lower()


def _children(step: Step) -> list[tuple[str, Step]]:
    """The steps inside a construct, each with a label saying where it sits."""
    from dspex.pipeline import Map, Parallel, Pipeline, When

    if isinstance(step, Pipeline):
        return [("", s) for s in step.steps]
    if isinstance(step, Parallel):
        return [("branch", b) for b in step.branches]
    if isinstance(step, When):
        return [("then", step.then)] + ([("otherwise", step.otherwise)] if step.otherwise else [])
    if isinstance(step, Map):
        return [(f"each {step.item}", step.inner)]
    return []


def _walk(step: Step, depth: int = 0, label: str = "") -> Iterator[tuple[int, str, Step]]:
    yield depth, label, step
    children = _children(step) + ([("fallback", step.fallback)] if step.fallback is not None else [])
    for child_label, child in children:
        yield from _walk(child, depth + 1, child_label)


def _graph(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [
        {
            "depth": depth,
            "role": label,
            "name": s.name,
            "kind": _kind(s),
            "reads": list(s.reads),
            "writes": list(s.writes),
        }
        for depth, label, s in _walk(pipeline)
    ]


def _label(row: dict[str, Any]) -> str:
    role = f"{row['role']}: " if row["role"] else ""
    return "  " * int(row["depth"]) + role + str(row["name"])


@app.command("check")
def check(
    spec_file: Path = _SPEC,
    as_json: bool = typer.Option(False, "--json", help="Print the steps graph as JSON."),
) -> None:
    """Validate a pipeline spec and print its steps: name, kind, the fields each reads and writes.

    Exit codes: 0 valid, 2 invalid (the error names the path in the spec and its line).
    """
    with errors():
        pipeline = _load(spec_file)
    graph = _graph(pipeline)
    if as_json:
        emit_json({"name": pipeline.name, "inputs": list(pipeline.local_inputs), "steps": graph})
        return
    table = Table(title=f"pipeline {text(pipeline.name)}")
    for column in ("step", "kind", "reads", "writes"):
        table.add_column(column)
    for row in graph:
        table.add_row(
            text(_label(row)), row["kind"], text(", ".join(row["reads"])), text(", ".join(row["writes"]))
        )
    out = console()
    out.print(table)
    required = [f for f in pipeline.local_inputs if f not in pipeline.optional_inputs]
    out.print(
        f"inputs: {text(', '.join(required) or '-')}"
        + (
            f" (optional: {text(', '.join(sorted(pipeline.optional_inputs)))})"
            if pipeline.optional_inputs
            else ""
        )
        + f"  outputs: {text(', '.join(pipeline.local_outputs))}"
    )


# -- live progress -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    label: str
    kind: str
    status: str = "pending"
    attempt: int = 1
    runs: int = 0
    started: float | None = None
    duration_ms: float | None = None
    detail: str = ""
    tokens: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "attempts": self.attempt,
            "runs": self.runs,
            "duration_ms": self.duration_ms,
        }


_STYLE = {
    "pending": "dim",
    "done": "green",
    "fallback": "yellow",
    "retrying": "yellow",
    "failed": "red",
    "failed (continued)": "red",
    "skipped": "dim",
}


class _Progress:
    """Per-step state fed by the pipeline's events; ``render`` draws it (called by rich's refresh thread)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.rows: dict[str, _Row] = {}
        # Step names are unique within one pipeline; nested ones may repeat, and then share a line.
        for row in _graph(pipeline)[1:]:
            self.rows.setdefault(row["name"], _Row(_label({**row, "depth": row["depth"] - 1}), row["kind"]))

    def row(self, name: str) -> _Row:
        return self.rows.setdefault(name, _Row(name, "?"))

    def update(self, event: Event) -> None:
        from dspex.pipeline import StepFailed, StepFinished, StepRetried, StepSkipped, StepStarted, Token

        if isinstance(event, StepStarted):
            row = self.row(event.step)
            row.status, row.attempt = "running", event.attempt
            if row.started is None:
                row.started = time.perf_counter()
        elif isinstance(event, StepRetried):
            row = self.row(event.step)
            row.status = "retrying"
            row.detail = f"attempt {event.attempt} failed: {event.error.get('message', '')}"
        elif isinstance(event, StepFinished):
            row = self.row(event.step)
            row.status = "fallback" if event.fallback else "done"
            row.runs += 1
            row.duration_ms = (
                event.duration_ms if row.runs == 1 else (row.duration_ms or 0) + event.duration_ms
            )
        elif isinstance(event, StepFailed):
            row = self.row(event.step)
            row.status = "failed (continued)" if event.handled else "failed"
            row.detail = f"{event.error.get('type', 'Error')}: {event.error.get('message', '')}"
        elif isinstance(event, StepSkipped):
            row = self.row(event.step)
            row.status, row.detail = "skipped", f"missing {', '.join(event.missing)}"
        elif isinstance(event, Token):
            row = self.row(event.step)
            row.tokens.append(event.chunk)

    def render(self) -> Table:
        table = Table(box=None, show_header=True, pad_edge=False)
        for column in ("step", "kind", "status", "ms", "detail"):
            table.add_column(column, overflow="fold" if column == "detail" else "ellipsis")
        for row in list(self.rows.values()):
            status: Any
            if row.status == "running":
                label = "running" + (f" (attempt {row.attempt})" if row.attempt > 1 else "")
                status = Spinner("dots", text=label, style="cyan")
            else:
                status = Text(
                    row.status + (f" x{row.runs}" if row.runs > 1 else ""), style=_STYLE[row.status]
                )
            elapsed = row.duration_ms
            if elapsed is None and row.started is not None and row.status in ("running", "retrying"):
                elapsed = (time.perf_counter() - row.started) * 1000
            detail = row.detail
            if not detail and row.status == "running" and row.tokens:  # what the LM is writing right now
                detail = "".join(row.tokens)[-80:].replace("\n", " ")
            table.add_row(Text(row.label), Text(row.kind), status, fmt_ms(elapsed), Text(detail))
        return table


def _streaming_program(pipeline: Pipeline, on_event: Callable[[Event], None]) -> Any:
    """A program that runs ``pipeline`` through its event stream, handing each event to ``on_event``.

    App runs it like any program (recording, LM, callbacks). The pipeline is held by its bound ``stream``
    method, so App does not mistake a single predictor inside it for the pipeline's input signature.
    """
    import dspy

    class PipelineRun(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
        def __init__(self) -> None:
            super().__init__()
            self._stream = pipeline.stream

        async def aforward(self, **inputs: Any) -> Any:
            result = None
            async for event in self._stream(**inputs):
                on_event(event)
                result = getattr(event, "result", result)  # the last event, Finished, has the result
            return result

    return PipelineRun()


def _check_inputs(pipeline: Pipeline, inputs: dict[str, Any]) -> None:
    required = [f for f in pipeline.local_inputs if f not in pipeline.optional_inputs]
    for name in inputs:
        if name not in pipeline.local_inputs:
            raise ConfigurationError(
                f"pipeline {pipeline.name!r} takes no input {name!r}; "
                + did_you_mean(name, pipeline.local_inputs, what="input")
            )
    missing = [f for f in required if f not in inputs]
    if missing:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r} needs the inputs {', '.join(missing)}; give them with -i {missing[0]}=... "
            "or --input '{...}'"
        )


@app.command("run")
def run(
    spec_file: Path = _SPEC,
    input_json: str | None = typer.Option(
        None, "--input", help="Inputs as a JSON object; '@file.json' reads a file, '-' reads stdin."
    ),
    fields: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [],
        "-i",
        "--field",
        help="One input as key=value (repeatable); JSON values are parsed. Wins over --input.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="No live view; print outputs, per-step status, execution id and usage as JSON."
    ),
) -> None:
    """Run a pipeline spec once with live progress per step, record it, and print its outputs.

    Exit codes: 0 success, 1 a step failed (or the LM), 2 an invalid spec, inputs or settings.
    """
    out = console()
    with open_app() as dspex_app:
        pipeline = _load(spec_file)
        inputs = json_object(input_json, "--input") if input_json is not None else {}
        inputs.update(key_values(fields, "-i"))
        _check_inputs(pipeline, inputs)
        lm = dspex_app.lm()  # before the live view starts, so a missing LM is one plain error line
        progress = _Progress(pipeline)
        program = _streaming_program(pipeline, progress.update)
        call = dspex_app.arun(program, inputs, program_name=pipeline.name, lm=lm)
        if as_json:
            result = asyncio.run(call)
        else:
            with Live(get_renderable=progress.render, console=out, refresh_per_second=12.5):
                result = asyncio.run(call)
            if not out.is_terminal:  # rich ends the live view with a newline only on a terminal
                out.line()
    outputs = dict(result.outputs)
    step_errors = outputs.pop("step_errors", None) or {}
    tokens = sum(int(u.get("total_tokens") or 0) for u in result.usage.values())
    if as_json:
        emit_json(
            {
                "pipeline": pipeline.name,
                "execution_id": result.execution_id,
                "outputs": outputs,
                "step_errors": step_errors,
                "steps": {name: row.to_json() for name, row in progress.rows.items()},
                "duration_ms": result.duration_ms,
                "usage": result.usage,
                "total_tokens": tokens,
                "cost_usd": result.cost_usd,
            }
        )
        return
    table = Table(title=f"{text(pipeline.name)} outputs")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    for name, value in outputs.items():
        table.add_row(text(name), text(value))
    parts: list[Any] = [table]
    for name, info in step_errors.items():
        parts.append(Text(f"step {name} did not finish: {info.get('message', '')}", style="yellow"))
    out.print(Group(*parts))
    out.print(
        f"execution {result.execution_id}  {fmt_ms(result.duration_ms)} ms  {tokens} tokens  "
        f"cost {fmt_cost(result.cost_usd)} USD"
    )
