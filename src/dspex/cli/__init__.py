"""The ``dspex`` command line: one module per command group, each a thin shell over the library."""

from __future__ import annotations

import os

import typer

from dspex.cli import (
    adapt,
    audit,
    batch,
    datasets,
    demo,
    executions,
    feedback,
    jobs,
    keys,
    lms,
    optimize,
    pipeline,
    pools,
    programs,
    run,
    scaffold,
    serve,
    sessions,
    simlm,
    watch,
)

app = typer.Typer(
    help="DSPex: run DSPy programs in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(simlm.app, name="sim-lm")
app.add_typer(programs.app, name="programs")
app.command("run")(run.run)
app.add_typer(executions.app, name="executions")
app.add_typer(datasets.app, name="datasets")
app.add_typer(pipeline.app, name="pipeline")
app.command("optimize")(optimize.optimize)
app.add_typer(optimize.app, name="optimizations")
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.command("worker")(jobs.worker)
app.add_typer(jobs.app, name="jobs")
app.command("audit")(audit.audit)
app.add_typer(pools.app, name="pools")
app.add_typer(sessions.app, name="sessions")
app.add_typer(lms.app, name="lms")
app.command("feedback")(feedback.feedback)
app.command("watch")(watch.watch)
app.command("scaffold")(scaffold.scaffold)
app.add_typer(adapt.app, name="adapt")
app.add_typer(batch.app, name="batch")


@app.command("version")
def version() -> None:
    """Print the versions of dspex and DSPy."""
    from importlib.metadata import version as installed

    typer.echo(f"dspex {installed('dspex')} (dspy {installed('dspy')})")


def main() -> None:
    """Console-script entry point."""
    # Process start-up: prices come from the snapshot DSPy bundles instead of a remote fetch that
    # stalls up to 5 s offline. Set LITELLM_LOCAL_MODEL_COST_MAP=False for live prices.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    app()
