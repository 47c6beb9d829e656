"""``dspex datasets``: import examples from JSONL, JSON or CSV as versions, inspect them, export them.

dspex datasets import qa qa.jsonl --inputs question --labels answer --split train=0.8,dev=0.2
dspex datasets import qa qa.csv --inputs question --split-field fold
dspex datasets list
dspex datasets show qa                # the latest version; or a version id prefix, or qa@3fa1c09e
dspex datasets export qa dev.jsonl --split dev
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

import typer
from rich.table import Table

from dspex.cli._render import (
    console,
    emit_json,
    fmt_time,
    open_app,
    parse_fractions,
    parse_names,
    short,
    text,
)
from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.programs.datasets import DatasetVersion, FieldStats

app = typer.Typer(help="Import, inspect and export versioned datasets.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of tables.")
_FORMATS = ("jsonl", "json", "csv")


def _splits(version: DatasetVersion) -> str:
    if not version.splits:
        return "-"
    counts = ", ".join(f"{name}={count}" for name, count in version.splits.items())
    if version.split_field:
        return f"{counts} (from field {version.split_field})"
    return f"{counts} (seed {version.split_seed})"


def _version_summary(version: DatasetVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "dataset": version.dataset,
        "example_count": version.example_count,
        "input_fields": list(version.input_fields),
        "label_fields": list(version.label_fields),
        "splits": version.splits_json(),
        "created_at": version.created_at.isoformat(),
    }


@app.command("import")
def import_(
    name: str = typer.Argument(..., help="Dataset name: letters, digits, '.', '_' or '-'."),
    path: str = typer.Argument(..., help="A .jsonl, .json or .csv file (CSV values are text)."),
    inputs: str = typer.Option(..., "--inputs", help="Input fields, comma-separated: question,context."),
    labels: str | None = typer.Option(
        None, "--labels", help="Label fields, comma-separated (default: every other field)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Random split by fractions, e.g. train=0.8,dev=0.2 (deterministic per seed)."
    ),
    split_field: str | None = typer.Option(
        None, "--split-field", help="A field that names each example's split (e.g. fold)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --split cut."),
    description: str = typer.Option(
        "", "--description", help="What the dataset holds (replaces the old one)."
    ),
    file_format: str | None = typer.Option(
        None, "--format", help="jsonl, json or csv (default: from the file suffix)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Import a file as a version of a dataset; the same content again is the same version."""
    with open_app() as dspex_app:
        if split is not None and split_field is not None:
            raise ConfigurationError("give --split (fractions) or --split-field (a field), not both")
        if file_format is not None and file_format not in _FORMATS:
            raise ConfigurationError(f"--format is one of {', '.join(_FORMATS)}, got {file_format!r}")
        how: str | dict[str, float] | None = (
            parse_fractions(split, "--split") if split is not None else split_field
        )
        version = dspex_app.datasets.import_file(
            name,
            path,
            format=cast("Literal['jsonl', 'json', 'csv'] | None", file_format),
            inputs=parse_names(inputs, "--inputs") or [],
            labels=parse_names(labels, "--labels"),
            split=how,
            seed=seed,
            description=description,
        )
    if as_json:
        emit_json(version.to_json())
        return
    console().print(
        f"imported [bold]{text(name)}[/]: version {short(version.id)}, {version.example_count} examples, "
        f"inputs {text(', '.join(version.input_fields))}, labels {text(', '.join(version.label_fields)) or '-'}, "
        f"splits {text(_splits(version))}"
    )


@app.command("list")
def list_datasets(as_json: bool = _JSON) -> None:
    """List datasets with their newest version."""
    with open_app() as dspex_app:
        datasets = dspex_app.datasets
        rows = [(d, datasets.latest(d.name) if d.latest_id else None) for d in datasets.list()]
    if as_json:
        emit_json(
            [
                {
                    "name": d.name,
                    "description": d.description,
                    "versions": d.version_count,
                    "latest": _version_summary(latest) if latest else None,
                    "created_at": d.created_at.isoformat(),
                    "updated_at": d.updated_at.isoformat(),
                }
                for d, latest in rows
            ]
        )
        return
    if not rows:
        console().print("no datasets yet: dspex datasets import NAME PATH --inputs FIELD")
        return
    table = Table(title="Datasets")
    for column in ("name", "description", "versions", "latest", "examples", "splits", "updated"):
        table.add_column(column, justify="right" if column in ("versions", "examples") else "left")
    for d, latest in rows:
        table.add_row(
            text(d.name),
            text(d.description),
            str(d.version_count),
            short(d.latest_id),
            str(latest.example_count) if latest else "-",
            text(_splits(latest)) if latest else "-",
            fmt_time(d.updated_at),
        )
    console().print(table)


@app.command("show")
def show(
    name_or_version: str = typer.Argument(
        ..., help="Dataset name (its latest version), a version id prefix (8+), or NAME@PREFIX."
    ),
    as_json: bool = _JSON,
) -> None:
    """Show a dataset version: fields with their roles and statistics, splits, and all versions."""
    with open_app() as dspex_app:
        datasets = dspex_app.datasets
        version = datasets.resolve(name_or_version)
        versions = datasets.versions(version.dataset)
        description = next((d.description for d in datasets.list() if d.name == version.dataset), "")
    if as_json:
        emit_json(
            {
                "dataset": version.dataset,
                "description": description,
                "version": version.to_json(),
                "versions": [_version_summary(v) for v in versions],
            }
        )
        return
    out = console()
    out.print(f"[bold]{text(version.dataset)}[/]  {text(description)}")
    out.print(f"version {version.id}, created {fmt_time(version.created_at)}")
    stats = version.stats
    out.print(
        f"{version.example_count} examples ({stats.duplicates} duplicates); "
        f"inputs {text(', '.join(version.input_fields))}; labels {text(', '.join(version.label_fields)) or '-'}; "
        f"splits {text(_splits(version))}"
    )
    fields = Table(title="Fields (source order)")
    for column in ("field", "role", "present", "types", "length min/mean/max", "number min/mean/max"):
        fields.add_column(column)
    fields.add_column("distinct", justify="right")
    fields.add_column("distribution", overflow="fold")
    for f in stats.fields:
        fields.add_row(*_field_row(f))
    out.print(fields)
    table = Table(title=f"Versions of {text(version.dataset)} (newest first; * = shown)")
    for column in ("", "version", "created", "examples", "inputs", "labels", "splits"):
        table.add_column(column, justify="right" if column == "examples" else "left")
    for v in versions:
        table.add_row(
            "*" if v.id == version.id else "",
            short(v.id),
            fmt_time(v.created_at),
            str(v.example_count),
            text(", ".join(v.input_fields)),
            text(", ".join(v.label_fields)),
            text(_splits(v)),
        )
    out.print(table)


def _field_row(f: FieldStats) -> list[str]:
    def summary(s: Any) -> str:
        return "-" if s is None else f"{s.min:g} / {s.mean:.4g} / {s.max:g}"

    distribution = "-"
    if f.distribution is not None:
        shown = ", ".join(f"{text(value)}: {count}" for value, count in f.distribution[:8])
        more = len(f.distribution) - 8
        distribution = shown + (f", ... {more} more" if more > 0 else "")
    return [
        text(f.name),
        f.role,
        str(f.present),
        text(", ".join(f"{kind} {n}" for kind, n in f.types.items())),
        summary(f.length),
        summary(f.number),
        f"{f.distinct}{'+' if f.distinct_capped else ''}",
        distribution,
    ]


@app.command("export")
def export(
    name_or_version: str = typer.Argument(
        ..., help="Dataset name (its latest version), a version id prefix (8+), or NAME@PREFIX."
    ),
    path: str = typer.Argument(..., help="Where to write; the format follows the suffix unless --format."),
    file_format: str | None = typer.Option(None, "--format", help="jsonl or csv (default: from the suffix)."),
    split: str | None = typer.Option(None, "--split", help="Only the examples of this split."),
    split_field: bool = typer.Option(
        True,
        "--with-split-field/--without-split-field",
        help="Write each example's split back into the field it was imported from.",
    ),
    as_json: bool = _JSON,
) -> None:
    """Write a version's examples to a JSONL or CSV file (re-importing gives the same version)."""
    with open_app() as dspex_app:
        if file_format is not None and file_format not in ("jsonl", "csv"):
            raise ConfigurationError(f"--format is jsonl or csv, got {file_format!r}")
        datasets = dspex_app.datasets
        version = datasets.resolve(name_or_version)
        written = datasets.export(
            version,
            path,
            format=cast("Literal['jsonl', 'csv'] | None", file_format),
            split=split,
            with_split=split_field,
        )
    if as_json:
        emit_json({"path": str(path), "examples": written, "version_id": version.id, "split": split})
        return
    console().print(
        f"exported {written} examples of [bold]{text(version.dataset)}[/] (version {short(version.id)}) "
        f"to {text(str(path))}"
    )
