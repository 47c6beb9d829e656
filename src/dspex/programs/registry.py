"""``ProgramRegistry``: register programs by name, save their states as versions, promote, load.

::

    registry = ProgramRegistry(open_database("sqlite:///.dspex/dspex.db"))
    first = registry.register("qa", "myapp.qa:build")              # or a spec mapping; a draft version
    registry.promote("qa", first.id)
    qa = registry.load("qa")                                       # the production version, as a module
    optimized = optimizer.compile(qa, trainset=examples)
    v2 = registry.save_version("qa", optimized, parent_id=first.id, note="MIPROv2, 200 examples")
    registry.promote("qa", v2.id)                                  # v1 archived
    registry.rollback("qa")                                        # v1 back in production

The storage and the lifecycle rules are described in :mod:`dspex.store.programs`; the version payload
in ``dspex.programs._state``. Loaded programs are cached per version id (a small LRU) and every caller
gets its own deep copy, so mutating a loaded program never changes what the next caller gets.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import dspy

from dspex.errors import ConfigurationError, did_you_mean
from dspex.jsonable import canonical_hash
from dspex.lm.models import ModelRegistry
from dspex.modules import ToolRegistry
from dspex.programs._json import check_json
from dspex.programs._source import build_source, normalise_source
from dspex.programs._state import apply_state, apply_structure, capture_state
from dspex.store._engine import Database
from dspex.store.audit import AuditRepository
from dspex.store.programs import ProgramRecord, ProgramRepository, ProgramVersion, VersionStatus
from dspex.store.schema import VERSION_STATUSES

if TYPE_CHECKING:
    from dspex.variables.binding import Binding

__all__ = ["ProgramRegistry"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_MIN_PREFIX = 6


class _LRU:
    """A thread-safe, bounded map from version id to the pristine loaded program."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, dspy.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dspy.Module | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: dspy.Module) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _copy(module: dspy.Module) -> dspy.Module:
    # LMs are shared rather than copied: DSPy shares one LM across threads anyway, and copying one would
    # copy its connection pools. Everything else (demos, signatures, config) is the caller's own.
    memo: dict[int, Any] = {id(p.lm): p.lm for _, p in module.named_predictors() if p.lm is not None}
    try:
        return copy.deepcopy(module, memo)
    except Exception:  # an attribute deepcopy cannot handle: DSPy's copy falls back to sharing it
        return module.deepcopy()


class ProgramRegistry:
    """Registered programs and their versions in one database. Thread-safe.

    ``tools`` resolves tool names in spec sources, ``models`` the configured models a spec's ``lm`` names;
    ``cache_size`` bounds the loaded-program cache.
    """

    def __init__(
        self,
        db: Database,
        *,
        tools: ToolRegistry | None = None,
        models: ModelRegistry | None = None,
        cache_size: int = 32,
    ) -> None:
        if cache_size < 1:
            raise ConfigurationError(f"cache_size must be >= 1, got {cache_size}")
        self.db = db
        self.repository = ProgramRepository(db)
        self.audit = AuditRepository(db)
        self.tools = tools
        self.models = models
        self._cache = _LRU(cache_size)
        # Bumped by every change this registry makes, so callers that memoise resolutions (App) see their
        # own process's promotions at once; other processes' within their memo's freshness.
        self.generation = 0

    # -- programs ------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        source: str | Mapping[str, Any],
        *,
        description: str | None = None,
        replace: bool = False,
        actor: str = "local",
    ) -> ProgramVersion:
        """Register ``name`` from an import path or a spec; returns the draft version of its fresh state.

        Registering again with the same source is fine (it records the current state, deduplicated);
        with another source it is an error unless ``replace=True``. ``description=None`` keeps the
        existing description. Usage::

            registry.register("qa", "myapp.qa:build", description="answers support questions")
            registry.register("classify", {"module": "predict", "signature": "text -> label",
                                           "lm": {"model": "openai/gpt-4o-mini", "temperature": 0.0}})
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                f"a program name is 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit; "
                f"got {name!r}"
            )
        stored = normalise_source(source)
        module = build_source(
            stored, tools=self.tools, models=self.models
        )  # fails here, before anything is written
        existing = self.repository.get_program(name)
        before = self._production(name) if existing is not None else None
        record, _ = self.repository.save_program(name, stored, description=description, replace=replace)
        version = self._save(
            record, module, status="draft", variables=None, note="registered", parent_id=None
        )
        replaced = existing is not None and existing.source != stored
        self.audit.record(
            "replace" if replaced else "register", name, actor=actor, before=before, after=version.id
        )
        return version

    def replaces_production(self, name: str, source: str | Mapping[str, Any]) -> bool:
        """Whether registering ``source`` as ``name`` would replace the source of a program in production
        (what the service lets only keys with the ``programs:promote`` scope do)."""
        existing = self.repository.get_program(name)
        if existing is None or self._production(name) is None:
            return False
        return bool(existing.source != normalise_source(source))

    def _production(self, name: str) -> str | None:
        return next((v.id for v in self.repository.versions(name) if v.status == "production"), None)

    def get(self, name: str) -> ProgramRecord:
        """The program ``name``; ConfigurationError with a close-match hint if there is none."""
        record = self.repository.get_program(name)
        if record is None:
            raise ConfigurationError(self._unknown(name))
        return record

    def list_programs(self) -> list[ProgramRecord]:
        """Every registered program, by name."""
        return self.repository.list_programs()

    # -- versions ------------------------------------------------------------------------------------
    def save_version(
        self,
        name: str,
        module: dspy.Module,
        *,
        status: Literal["draft", "optimizing"] = "draft",
        variables: Mapping[str, Any] | None = None,
        bindings: Iterable[Binding] | None = None,
        note: str = "",
        parent_id: str | None = None,
    ) -> ProgramVersion:
        """Save ``module``'s state as a version of ``name``; the same state again returns the same version.

        The state must be JSON (demos, instructions, per-predictor config and LM settings); the version
        is checked to load back into the program's source before it is stored. An existing version
        keeps its status, note and parent. Usage::

            v = registry.save_version("qa", compiled, parent_id=base.id, note="BootstrapFewShot")

        ``module`` configured with variables (``dspex.variables.apply``) whose bindings change its shape
        (``module_type``, ``adapter``, ``attribute``, ``parameter``) is saved with ``variables=`` (the
        configuration) and ``bindings=``: the version keeps those bindings and re-applies them to the
        program its source builds, so a version can run ChainOfThought where the source says Predict.
        """
        if status not in ("draft", "optimizing"):
            raise ConfigurationError(
                f"a new version is 'draft' or 'optimizing', got {status!r}; promote() makes one production"
            )
        record = self.get(name)
        if parent_id is not None:
            self.version(parent_id)
        structure = None
        if bindings is not None:
            from dspex.variables.binding import Bindings

            items = bindings if isinstance(bindings, Bindings) else Bindings(bindings)
            structure = items.structural(variables or {})
        return self._save(
            record,
            module,
            status=status,
            variables=variables,
            note=note,
            parent_id=parent_id,
            structure=structure,
        )

    def _save(
        self,
        record: ProgramRecord,
        module: dspy.Module,
        *,
        status: VersionStatus,
        variables: Mapping[str, Any] | None,
        note: str,
        parent_id: str | None,
        structure: Mapping[str, Any] | None = None,
    ) -> ProgramVersion:
        payload = capture_state(module, record.source, structure)
        stored_variables = check_json(dict(variables), "variables") if variables else None
        version_id = canonical_hash({"program": record.name, "state": payload, "variables": stored_variables})
        if self.repository.get_version(version_id) is None:
            # Rebuild from the source before storing: a version that cannot load is refused now, not
            # discovered when production needs it. The rebuilt program becomes the cache entry.
            where = f"the state of {type(module).__name__} for program {record.name!r}"
            rebuilt = self._rebuild(payload, where)
            if capture_state(rebuilt, record.source, structure) != payload:
                raise ConfigurationError(
                    f"{where} does not load back the same: the program its source builds differs from the "
                    "one being saved (a different structure or state DSPy does not restore)"
                )
            self._cache.put(version_id, rebuilt)
        version, _ = self.repository.add_version(
            id=version_id,
            program=record.name,
            status=status,
            state=payload,
            dspy_version=dspy.__version__,
            variables=stored_variables,
            parent_id=parent_id,
            note=note,
        )
        self.generation += 1
        return version

    def versions(self, name: str) -> list[ProgramVersion]:
        """The versions of ``name``, newest first."""
        self.get(name)
        return self.repository.versions(name)

    def version(self, version_id: str) -> ProgramVersion:
        """One version by id; ConfigurationError if there is none."""
        version = self.repository.get_version(version_id)
        if version is None:
            raise ConfigurationError(f"unknown program version {version_id!r}; list them with versions(name)")
        return version

    def resolve(self, name: str, version: str | None = None) -> ProgramVersion:
        """The version ``load`` would use: ``version`` (an id, or a unique prefix of 6+ characters), else
        the production version, else the newest draft.

        ``registry.resolve("qa").id`` is what ``App.run("qa", ...)`` records as ``version_id``.
        """
        self.get(name)
        if version is None:
            found = self.repository.default_version(name)
            if found is None:
                raise ConfigurationError(
                    f"program {name!r} has no production version and no draft to run; save a version or "
                    f"promote one of {[v.id[:12] for v in self.repository.versions(name)]}"
                )
            return found
        exact = self.repository.get_version(version)
        if exact is not None and exact.program == name:
            return exact
        candidates = self.repository.versions(name)
        matches = [v for v in candidates if len(version) >= _MIN_PREFIX and v.id.startswith(version)]
        if len(matches) == 1:
            return matches[0]
        listed = ", ".join(f"{v.id[:12]} ({v.status})" for v in candidates[:10]) or "none"
        if len(matches) > 1:
            raise ConfigurationError(
                f"version prefix {version!r} of {name!r} is ambiguous; versions: {listed}"
            )
        elsewhere = f" (it belongs to program {exact.program!r})" if exact is not None else ""
        raise ConfigurationError(
            f"unknown version {version!r} of program {name!r}{elsewhere}; versions: {listed}"
        )

    # -- loading -------------------------------------------------------------------------------------
    def load(self, name: str, version: str | None = None) -> dspy.Module:
        """The program ``name`` at ``version`` (default: production, else the newest draft). Usage::

        qa = registry.load("qa")
        with dspy.context(lm=lm):
            qa(question="What is DSPy?")
        """
        return self.build(self.resolve(name, version))

    def build(self, version: ProgramVersion) -> dspy.Module:
        """A fresh copy of the program at ``version`` (from the cache when it was built before): the
        caller's own, to configure or compile."""
        return _copy(self.runnable(version))

    def loaded(self, version_id: str) -> dspy.Module | None:
        """:meth:`runnable` for a version already loaded in this process, else None (nothing is read)."""
        return self._cache.get(version_id)

    def runnable(self, version: ProgramVersion) -> dspy.Module:
        """The program at ``version`` as loaded once and cached: one instance shared by every run of the
        version, in every thread, as DSPy shares one module across the threads of ``dspy.Parallel`` and
        ``dspy.Evaluate``. Call it; never change it (configure or compile a :meth:`build` copy, which
        :func:`dspex.variables.apply` makes itself). A copy per run cost a ChainOfThought 70 us.
        """
        cached = self._cache.get(version.id)
        if cached is None:
            cached = self._rebuild(version.state, f"version {version.id[:12]} of {version.program!r}")
            self._cache.put(version.id, cached)
        return cached

    def _rebuild(self, payload: Mapping[str, Any], where: str) -> dspy.Module:
        module = apply_structure(
            build_source(payload["source"], tools=self.tools, models=self.models), payload, where=where
        )
        apply_state(module, payload, where=where, models=self.models)
        return module

    # -- lifecycle -----------------------------------------------------------------------------------
    def promote(self, name: str, version_id: str, *, actor: str = "local") -> ProgramVersion:
        """Make a version (id or unique prefix) production; the previous production becomes archived.

        Atomic: concurrent promotions queue, and exactly one version is production afterwards. Audited.
        """
        before = self._production(name)
        promoted = self.repository.promote(name, self.resolve(name, version_id).id)
        self.generation += 1
        self.audit.record("promote", name, actor=actor, before=before, after=promoted.id)
        return promoted

    def rollback(self, name: str, *, actor: str = "local") -> ProgramVersion:
        """Archive the production version and re-promote the one that was production before it. Audited."""
        self.get(name)
        before = self._production(name)
        restored = self.repository.rollback(name)
        self.generation += 1
        self.audit.record("rollback", name, actor=actor, before=before, after=restored.id)
        return restored

    def set_status(self, version_id: str, status: VersionStatus) -> ProgramVersion:
        """Move a version between draft, optimizing and archived (production: use promote/rollback).

        Allowed: draft -> optimizing | archived, optimizing -> draft | archived; the same status is a
        no-op. Anything else raises ConfigurationError saying what is allowed.
        """
        if status not in VERSION_STATUSES:
            raise ConfigurationError(did_you_mean(str(status), VERSION_STATUSES, what="version status"))
        self.version(version_id)
        changed = self.repository.set_status(version_id, status)
        self.generation += 1
        return changed

    # -- messages ------------------------------------------------------------------------------------
    def _unknown(self, name: str) -> str:
        names = [p.name for p in self.repository.list_programs()]
        if not names:
            return f"unknown program {name!r}; no program is registered yet (register one first)"
        return did_you_mean(name, names, what="program")
