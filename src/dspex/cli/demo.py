"""``dspex demo``: the offline tour, rendered as tables."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dspex.cli._render import console as wide_console
from dspex.demo import DemoReport, OptimizationDemo, run_demo


def demo(
    examples: int = typer.Option(12, min=1, max=200, help="Task examples per module and model."),
) -> None:
    """Build signatures and modules, run them on the simulated LM, then optimize a program's variables
    (offline, about 20 seconds)."""
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # one INFO line per study otherwise
    console = wide_console()
    with console.status("starting") as status:
        report = run_demo(examples=examples, progress=lambda message: status.update(message))
    render(report, console)


def render(report: DemoReport, console: Console) -> None:
    """Print the demo report as tables."""
    signatures = Table(title="Signatures (native engine, same fields and types as dspy.Signature)")
    signatures.add_column("spec", overflow="fold")
    signatures.add_column("inputs")
    signatures.add_column("outputs")
    for row in report.signatures:
        signatures.add_row(
            escape(row.spec),  # type texts such as list[str] would otherwise read as rich markup
            escape(", ".join(f"{name}: {kind}" for name, kind in row.inputs)),
            escape(", ".join(f"{name}: {kind}" for name, kind in row.outputs)),
        )
    console.print(signatures)

    modules = Table(title=f"Catalog modules on the simulated LM ({report.server_url})")
    for column in ("module", "model", "accuracy", "expected", "ms/call", "tokens", "cost USD"):
        modules.add_column(column, justify="left" if column in ("module", "model") else "right")
    for m in report.modules:
        modules.add_row(
            m.module,
            m.model,
            f"{m.correct}/{m.examples} ({m.accuracy:.0%})",
            f"{m.expected_accuracy:.0%}",
            f"{m.mean_latency_ms:.1f}",
            str(m.tokens),
            f"{m.cost_usd:.5f}",
        )
    console.print(modules)
    research = Table(
        title=f"Research-assistant pipeline on {report.research_model}: parse, refine, BM25 + keyword retrieval "
        "in parallel, rerank, compare, cite"
    )
    for column in ("question", "answer", "gold", "citations", "trace spans", "ms"):
        research.add_column(column, justify="right" if column in ("trace spans", "ms") else "left")
    for r in report.research:
        research.add_row(
            escape(r.question),
            escape(r.answer) + (" (right)" if r.correct else " (wrong)"),
            escape(r.gold or "-"),
            escape(", ".join(r.citations) or "-"),
            str(r.spans),
            f"{r.duration_ms:.0f}",
        )
    if report.research:
        console.print(research)
    if report.optimization is not None:
        _render_optimization(report.optimization, console)
    console.print(f"{report.requests} HTTP requests served by the simulated LM; all offline.")
    programs = ", ".join(f"{name} (production {version[:12]})" for name, version in report.programs)
    console.print(f"Registered programs: {escape(programs)}")
    console.print(
        f"{report.recorded} runs recorded in {escape(report.database_url)}; "
        "see them with `dspex executions list`."
    )


def _render_optimization(o: OptimizationDemo, console: Console) -> None:
    table = Table(
        title=f"Holistic optimizer on {o.program} (model, temperature, module type, demos): {o.trials} trials, "
        f"{o.pruned} pruned, {o.lm_calls} LM calls on {o.devset} dev examples, {o.duration_s:.1f} s; "
        f"quality on {o.heldout} held-out examples"
    )
    for column in ("", "configuration", "quality", "expected", "cost USD / example"):
        table.add_column(
            column, justify="right" if column in ("quality", "expected", "cost USD / example") else "left"
        )
    for label, config, quality, expected, cost in (
        (
            "before (production, default config)",
            o.before,
            o.before_quality,
            o.before_expected,
            o.before_cost_per_example,
        ),
        ("after (best found)", o.after, o.after_quality, o.after_expected, o.after_cost_per_example),
    ):
        shown = ", ".join(f"{k}={v}" for k, v in config.items())
        table.add_row(label, escape(shown), f"{quality:.0%}", f"{expected:.0%}", f"{cost:.6f}")
    console.print(table)
    console.print(
        f"New version {o.version_id[:12]} of {escape(o.program)} is in optimizing (run {o.optimization_id}); "
        f"promote it with `dspex programs promote {escape(o.program)} {o.version_id[:12]}`."
    )
