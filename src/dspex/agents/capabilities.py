"""Agents: a DSPy module (or a registered program) plus what it can do.

::

    solver = Agent("solver", "math-qa", Capabilities(provides={"answer"}, requires={"question"},
                                                     kinds={"arithmetic"}))
    critic = Agent("critic", dspy.ChainOfThought("question, answer -> verdict: bool"),
                   Capabilities(provides={"verdict"}, requires={"question", "answer"}))

``provides`` names what the agent produces (output fields, or any tag you use), ``requires`` what it needs
(input fields), ``kinds`` the task kinds it is meant for (empty: any). :func:`~dspex.agents.coordinate`
matches a task against them and ranks the fits by the fitness measured from the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dspex.errors import ConfigurationError

__all__ = ["Agent", "Capabilities", "Task"]

_TAG = re.compile(r"^[A-Za-z0-9][\w.:-]{0,99}$")


def _tags(value: Iterable[str] | str, what: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    tags = frozenset(value)
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise ConfigurationError(
                f"{what} holds names of 1-100 letters, digits, '_', '.', ':' or '-'; got {tag!r}"
            )
    return tags


@dataclass(frozen=True, slots=True, init=False)
class Capabilities:
    """What an agent provides and requires, and the task kinds it serves (empty: all)."""

    provides: frozenset[str]
    requires: frozenset[str]
    kinds: frozenset[str]

    def __init__(
        self,
        provides: Iterable[str] | str = (),
        requires: Iterable[str] | str = (),
        kinds: Iterable[str] | str = (),
    ) -> None:
        object.__setattr__(self, "provides", _tags(provides, "provides"))
        object.__setattr__(self, "requires", _tags(requires, "requires"))
        object.__setattr__(self, "kinds", _tags(kinds, "kinds"))
        if not self.provides:
            raise ConfigurationError(
                "an agent's capabilities need 'provides': what it produces, e.g. {'answer'}"
            )

    def to_json(self) -> dict[str, list[str]]:
        return {key: sorted(getattr(self, key)) for key in ("provides", "requires", "kinds")}


@dataclass(frozen=True, slots=True)
class Agent:
    """A named module with capabilities. ``module`` is a ``dspy.Module`` or a registered program's name;
    its fitness is measured from the recorded runs of that program, or of ``record`` (a program name) when
    the module is given built."""

    name: str
    module: Any
    capabilities: Capabilities
    record: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TAG.match(self.name):
            raise ConfigurationError(
                f"an agent name is 1-100 letters, digits, '_', '.', ':' or '-'; got {self.name!r}"
            )
        import dspy

        if not isinstance(self.module, str | dspy.Module):
            raise ConfigurationError(
                f"agent {self.name!r}: module is a dspy.Module or a registered program's name, "
                f"got {type(self.module).__name__}"
            )

    @property
    def program(self) -> str | None:
        """The registered program whose record measures this agent, if any."""
        return self.module if isinstance(self.module, str) else self.record


@dataclass(frozen=True, slots=True)
class Task:
    """What a piece of work needs: its kind, the outputs it needs and the inputs it can supply."""

    kind: str
    needs: frozenset[str] = field(default_factory=frozenset)
    supplies: frozenset[str] | None = None  # None: whatever the agents require is available

    @classmethod
    def of(
        cls, kind: str, needs: Iterable[str] | str = (), supplies: Iterable[str] | str | None = None
    ) -> Task:
        """``Task.of("arithmetic", needs={"answer"}, supplies={"question"})``, with names checked."""
        (kind_tag,) = _tags(kind, "kind")
        return cls(kind_tag, _tags(needs, "needs"), None if supplies is None else _tags(supplies, "supplies"))
