"""The router: where a run, an evaluation batch or a job of a registered program executes when its
caller names no pool.

Rules come from the settings' ``[routing]`` table, first match wins::

    [routing]
    programs = { qa = "general" }                    # a program -> a pool (or "inline")
    modules = { program_of_thought = "isolated" }    # a catalog module anywhere in the program -> a pool
    default = "inline"                               # everything else
    spill_queue = 64                                 # a pool with more queued tasks than this...
    spill_to = "inline"                              # ...sends the run here instead (or to another pool)

1. ``programs``: the program's name;
2. ``modules``: the catalog name of any module in the program (Predict, ChainOfThought, ReAct...);
3. code execution: a program holding a module that runs code (program_of_thought, code_act, rlm, flex)
   goes to the pool named ``isolated`` when one is configured, unless a rule above said otherwise;
4. ``default``.

Then live state: a chosen pool that is unhealthy (a worker starting, stopping or dead) or has more than
``spill_queue`` tasks waiting spills the run to ``spill_to``. Each decision is recorded with its reason in
the run's ``placement`` (``{"target", "pool", "reason"}``); with no ``[routing]`` rules, runs stay inline
and ``placement`` stays null.

Evaluation batches and jobs follow the same rules, through :meth:`Router.batch`: an evaluation job (and
the trials of an optimization job) runs its examples on the pool the rules give its program, unless the
job worker owns a pool (``dspex worker --pool``), which then wins. The job's result says where it ran and
why (``placement``). In Python, ``app.router.evaluation("qa")`` is the program to hand to the
:class:`~dspex.optimize.Evaluator`: on a pool (a ``PooledProgram``) or built here, with its route.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = ["ISOLATED_POOL", "Placed", "Route", "Router"]

INLINE = "inline"
ISOLATED_POOL = "isolated"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a run goes: ``pool`` (None: inline in the caller's process), and why."""

    pool: str | None
    reason: str

    def placement(self) -> dict[str, Any]:
        """The route as recorded: ``{"target": "pool", "pool", "reason"}`` or ``{"target": "inline", "reason"}``."""
        if self.pool is None:
            return {"target": INLINE, "reason": self.reason}
        return {"target": "pool", "pool": self.pool, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Placed:
    """A registered program version where its evaluation runs: ``program`` is a
    :class:`~dspex.pools.remote.PooledProgram` when ``route.pool`` is set, else the built module."""

    program: Any
    version_id: str
    route: Route


def _module_names(program: Any) -> tuple[set[str], bool]:
    """The catalog names of the modules in ``program``, and whether any of them executes code."""
    from dspex.modules.catalog import catalog

    by_class = {entry.dspy_class: entry for entry in catalog().values()}
    names, code = set(), False
    modules = (
        [program, *(m for _, m in program.named_sub_modules())]
        if hasattr(program, "named_sub_modules")
        else [program]
    )
    for module in modules:
        entry = by_class.get(type(module))
        if entry is not None:
            names.add(entry.name)
            code = code or entry.executes_code
    return names, code


class Router:
    """Decides where runs of registered programs execute (see the module docstring)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.rules = app.settings.routing
        pools = set(app.pools.names)
        for where, target in [
            ("default", self.rules.default),
            ("spill_to", self.rules.spill_to),
            *((f"programs.{k}", v) for k, v in self.rules.programs.items()),
            *((f"modules.{k}", v) for k, v in self.rules.modules.items()),
        ]:
            if target != INLINE and target not in pools:
                raise ConfigurationError(
                    f"[routing] {where} = {target!r}: not 'inline' nor a pool; pools: {', '.join(sorted(pools))}"
                )
        self.isolated = ISOLATED_POOL in app.settings.pools
        self.active = bool(
            self.rules.programs or self.rules.modules or self.rules.default != INLINE or self.isolated
        )
        self._shapes: dict[str, tuple[set[str], bool]] = {}
        self._lock = threading.Lock()

    def _shape(self, name: str, version_id: str | None) -> tuple[set[str], bool]:
        """The modules of a program version (built once per version: ids are content hashes)."""
        version = self.app._cache.version(name, version_id)
        with self._lock:
            shape = self._shapes.get(version.id)
        if shape is None:
            shape = _module_names(self.app.programs.build(version))
            with self._lock:
                if len(self._shapes) >= 1000:
                    self._shapes.clear()
                self._shapes[version.id] = shape
        return shape

    def decide(self, name: str, version_id: str | None = None) -> Route:
        """The route of a run of registered program ``name`` (``version_id``: default production)."""
        route = self._rule(name, version_id)
        if route.pool is None:
            return route
        status = self.app.pools.get(route.pool).status()
        if not status.healthy or status.queued > self.rules.spill_queue:
            why = (
                "unhealthy"
                if not status.healthy
                else f"saturated ({status.queued} queued > {self.rules.spill_queue})"
            )
            target = None if self.rules.spill_to == INLINE else self.rules.spill_to
            return Route(
                target, f"{route.reason}; pool {route.pool!r} {why}: spilled to {self.rules.spill_to}"
            )
        return route

    def batch(self, name: str, version_id: str | None = None, *, pool: str | None = None) -> Route:
        """The route of an evaluation batch or a job of ``name``: ``pool`` when the caller owns one (a
        ``dspex worker --pool``), else :meth:`decide` when there are rules, else inline."""
        if pool is not None:
            self.app.pools.setting(pool)  # an unknown pool is a ConfigurationError listing the valid ones
            return Route(pool, "the worker's own pool (dspex worker --pool)")
        if not self.active:
            return Route(None, "no [routing] rules")
        return self.decide(name, version_id)

    def evaluation(
        self,
        name: str,
        version_id: str | None = None,
        *,
        pool: str | None = None,
        configuration: dict[str, Any] | None = None,
    ) -> Placed:
        """Registered program ``name`` (``version_id``, else production) where its evaluation runs::

            placed = app.router.evaluation("qa")
            Evaluator(exact_match, concurrency=128).run(placed.program, devset)
            placed.route.reason                      # e.g. "[routing] programs.qa"

        ``pool`` names the pool outright (as :meth:`batch`); ``configuration`` (``{"space": a space
        document, "values": a configuration}``) is applied to the program, on the workers or here.
        """
        route = self.batch(name, version_id, pool=pool)
        version = self.app._cache.version(name, version_id)
        if route.pool is not None:
            from dspex.pools.remote import PooledProgram

            remote = PooledProgram(self.app.pools.get(route.pool), name, version.id, configuration)
            return Placed(remote, version.id, route)
        program = self.app.programs.build(version)
        if configuration is not None:
            from dspex.variables.binding import apply
            from dspex.variables.spacefile import space_from_document

            space, bindings = space_from_document(configuration["space"], functions=self.app.tools)
            values = space.validate(configuration["values"])
            program = apply(program, values, bindings, lms=self.app.space_lms(space))
        return Placed(program, version.id, route)

    def _rule(self, name: str, version_id: str | None) -> Route:
        rules = self.rules
        if name in rules.programs:
            return _route(rules.programs[name], f"[routing] programs.{name}")
        modules, executes_code = self._shape(name, version_id)
        for module in sorted(modules):
            if module in rules.modules:
                return _route(rules.modules[module], f"[routing] modules.{module}")
        if executes_code and self.isolated:
            return Route(ISOLATED_POOL, "executes code: the isolated pool")
        return _route(rules.default, "[routing] default")


def _route(target: str, reason: str) -> Route:
    return Route(None if target == INLINE else target, reason)
