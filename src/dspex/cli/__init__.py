"""The ``dspex`` command line: one module per command group, each a thin shell over the library."""

from __future__ import annotations

import typer

from dspex.cli import demo, simlm

app = typer.Typer(
    help="DSPex: run DSPy programs in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(simlm.app, name="sim-lm")


@app.command("version")
def version() -> None:
    """Print the versions of dspex and DSPy."""
    from importlib.metadata import version as installed

    typer.echo(f"dspex {installed('dspex')} (dspy {installed('dspy')})")


def main() -> None:
    """Console-script entry point."""
    app()
