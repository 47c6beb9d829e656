"""``dspex run``: run a registered program once, record it, print its outputs.

    dspex run qa --input '{"question": "What is DSPy?"}'
    dspex run qa -i question="What is DSPy?" -i k=3          # k is the number 3 (JSON), question text
    dspex run qa --input @inputs.json --version 3fa1c09e --json
    dspex run qa -i question=hi --pool general                # on a worker process of the pool
    dspex run qa -i question=hi --timeout 20                  # fails (exit 1) if not done in 20 s

The LM comes from the settings (``DSPEX_LM``, ``DSPEX_API_BASE``... or ``dspex.toml``); a program whose
predictors all carry their own LM (a spec with ``lm:``) runs without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_cost, fmt_ms, json_object, key_values, open_app, text

if TYPE_CHECKING:
    pass


def run(
    program: str = typer.Argument(..., help="Name of a registered program."),
    input_json: str | None = typer.Option(
        None, "--input", help="Inputs as a JSON object; '@file.json' reads a file, '-' reads stdin."
    ),
    fields: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [],
        "-i",
        "--field",
        help="One input as key=value (repeatable); a value that is valid JSON (3, [1, 2], true) is "
        "parsed, anything else stays text. Wins over --input.",
    ),
    version: str | None = typer.Option(
        None, "--version", help="Version id or unique prefix (default: production, else the newest draft)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print outputs, execution id, duration, usage and cost as JSON."
    ),
    durability: str | None = typer.Option(
        None,
        "--durability",
        help="'sync' commits the run's record before returning; 'async' writes it behind the call "
        "(default: the program's setting, else DSPEX_DURABILITY).",
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="Run on this worker pool (\\[pools.NAME] in dspex.toml, or 'general')."
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="The run's deadline in seconds; LM calls, retries and waits respect it (exit 1 past it).",
    ),
) -> None:
    """Run a registered program on the given inputs; the run is recorded either way.

    Exit codes: 0 success, 1 the run failed (program or LM error), 2 bad arguments or inputs.
    """
    from dspex.runtime.run import check_durability

    with open_app() as dspex_app:
        inputs = json_object(input_json, "--input") if input_json is not None else {}
        inputs.update(key_values(fields, "-i"))
        # Resolve once, so the version printed is the version that ran even if someone promotes meanwhile.
        resolved = dspex_app.programs.resolve(program, version)
        result = dspex_app.run(
            program,
            inputs,
            version_id=resolved.id,
            durability=check_durability(durability),
            pool=pool,
            timeout=timeout,
        )
    usage_tokens = sum(int(u.get("total_tokens") or 0) for u in result.usage.values())
    if as_json:
        emit_json(
            {
                "program": program,
                "version_id": resolved.id,
                "execution_id": result.execution_id,
                "outputs": result.outputs,
                "duration_ms": result.duration_ms,
                "usage": result.usage,
                "total_tokens": usage_tokens,
                "cost_usd": result.cost_usd,
                "trace_id": result.trace_id,
            }
        )
        return
    table = Table(title=f"{text(program)} (version {resolved.id[:12]})")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    for name, value in result.outputs.items():
        table.add_row(text(name), text(value))
    out = console()
    out.print(table)
    out.print(
        f"execution {result.execution_id}  {fmt_ms(result.duration_ms)} ms  {usage_tokens} tokens  "
        f"cost {fmt_cost(result.cost_usd)} USD"
    )
