"""``dspex adapt``: adaptive programs (start, show, freeze, stop).

    dspex adapt start qa-live --program qa --space space.yaml \\
        --arm '{"model": "openai/gpt-4o-mini", "temperature": 0.2}' --arm '{"model": "openai/gpt-4o"}'
    dspex adapt start qa-opt --program qa --space space.yaml --from-optimization opt-1a2b --top 3
    dspex adapt start qa-live --arm '{"model": "openai/o3-mini"}'     # add an arm (and resume it)
    dspex adapt show                                                 # every adaptive program
    dspex adapt show qa-live [--json]                                # arms, shares, posteriors, reward
    dspex adapt freeze qa-live [--arm 3f2a]                          # serve one arm (default: the best)
    dspex adapt stop qa-live                                         # refuse runs until started again

Runs are served in Python (``app.adapt.get(name).run(...)``) or by the service
(``POST /v1/programs/{program}/adaptive/{name}/runs``). Quality comes from ``--metric`` (a function
registered in the settings' ``[tools]``) or, without it, from feedback (``dspex feedback ID --score``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, json_object, open_app, text

__all__ = ["app"]

app = typer.Typer(
    help="Adaptive programs: a bandit serves arms (configurations) of a program.", no_args_is_help=True
)


@app.command("start")
def start(
    name: str = typer.Argument(..., help="The adaptive program's name."),
    program: str | None = typer.Option(
        None, "--program", help="The registered program it serves (new only)."
    ),
    space_file: Path | None = typer.Option(  # noqa: B008
        None, "--space", help="Space file (YAML or JSON, as for dspex optimize); new only."
    ),
    arms: list[str] = typer.Option([], "--arm", help="An arm's variable values as JSON (repeatable)."),  # noqa: B008
    from_optimization: str | None = typer.Option(
        None, "--from-optimization", help="Take arms from this run."
    ),
    top: int = typer.Option(3, "--top", help="How many configurations to take from the optimization."),
    sample: int = typer.Option(0, "--sample", help="Draw this many arms from the space."),
    metric: str | None = typer.Option(
        None, "--metric", help="A registered function scoring outputs in [0, 1]."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="Policy settings as JSON: '{\"discount\": 0.995}'."
    ),
    reward: str | None = typer.Option(
        None, "--reward", help='Reward as JSON: \'{"quality": 0.8, "latency": 0.2}\'.'
    ),
    features: list[str] = typer.Option([], "--feature", help="An input field the policy may condition on."),  # noqa: B008
    reoptimize: str | None = typer.Option(
        None, "--reoptimize", help="Re-optimization rule as JSON ('{}': defaults)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Pin a program version (default: production)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of text."),
) -> None:
    """Start an adaptive program, or add arms to one and let it serve again (resume, unfreeze)."""
    from dspex.errors import ConfigurationError

    parsed_arms = [json_object(arm, "--arm") for arm in arms]
    with open_app() as dspex_app:
        existing = dspex_app.adapt.repository.find(name)
        if existing is None:
            if program is None or space_file is None:
                raise ConfigurationError(
                    f"no adaptive program {name!r} yet: give --program and --space to start it"
                )
            from dspex.cli.optimize import load_space_file

            space, bindings = load_space_file(space_file)
            adaptive = dspex_app.adapt(
                name, program, space=space, bindings=bindings, arms=parsed_arms,
                from_optimization=from_optimization, top=top, sample=sample, seed=seed, metric=metric,
                policy=json_object(policy, "--policy") if policy else None,
                reward=json_object(reward, "--reward") if reward else None,
                features=features, version_id=version,
                reoptimize=json_object(reoptimize, "--reoptimize") if reoptimize else None,
            )  # fmt: skip
        else:
            given = [o for o, v in (("--space", space_file), ("--policy", policy), ("--reward", reward)) if v]
            if given or features or reoptimize:
                raise ConfigurationError(
                    f"adaptive program {name!r} exists; its settings are fixed ({', '.join(given or ['--feature'])} "
                    "given): pass only --arm, --from-optimization or --sample to add arms"
                )
            adaptive = dspex_app.adapt(
                name,
                program,
                arms=parsed_arms,
                from_optimization=from_optimization,
                top=top,
                sample=sample,
                seed=seed,
            )
            if adaptive.record.status != "active":
                adaptive.resume()
        status = adaptive.status()
    if as_json:
        emit_json(status)
        return
    _show(status)


@app.command("show")
def show(
    name: str | None = typer.Argument(None, help="An adaptive program (default: list them all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of text."),
) -> None:
    """List adaptive programs, or show one: arms, traffic shares, posteriors, reward over time."""
    with open_app() as dspex_app:
        if name is None:
            records = dspex_app.adapt.list()
            if as_json:
                emit_json([{"name": r.name, "program": r.program, "status": r.status} for r in records])
                return
            table = Table(title="Adaptive programs")
            for column in ("name", "program", "status", "frozen arm", "created"):
                table.add_column(column)
            for record in records:
                table.add_row(
                    text(record.name), text(record.program), record.status, record.frozen_arm or "-",
                    fmt_time(record.created_at),
                )  # fmt: skip
            console().print(table if records else "no adaptive programs yet (dspex adapt start)")
            return
        status = dspex_app.adapt.get(name).status()
    if as_json:
        emit_json(status)
        return
    _show(status)


@app.command("freeze")
def freeze(
    name: str = typer.Argument(..., help="The adaptive program."),
    arm: str | None = typer.Option(None, "--arm", help="The arm (id or prefix); default: the best now."),
) -> None:
    """Serve every run from one arm until `dspex adapt start NAME` lets the policy choose again."""
    with open_app() as dspex_app:
        chosen = dspex_app.adapt.get(name).freeze(arm)
    console().print(f"{name}: frozen on arm {chosen}")


@app.command("stop")
def stop(name: str = typer.Argument(..., help="The adaptive program.")) -> None:
    """Refuse runs (the state stays) until `dspex adapt start NAME`."""
    with open_app() as dspex_app:
        dspex_app.adapt.get(name).stop()
    console().print(f"{name}: stopped")


def _bar(value: float | None, width: int = 10) -> str:
    if value is None:
        return "-"
    filled = round(max(0.0, min(1.0, value)) * width)
    return "#" * filled + "." * (width - filled)


def _show(status: dict[str, Any]) -> None:
    out = console()
    frozen = f", frozen on {status['frozen_arm']}" if status["frozen_arm"] else ""
    out.print(
        f"{text(status['name'])}: serves {text(status['program'])}, {status['status']}{frozen}; "
        f"{status['runs']} runs, exploration {status['explore_share']:.0%} of recent traffic, "
        f"policy {status['policy']['algorithm']} (discount {status['policy']['discount']:g})"
    )
    table = Table(title="Arms")
    for column in (
        "arm",
        "configuration",
        "status",
        "share",
        "reasons",
        "posterior",
        "95% interval",
        "mean reward",
    ):
        table.add_column(column, overflow="fold")
    for arm in status["arms"]:
        mean = arm["posterior_mean"]
        low, high = arm["interval"]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(arm["reasons"].items())) or "-"
        table.add_row(
            ("* " if arm["best"] else "") + arm["arm"],
            text(arm["configuration"]),
            arm["status"] + (f" ({arm['retired_reason']})" if arm["retired_reason"] else ""),
            f"{arm['share']:.0%}",
            reasons,
            "-" if mean is None else f"{mean:.3f} {_bar(mean)}",
            f"{low:.2f}-{high:.2f}",
            "-" if arm["mean_reward"] is None else f"{arm['mean_reward']:.3f}",
        )
    out.print(table)
    series = status["reward_over_time"]
    if series:
        over = Table(title="Reward over time")
        for column in ("to", "runs", "mean reward", "arms"):
            over.add_column(column)
        for bucket in series:
            arms = ", ".join(f"{a[:8]} {n}" for a, n in sorted(bucket["arms"].items(), key=lambda kv: -kv[1]))
            over.add_row(
                bucket["to"][:19],
                str(bucket["runs"]),
                f"{bucket['mean_reward']:.3f} {_bar(bucket['mean_reward'])}",
                arms,
            )
        out.print(over)
    for event in status["events"][-10:]:
        out.print(
            f"{event['at'][:19]}  {event['kind']:<11} {event['arm'] or '-':<16} {text(event['detail'] or '')}"
        )
