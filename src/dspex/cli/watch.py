"""``dspex watch``: live signals in the terminal: per program, version, model and variable configuration,
success rate, latency, tokens, cost and quality over a rolling window, their trends, and the anomalies as
they happen (:mod:`dspex.telemetry.signals` explains the statistics and thresholds).

    dspex watch                         # refreshes every 2 s until Ctrl-C
    dspex watch --program qa --window 15m --interval 5   # over the [signals] thresholds of dspex.toml
    dspex watch --once                  # one snapshot, printed, then exit (scripts, CI)
    dspex watch --once --json           # the snapshot and its events as JSON

It reads the store this process's settings name (the server's, when they share it), nothing else.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dspex.cli._render import console, emit_json, errors, fmt_cost, fmt_ms, open_app, parse_age_days, text
from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.telemetry.signals import GroupStats, SignalEvent, SignalReport

__all__ = ["watch"]

_DIMENSIONS = ("program", "version", "model", "config")
_TREND_STYLE = {"improving": "green", "degrading": "bold red", "unstable": "yellow"}
_KEEP_EVENTS = 12


def watch(
    program: str | None = typer.Option(None, "--program", help="Only this program's groups and events."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, max=3600, help="Seconds between refreshes."),
    window: str | None = typer.Option(
        None,
        "--window",
        help="The rolling window: 15m, 1h, 1d... (default: window_s of \\[signals], else 1h).",
    ),
    window_runs: int | None = typer.Option(
        None,
        "--window-runs",
        min=10,
        max=100_000,
        help="At most this many runs per group in the window (default: \\[signals], else 500).",
    ),
    by: str = typer.Option(
        "program,version,model,config",
        "--by",
        help="Which groups to show: some of program, version, model, config (comma-separated).",
    ),
    as_json: bool = typer.Option(False, "--json", help="With --once: print the snapshot and events as JSON."),
) -> None:
    """Watch live signals: rolling statistics, trends and anomalies of the recorded runs."""
    from dspex.telemetry.signals import Thresholds

    if as_json and not once:
        raise typer.BadParameter("--json prints one snapshot: use it with --once")
    with errors():
        dimensions = _dimensions(by)
        given: dict[str, float] = {}  # what the options say, over the settings' [signals]
        if window is not None:
            given["window_s"] = parse_age_days(window, "--window") * 86400.0
        if window_runs is not None:
            given["window_runs"] = window_runs
    with open_app() as dspex_app:
        with errors():
            thresholds = Thresholds(**{**dspex_app.settings.signals, **given})  # type: ignore[arg-type]
        signals = dspex_app.open_signals(thresholds)
        events: collections.deque[SignalEvent] = collections.deque(maxlen=_KEEP_EVENTS)
        events.extend(e for e in signals.poll() if program is None or e.where.program == program)
        if once:
            report = signals.report(program=program)
            if as_json:
                emit_json({"report": report.to_json(), "events": [e.to_json() for e in events]})
            else:
                console().print(_view(report, events, dimensions, None))
            return
        out = console()
        try:
            with Live(_view(signals.report(program=program), events, dimensions, interval), console=out,
                      auto_refresh=False) as live:  # fmt: skip
                while True:
                    time.sleep(interval)
                    new = signals.poll()
                    events.extend(e for e in new if program is None or e.where.program == program)
                    live.update(
                        _view(signals.report(program=program), events, dimensions, interval), refresh=True
                    )
        except KeyboardInterrupt:
            out.print("\nstopped")


def _dimensions(by: str) -> frozenset[str]:
    chosen = frozenset(part.strip() for part in by.split(",") if part.strip())
    unknown = sorted(chosen - set(_DIMENSIONS))
    if unknown or not chosen:
        raise ConfigurationError(f"--by takes some of {', '.join(_DIMENSIONS)} (comma-separated), got {by!r}")
    return chosen


def _view(
    report: SignalReport, events: Iterable[SignalEvent], dimensions: frozenset[str], interval: float | None
) -> Group:
    minutes = report.window_s / 60
    every = f", refreshed every {interval:g} s (Ctrl-C to stop)" if interval is not None else ""
    title = (
        f"Signals at {report.at:%H:%M:%SZ}: last {minutes:g} min, at most {report.window_runs} runs{every}"
    )
    groups = [g for g in report.groups if g.where.dimension in dimensions]
    parts: list[Table | Text] = [_table(groups, title) if groups else Text(f"{title}\nno runs in the window")]
    recent = list(events)
    if recent:
        log = Table(title="Events (newest last)", show_header=False, box=None)
        log.add_column("at", no_wrap=True)
        log.add_column("event", overflow="fold")
        for event in recent:
            style = "bold red" if event.type == "anomaly" else _TREND_STYLE.get(event.trend or "", "")
            log.add_row(f"{event.at:%H:%M:%S}", f"[{style}]{text(event.kind)}[/] {text(event.message)}")
        parts.append(log)
    return Group(*parts)


def _table(groups: Sequence[GroupStats], title: str) -> Table:
    table = Table(title=title)
    columns = ("group", "runs", "success", "p50 ms", "p95 ms", "tokens/run", "cost/run USD", "quality")
    for column in (*columns, "trends", "anomalies"):
        table.add_column(
            column,
            justify="left" if column in ("group", "trends", "anomalies") else "right",
            no_wrap=column == "group",
        )
    for g in groups:
        table.add_row(
            _label(g),
            str(g.runs),
            "-" if g.success_rate is None else f"{g.success_rate:.1%}",
            fmt_ms(g.p50_ms),
            fmt_ms(g.p95_ms),
            "-" if g.tokens_per_run is None else f"{g.tokens_per_run:,.0f}",
            fmt_cost(g.cost_per_run),
            "-" if g.quality is None else f"{g.quality:.2f} ({g.ratings})",
            _trends(g),
            f"[bold red]{text(', '.join(g.anomalies))}[/]" if g.anomalies else "-",
        )
    return table


def _label(group: GroupStats) -> str:
    """A program's name; its versions, models and configurations indented under it."""
    where = group.where
    if where.dimension == "program":
        return f"[bold]{text(where.label)}[/]"
    if where.version is not None:
        return f"  @{text(where.version[:12])}"
    if where.model is not None:
        return f"  model={text(where.model)}"
    return f"  config={text(where.config or '')}"


def _trends(group: GroupStats) -> str:
    moving = [
        f"[{_TREND_STYLE[trend]}]{metric} {trend}[/]"
        for metric, trend in group.trends.items()
        if trend in _TREND_STYLE
    ]
    if moving:
        return ", ".join(moving)
    return "stable" if any(trend == "stable" for trend in group.trends.values()) else "-"
