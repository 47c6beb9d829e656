"""Current variable values, observers of their changes, and the history of every change.

::

    state = VariableState(space, scope="qa")                  # at the defaults; history in memory
    state.on_change(lambda event: print(event.name, event.old, "->", event.new, "by", event.by))
    state.set("temperature", 0.2, by="alice")
    state.update({"module": "chain_of_thought", "max_tokens": 256}, by="optimizer", score=0.81)
    state.configuration                                       # a validated, hashable Configuration
    state.history                                             # every VariableChanged, oldest first

With a :class:`~dspex.store.variables.VariableHistoryRepository` the changes are also stored (in the
same call, before the in-memory state moves, so a failed write changes nothing), and
:meth:`VariableState.restore` reopens a scope where it was left.

One change may move several variables: setting a parent can deactivate or activate conditional
children and recompute derived values. Each variable that moved gets its own event; they share
``by``, ``at``, ``score`` and ``configuration_id``. A variable without a value before or after (an
inactive conditional) has :data:`ABSENT` as ``old`` or ``new``.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dspex.errors import ConfigurationError
from dspex.variables.configuration import Configuration
from dspex.variables.space import VariableSpace

if TYPE_CHECKING:
    from dspex.store.variables import VariableChangeRecord, VariableHistoryRepository

__all__ = ["ABSENT", "Observer", "VariableChanged", "VariableState"]


class _Absent(enum.Enum):
    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent.ABSENT
"""The ``old`` or ``new`` of a variable that had no value (an inactive conditional)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class VariableChanged:
    """One variable moved from ``old`` to ``new`` (either may be :data:`ABSENT`), by whom, when, with
    the score the new configuration got (if known) and that configuration's id."""

    scope: str
    name: str
    old: Any
    new: Any
    by: str
    at: dt.datetime
    score: float | None = None
    configuration_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as JSON; an absent value is ``null`` with ``old_present``/``new_present`` false."""
        return {
            "scope": self.scope,
            "name": self.name,
            "old": None if self.old is ABSENT else self.old,
            "old_present": self.old is not ABSENT,
            "new": None if self.new is ABSENT else self.new,
            "new_present": self.new is not ABSENT,
            "by": self.by,
            "at": self.at.isoformat(),
            "score": self.score,
            "configuration_id": self.configuration_id,
        }

    def to_record(self) -> VariableChangeRecord:
        from dspex.store.variables import VariableChangeRecord

        return VariableChangeRecord(
            scope=self.scope,
            variable=self.name,
            old=None if self.old is ABSENT else self.old,
            new=None if self.new is ABSENT else self.new,
            old_present=self.old is not ABSENT,
            new_present=self.new is not ABSENT,
            changed_by=self.by,
            changed_at=self.at,
            score=self.score,
            configuration_id=self.configuration_id,
        )

    @classmethod
    def from_record(cls, record: VariableChangeRecord) -> VariableChanged:
        return cls(
            scope=record.scope,
            name=record.variable,
            old=record.old if record.old_present else ABSENT,
            new=record.new if record.new_present else ABSENT,
            by=record.changed_by,
            at=record.changed_at,
            score=record.score,
            configuration_id=record.configuration_id,
        )


Observer = Callable[[VariableChanged], None]


class VariableState:
    """The current configuration of a space, changed through :meth:`set` and :meth:`update`, which
    validate the whole configuration (conditions, derived values, constraints) before anything moves.

    Thread-safe: changes are serialised; observers run after the change, outside the lock, so they may
    read the state or change it again.
    """

    def __init__(
        self,
        space: VariableSpace,
        values: Mapping[str, Any] | None = None,
        *,
        scope: str = "default",
        repository: VariableHistoryRepository | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        """Start at ``values`` (validated; defaults for the rest). Starting values are not a change and
        are not recorded: start at the defaults and :meth:`update` to record them."""
        if not isinstance(scope, str) or not scope:
            raise ConfigurationError("scope must be a non-empty string (a program name, for example)")
        self.space = space
        self.scope = scope
        self.repository = repository
        self._clock = clock
        self._configuration = space.validate(values or {})
        self._history: list[VariableChanged] = []
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    @classmethod
    def restore(
        cls,
        space: VariableSpace,
        repository: VariableHistoryRepository,
        *,
        scope: str = "default",
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> VariableState:
        """The state of ``scope`` as its stored history left it (the defaults when it has none).

        Values the space no longer accepts (a domain changed since) raise ``ConfigurationError``.
        """
        state = cls(space, scope=scope, repository=repository, clock=clock)
        events = [VariableChanged.from_record(r) for r in repository.find(scope)]
        values: dict[str, Any] = {}
        for event in events:
            if event.new is ABSENT:
                values.pop(event.name, None)
            else:
                values[event.name] = event.new
        derived = {d.name for d in space.derived}
        # Derived values are recomputed; variables since removed from the space are left behind.
        state._configuration = space.validate(
            {k: v for k, v in values.items() if k in space and k not in derived}
        )
        state._history = events
        return state

    @property
    def configuration(self) -> Configuration:
        """The current, validated configuration."""
        return self._configuration

    def get(self, name: str, default: Any = None) -> Any:
        """The current value of ``name`` (``default`` when it is inactive)."""
        return self._configuration.get(name, default)

    @property
    def history(self) -> tuple[VariableChanged, ...]:
        """Every change, oldest first (including the stored ones when the state was restored)."""
        return tuple(self._history)

    def history_of(self, name: str) -> tuple[VariableChanged, ...]:
        """The changes of one variable, oldest first."""
        return tuple(e for e in self._history if e.name == name)

    def on_change(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(event)`` for every change from now on; returns a function that unsubscribes.

        >>> unsubscribe = state.on_change(print)  # doctest: +SKIP
        """
        if not callable(observer):
            raise ConfigurationError(f"observer {observer!r} is not callable")
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def set(
        self, name: str, value: Any, *, by: str, score: float | None = None
    ) -> tuple[VariableChanged, ...]:
        """Set one variable; returns the events (empty when nothing moved).

        >>> state.set("temperature", 0.2, by="alice")  # doctest: +SKIP
        (VariableChanged(scope='default', name='temperature', old=0.7, new=0.2, by='alice', ...),)
        """
        return self.update({name: value}, by=by, score=score)

    def update(
        self, values: Mapping[str, Any], *, by: str, score: float | None = None
    ) -> tuple[VariableChanged, ...]:
        """Set several variables at once (constraints often couple them, so one at a time may not pass).

        The result must be a valid configuration in which every variable set here is active; otherwise
        ``ConfigurationError`` is raised and nothing changes.
        """
        if not isinstance(by, str) or not by:
            raise ConfigurationError(
                "by= names who makes the change (a user, 'optimizer', ...); it is required"
            )
        if score is not None and not isinstance(score, int | float):
            raise ConfigurationError(f"score must be a number or None, got {score!r}")
        derived = {d.name for d in self.space.derived}
        for name in values:
            if name in derived:
                raise ConfigurationError(
                    f"{name!r} is derived (computed from other variables); it cannot be set"
                )
            self.space[name]  # unknown names raise with a close-match hint
        with self._lock:
            current = {k: v for k, v in self._configuration.items() if k not in derived}
            new = self.space.validate({**current, **values})
            inactive = [name for name in values if name not in new]
            if inactive:
                variable = self.space[inactive[0]]
                needs = " and ".join(str(c) for c in variable.conditions)
                raise ConfigurationError(
                    f"variable {inactive[0]!r} is inactive: it is active only when {needs}; "
                    "set those variables in the same update()"
                )
            events = self._diff(self._configuration, new, by, None if score is None else float(score))
            if events and self.repository is not None:
                self.repository.append([e.to_record() for e in events])
            self._configuration = new
            self._history.extend(events)
            observers = list(self._observers)
        self._notify(observers, events)
        return events

    def _diff(
        self, old: Configuration, new: Configuration, by: str, score: float | None
    ) -> tuple[VariableChanged, ...]:
        at = self._clock()
        events = []
        for name in [*new, *(k for k in old if k not in new)]:
            before, after = _plain(old.get(name, ABSENT)), _plain(new.get(name, ABSENT))
            if (
                before is ABSENT
                or after is ABSENT
                or Configuration({"x": before}) != Configuration({"x": after})
            ):
                events.append(
                    VariableChanged(
                        scope=self.scope,
                        name=name,
                        old=before,
                        new=after,
                        by=by,
                        at=at,
                        score=score,
                        configuration_id=new.id,
                    )
                )
        return tuple(events)

    @staticmethod
    def _notify(observers: Sequence[Observer], events: Sequence[VariableChanged]) -> None:
        # Every observer sees every event even if one fails; the first failure is then re-raised.
        failure: BaseException | None = None
        for event in events:
            for observer in observers:
                try:
                    observer(event)
                except Exception as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure


def _plain(value: Any) -> Any:
    """A mutable JSON copy of a configuration value (composites are read-only views inside one)."""
    if value is ABSENT:
        return ABSENT
    return Configuration({"x": value}).to_json()["x"]
