"""``dspex sim-lm``: run the simulated OpenAI-compatible LM server, list its models.

    dspex sim-lm serve --port 8787 --rate-limit-rate 0.1 --retry-after 0.5
    dspex sim-lm models

Point any OpenAI-compatible client at the printed URL, e.g.
``dspy.LM("openai/sim-medium", api_base="http://127.0.0.1:8787/v1", api_key="sim")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.testing.simapp import Failure

app = typer.Typer(
    help="A simulated OpenAI-compatible LM server with known answers, latency and failure knobs.",
    no_args_is_help=True,
)


def _failure(item: str) -> Failure:
    if item.isdigit():
        return int(item)
    if item in ("timeout", "malformed"):
        return "timeout" if item == "timeout" else "malformed"
    raise typer.BadParameter(f"--fail-first takes a status code, 'timeout' or 'malformed', not {item!r}")


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind; keep 127.0.0.1 unless you mean it."),
    port: int = typer.Option(8787, min=0, max=65535, help="Port (0 picks a free one; the URL is printed)."),
    latency: float = typer.Option(0.0, min=0, help="Extra seconds added to every request."),
    latency_scale: float = typer.Option(
        1.0, min=0, help="Multiplier of each model's own latency (0 = none)."
    ),
    jitter: float = typer.Option(0.0, min=0, help="Random extra latency, uniform in [0, jitter] seconds."),
    error_rate: float = typer.Option(0.0, min=0, max=1, help="Fraction of requests answered with a 500."),
    rate_limit_rate: float = typer.Option(0.0, min=0, max=1, help="Fraction answered with a 429."),
    retry_after: float = typer.Option(1.0, min=0, help="Retry-After seconds sent with each 429."),
    timeout_rate: float = typer.Option(0.0, min=0, max=1, help="Fraction of requests that hang."),
    timeout_seconds: float = typer.Option(30.0, min=0, max=600, help="How long a hanging request hangs."),
    malformed_rate: float = typer.Option(0.0, min=0, max=1, help="Fraction answered with unparseable text."),
    fail_first: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], help="Fail the first requests in order: a status code, 'timeout' or 'malformed' (repeatable)."
    ),
    seed: int = typer.Option(0, help="Seed of the error draws and of right/wrong answers."),
    task_size: int = typer.Option(300, min=1, max=5000, help="Questions in the task the server knows."),
    task_seed: int = typer.Option(0, help="Seed the task's questions are generated from."),
) -> None:
    """Serve /v1/chat/completions (with SSE streaming) until Ctrl-C."""
    from dspex.testing.server import SimConfig
    from dspex.testing.server import serve as run

    console = Console()
    try:
        config = SimConfig(
            latency=latency,
            latency_scale=latency_scale,
            jitter=jitter,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            retry_after=retry_after,
            timeout_rate=timeout_rate,
            timeout_seconds=timeout_seconds,
            malformed_rate=malformed_rate,
            fail_first=tuple(_failure(f) for f in fail_first),
            seed=seed,
            task_size=task_size,
            task_seed=task_seed,
        )
    except ConfigurationError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True)
        raise typer.Exit(2) from None
    models = ", ".join(p.name for p in config.profiles)

    def ready(url: str) -> None:
        # The first line is machine-readable: scripts wait for it and take the URL from it.
        print(f"dspex sim-lm serving at {url}", flush=True)
        base = url.removesuffix("/v1")
        console.print(f"models: {models}  (api_key: any string; Ctrl-C to stop)", soft_wrap=True)
        console.print(f"admin: POST {base}/sim/config, GET {base}/sim/stats", soft_wrap=True)

    try:
        run(config, host=host, port=port, on_ready=ready)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown; that is a normal stop
        console.print("stopped")


@app.command("models")
def models() -> None:
    """List the simulated models: quality, latency and price."""
    from dspex.testing.simtask import DEFAULT_PROFILES

    table = Table(title="Simulated models")
    columns = ("model", "acc.", "+CoT", "+demo", "max demos", "best T", "lat. s", "$/1M in", "$/1M out")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for p in DEFAULT_PROFILES.values():
        table.add_row(
            p.name,
            f"{p.base_accuracy:.2f}",
            f"{p.reasoning_bonus:+.2f}",
            f"{p.demo_bonus:+.3f}",
            str(p.max_demos),
            f"{p.best_temperature:.1f}",
            f"{p.latency:.3f}",
            f"{p.input_price:.2f}",
            f"{p.output_price:.2f}",
        )
    Console().print(table)
