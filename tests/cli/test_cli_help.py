"""Every command's ``--help`` shows its help text whole: rich would take ``[pools.NAME]`` for markup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dspex.cli import app

BRACKETED = re.compile(r"\\?\[([a-zA-Z_][^\][]*)\]")


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, group
    for name, command in (
        getattr(group, "commands", None) or {}
    ).items():  # typer vendors click: no isinstance
        yield from _commands(command, (*path, name))


def _bracketed(command: Any) -> list[str]:
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    return [m.group(1) for text in texts for m in BRACKETED.finditer(text)]


CASES = [
    (path, words)
    for path, command in _commands(typer.main.get_command(app))
    if (words := _bracketed(command))
]


def test_some_help_text_has_brackets() -> None:
    assert any("pools.NAME" in words for _, words in CASES)  # the test below has something to check


@pytest.mark.parametrize(("path", "words"), CASES, ids=[" ".join(p) or "dspex" for p, _ in CASES])
def test_bracketed_words_survive_in_help(path: tuple[str, ...], words: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    for word in words:
        assert f"[{word}]" in shown, f"dspex {' '.join(path)} --help lost [{word}]"
