"""``dspex programs``: register programs, list and inspect their versions, promote and roll back.

dspex programs register qa myapp.qa:build --description "answers support questions"
dspex programs register classify classify.yaml          # {module, signature, options, lm}
dspex programs list
dspex programs show qa
dspex programs promote qa 3fa1c09e2b7d
dspex programs rollback qa
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, fmt_time, open_app, short, text
from dspex.errors import ConfigurationError, SpecError

if TYPE_CHECKING:
    from dspex.store.programs import ProgramRecord, ProgramVersion, VersionStatus

app = typer.Typer(help="Register programs and manage their versions.", no_args_is_help=True)

_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_STATUS_STYLE = {"production": "bold green", "draft": "yellow", "optimizing": "cyan", "archived": "dim"}
_JSON = typer.Option(False, "--json", help="Print JSON on stdout instead of a table.")


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, '')}]{status}[/]"


def version_json(version: ProgramVersion) -> dict[str, Any]:
    """A version as JSON without its state payload (demos can make that large; `show` is a summary)."""
    data = version.to_json()
    data.pop("state", None)
    return data


def _program_json(record: ProgramRecord, versions: list[ProgramVersion]) -> dict[str, Any]:
    production = next((v.id for v in versions if v.status == "production"), None)
    return {
        "name": record.name,
        "description": record.description,
        "source": record.source,
        "production_version": production,
        "versions": len(versions),
        "cache_ttl_s": record.cache_ttl_s,
        "durability": record.durability,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


# -- sources ---------------------------------------------------------------------------------------------


def load_source(source: str) -> tuple[str | dict[str, Any], dict[str, int]]:
    """An import path stays a string; a ``.yaml``/``.yml``/``.json`` path is read into its spec mapping.

    Returns the source and, for a YAML spec, the line of every value (to place registry errors).
    """
    path = Path(source)
    if path.suffix.lower() not in _SPEC_SUFFIXES:
        if path.is_file():
            raise ConfigurationError(
                f"{source!r} is a file but not a spec: a spec file ends in .yaml, .yml or .json; "
                "an import path looks like 'package.module:factory'"
            )
        return source, {}
    if not path.is_file():
        raise ConfigurationError(f"no such spec file: {source}")
    return read_spec(path)


def read_spec(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The spec mapping in ``path`` and, for YAML, the line of every value (to place later errors)."""
    content = path.read_text(encoding="utf-8")
    lines: dict[str, int] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: invalid JSON: {exc.msg}", line=exc.lineno) from None
    else:
        # The catalog's YAML loader records every value's line; it is what module_from_spec uses.
        from dspex.modules._yaml import load_yaml

        try:
            data, lines = load_yaml(content)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc.message}", path=exc.path, line=exc.line) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{path}: a program spec is a mapping with module, signature, options and lm; "
            f"got {type(data).__name__}",
            line=lines.get(""),
        )
    return data, lines


def _nearest_line(path: str | None, lines: dict[str, int]) -> int | None:
    # An error about a missing or nested key has no line of its own; the nearest enclosing value does.
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("") if lines else None


# -- commands --------------------------------------------------------------------------------------------


@app.command("register")
def register(
    name: str = typer.Argument(..., help="Program name: letters, digits, '.', '_' or '-'."),
    source: str = typer.Argument(
        ..., help="Import path 'package.module:factory', or a spec file (.yaml, .yml, .json)."
    ),
    description: str | None = typer.Option(None, help="What the program does (kept when left out)."),
    replace: bool = typer.Option(False, "--replace", help="Replace the source of an existing program."),
    as_json: bool = _JSON,
) -> None:
    """Register a program (or record its current state again) as a draft version."""
    with open_app() as dspex_app:
        loaded, lines = load_source(source)
        try:
            version = dspex_app.programs.register(name, loaded, description=description, replace=replace)
        except SpecError as exc:
            if isinstance(loaded, str) or exc.line is not None:
                raise
            # The registry sees a mapping, not the file: put the file name and line back.
            raise SpecError(
                f"{source}: {exc.message}", path=exc.path, line=_nearest_line(exc.path, lines)
            ) from None
    if as_json:
        emit_json(version_json(version))
        return
    console().print(
        f"registered [bold]{text(name)}[/]: version {short(version.id)} ({_status(version.status)})"
    )


@app.command("list")
def list_programs(as_json: bool = _JSON) -> None:
    """List registered programs with their production version."""
    with open_app() as dspex_app:
        registry = dspex_app.programs
        rows = [(record, registry.versions(record.name)) for record in registry.list_programs()]
    if as_json:
        emit_json([_program_json(record, versions) for record, versions in rows])
        return
    table = Table(title="Programs")
    for column in ("name", "description", "production", "versions", "updated"):
        table.add_column(column, justify="right" if column == "versions" else "left")
    for record, versions in rows:
        production = next((v.id for v in versions if v.status == "production"), None)
        table.add_row(
            text(record.name),
            text(record.description),
            short(production),
            str(len(versions)),
            fmt_time(record.updated_at),
        )
    if rows:
        console().print(table)
    else:
        console().print("no programs registered yet: dspex programs register NAME SOURCE")


@app.command("show")
def show(name: str = typer.Argument(..., help="Program name."), as_json: bool = _JSON) -> None:
    """Show a program's source and its versions (status, created, promoted, note)."""
    from dspex.store.programs import describe_source

    with open_app() as dspex_app:
        registry = dspex_app.programs
        record = registry.get(name)
        versions = registry.versions(name)
        try:
            default: str | None = registry.resolve(name).id
        except ConfigurationError:  # only archived versions: nothing runs without --version
            default = None
    if as_json:
        emit_json(
            {
                **_program_json(record, versions),
                "default_version": default,
                "versions": [version_json(v) for v in versions],
            }
        )
        return
    out = console()
    out.print(f"[bold]{text(record.name)}[/]  {text(record.description)}")
    out.print(f"source: {text(describe_source(record.source))}")
    if record.source.get("kind") == "spec":
        out.print(f"spec: {text(record.source.get('spec'))}")
    out.print(f"created {fmt_time(record.created_at)}, updated {fmt_time(record.updated_at)}")
    cache = f"results cached for {record.cache_ttl_s} s" if record.cache_ttl_s else "results not cached"
    out.print(f"cache: {cache} (`dspex programs cache {text(record.name)} --ttl SECONDS | --off`)")
    durability = record.durability or "the default"
    out.print(
        f"durability: {durability} (`dspex programs durability {text(record.name)} sync|async|--default`)"
    )
    table = Table(title=f"Versions of {text(record.name)} (newest first; * = what `dspex run` uses)")
    for column in ("", "version", "status", "created", "promoted", "parent", "note", "dspy"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            "*" if v.id == default else "",
            short(v.id),
            _status(v.status),
            fmt_time(v.created_at),
            fmt_time(v.promoted_at),
            short(v.parent_id),
            text(v.note),
            text(v.dspy_version),
        )
    out.print(table)


@app.command("promote")
def promote(
    name: str = typer.Argument(..., help="Program name."),
    version: str = typer.Argument(..., help="Version id, or a unique prefix of 6+ characters."),
    as_json: bool = _JSON,
) -> None:
    """Make a version production; the previous production version is archived."""
    with open_app() as dspex_app:
        promoted = dspex_app.programs.promote(name, version)
    _report(promoted, "promoted", as_json)


@app.command("rollback")
def rollback(name: str = typer.Argument(..., help="Program name."), as_json: bool = _JSON) -> None:
    """Archive the production version and bring back the one that was production before it."""
    with open_app() as dspex_app:
        restored = dspex_app.programs.rollback(name)
    _report(restored, "rolled back to", as_json)


@app.command("set-status")
def set_status(
    name: str = typer.Argument(..., help="Program name."),
    version: str = typer.Argument(..., help="Version id, or a unique prefix of 6+ characters."),
    status: str = typer.Argument(..., help="draft, optimizing or archived (production: use promote)."),
    as_json: bool = _JSON,
) -> None:
    """Move a version between draft, optimizing and archived."""
    with open_app() as dspex_app:
        registry = dspex_app.programs
        # The registry checks the status name itself and says which moves are allowed.
        changed = registry.set_status(registry.resolve(name, version).id, cast("VersionStatus", status))
    _report(changed, "set", as_json)


@app.command("cache")
def cache(
    name: str = typer.Argument(..., help="Program name."),
    ttl: int | None = typer.Option(
        None, "--ttl", min=1, help="Serve repeated runs from the cache for this many seconds."
    ),
    off: bool = typer.Option(False, "--off", help="Stop caching (stored entries are deleted)."),
    as_json: bool = _JSON,
) -> None:
    """Turn the program-level cache on (with a TTL) or off. Cached runs return the stored outputs of an
    earlier run with the same version, variables and inputs, without running DSPy, and are recorded
    as cache hits."""
    with open_app() as dspex_app:  # turns errors into messages and exit code 2
        if (ttl is None) == (not off):
            raise ConfigurationError("pass exactly one of --ttl SECONDS or --off")
        dspex_app.set_cache(name, None if off else ttl)
        cleared = dspex_app.cache.clear(name) if off else 0
    if as_json:
        emit_json({"program": name, "cache_ttl_s": None if off else ttl, "cleared": cleared})
        return
    if off:
        console().print(f"[bold]{text(name)}[/]: cache off ({cleared} stored entries deleted)")
    else:
        console().print(f"[bold]{text(name)}[/]: repeated runs served from the cache for {ttl} s")


@app.command("durability")
def durability(
    name: str = typer.Argument(..., help="Program name."),
    mode: str | None = typer.Argument(None, help="'sync' or 'async'."),
    default: bool = typer.Option(False, "--default", help="Use the settings' durability (DSPEX_DURABILITY)."),
    as_json: bool = _JSON,
) -> None:
    """When the program's run records are written: 'sync' commits each run's record before the run
    returns (a crash right after the answer never contradicts it; one commit of latency), 'async'
    writes it just behind the call (fastest). A run's own --durability still wins."""
    from dspex.runtime.run import check_durability

    with open_app() as dspex_app:  # turns errors into messages and exit code 2
        if (mode is None) == (not default):
            raise ConfigurationError("pass exactly one of sync, async or --default")
        dspex_app.set_durability(name, check_durability(mode))
    if as_json:
        emit_json({"program": name, "durability": mode})
        return
    shown = mode or f"the default ({dspex_app.settings.durability})"
    console().print(f"[bold]{text(name)}[/]: run records written with durability {shown}")


def _report(version: ProgramVersion, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(version_json(version))
        return
    console().print(
        f"{verb} [bold]{text(version.program)}[/] version {short(version.id)}: now {_status(version.status)}"
    )
