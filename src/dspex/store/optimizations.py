"""Optimization runs and their trials: what a variable search tried, what it scored, what it cost.

Table ``optimizations``: one row per run, keyed by the optimization id the caller picks (or the
optimizer derives), with the search space, objectives, budget and settings as JSON, the status
(``running`` / ``succeeded`` / ``failed`` / ``cancelled``), and once done the best configuration or the
Pareto front and the program version saved from it. A run left ``running`` by a process that stopped (it
died, or its job was handed to another worker) is resumed by the next process that optimizes it.

Table ``optimization_trials``: one row per trial, keyed by (optimization id, trial number). The number
is taken in the same write transaction that inserts the row (``max + 1``), so numbers never repeat. A
trial is written ``running`` before it is evaluated and finished as ``complete``, ``pruned`` or
``failed``; a process killed mid-trial leaves a ``running`` row, which the next start marks ``failed``
(:meth:`OptimizationRepository.abandon_running`). ``params`` holds the sampled leaf values with their
Optuna distributions, so a resumed search replays the history into its sampler.

Several drivers per run (:mod:`dspex.distributed.optimize`): a trial row also names its ``driver`` and
the ``lease_expires_at`` that driver renews while it runs (:meth:`~OptimizationRepository.renew_trials`).
A driver takes its next trial with :meth:`~OptimizationRepository.claim_trial`, one write transaction
under the run's lock (the write lock on SQLite, ``SELECT ... FOR UPDATE`` of the run's row on
PostgreSQL): it marks ``failed`` the running trials of drivers that are gone, reads the rows that changed
since it last looked, asks its sampler and inserts the next number, so numbers stay contiguous and unique
however many processes share the run. One of them owns the run (``owner``, with a lease it renews, taken
by :meth:`~OptimizationRepository.claim_owner` under the same lock): a second owner is refused while the
first lives. ::

    repo = OptimizationRepository(db)
    repo.create(OptimizationRecord(id="qa-search", program="qa", space=..., objectives=["quality"], ...))
    number = repo.start_trial("qa-search", params={...})
    repo.finish_trial("qa-search", number, state="complete", scores={"quality": 0.8}, ...)
    repo.trials("qa-search")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from dspex.errors import ConfigurationError
from dspex.store._engine import Database
from dspex.store._time import aware, utcnow
from dspex.store.schema import optimization_trials, optimizations

__all__ = ["OptimizationRecord", "OptimizationRepository", "TrialBoard", "TrialRecord", "TrialState"]

TrialState = Literal["running", "complete", "pruned", "failed"]
OptimizationStatus = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class OptimizationRecord:
    """One optimization run."""

    id: str
    program: str | None
    space: dict[str, Any]
    objectives: list[str]
    budget: dict[str, Any]
    settings: dict[str, Any]
    status: OptimizationStatus = "running"
    best: dict[str, Any] | None = None
    pareto: list[dict[str, Any]] | None = None
    result_version_id: str | None = None
    error: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> OptimizationRecord:
        return cls(
            id=row["id"],
            program=row["program"],
            status=row["status"],
            space=row["space"],
            objectives=list(row["objectives"]),
            budget=row["budget"],
            settings=row["settings"],
            best=row["best"],
            pareto=row["pareto"],
            result_version_id=row["result_version_id"],
            error=row["error"],
            created_at=aware(row["created_at"]),
            updated_at=aware(row["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial: the sampled params, the configuration they resolved to, scores per objective (for
    ``complete`` trials; a pruned trial has its last minibatch score in ``intermediate``), the LM calls
    and cost it made, how long it took, and the error of a failed one."""

    optimization_id: str
    number: int
    state: TrialState
    params: dict[str, Any]
    configuration: dict[str, Any] | None
    configuration_id: str | None
    scores: dict[str, float] | None
    intermediate: dict[int, float]
    lm_calls: int
    cost_usd: float | None
    duration_s: float | None
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    driver: str | None = None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> TrialRecord:
        return cls(
            optimization_id=row["optimization_id"],
            number=int(row["number"]),
            state=row["state"],
            params=row["params"],
            configuration=row["configuration"],
            configuration_id=row["configuration_id"],
            scores=row["scores"],
            intermediate={int(k): float(v) for k, v in (row["intermediate"] or {}).items()},
            lm_calls=int(row["lm_calls"]),
            cost_usd=row["cost_usd"],
            duration_s=row["duration_s"],
            error=row["error"],
            started_at=aware(row["started_at"]),
            finished_at=aware(row["finished_at"]),
            driver=row["driver"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "configuration": self.configuration,
            "configuration_id": self.configuration_id,
            "scores": self.scores,
            "intermediate": {str(k): v for k, v in self.intermediate.items()},
            "lm_calls": self.lm_calls,
            "cost_usd": self.cost_usd,
            "duration_s": self.duration_s,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TrialBoard:
    """What a driver sees when it claims a trial (:meth:`OptimizationRepository.claim_trial`): the run's
    status; the trials numbered ``since`` or later and those it asked to ``watch`` (by number); counts over
    all trials, after the gone drivers' ones were marked failed (``reaped``), and their LM calls."""

    status: str
    rows: tuple[TrialRecord, ...]
    finished: int
    running: int
    lm_calls: int
    reaped: tuple[int, ...]


class OptimizationRepository:
    """Reads and writes ``optimizations`` and ``optimization_trials``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- runs --------------------------------------------------------------------------------------
    def create(self, record: OptimizationRecord) -> tuple[OptimizationRecord, bool]:
        """Insert ``record`` unless a run with its id exists; returns (the stored run, created?)."""
        try:
            return self._create(record)
        except sa.exc.IntegrityError:
            # PostgreSQL: another process inserted the run between this one's read and insert (reads
            # take no write lock there). The run exists: it is returned as found; another error is raised.
            with self.db.read() as connection:
                row = (
                    connection.execute(sa.select(optimizations).where(optimizations.c.id == record.id))
                    .mappings()
                    .first()
                )
            if row is None:
                raise
            return OptimizationRecord.from_row(row), False

    def _create(self, record: OptimizationRecord) -> tuple[OptimizationRecord, bool]:
        with self.db.write() as connection:
            row = (
                connection.execute(sa.select(optimizations).where(optimizations.c.id == record.id))
                .mappings()
                .first()
            )
            if row is not None:
                return OptimizationRecord.from_row(row), False
            connection.execute(
                optimizations.insert().values(
                    id=record.id,
                    program=record.program,
                    status=record.status,
                    space=record.space,
                    objectives=list(record.objectives),
                    budget=record.budget,
                    settings=record.settings,
                    best=record.best,
                    pareto=record.pareto,
                    result_version_id=record.result_version_id,
                    error=record.error,
                    created_at=record.created_at,
                    updated_at=record.updated_at,
                )
            )
        return record, True

    def get(self, optimization_id: str) -> OptimizationRecord:
        with self.db.read() as connection:
            row = (
                connection.execute(sa.select(optimizations).where(optimizations.c.id == optimization_id))
                .mappings()
                .first()
            )
        if row is None:
            raise ConfigurationError(f"no optimization {optimization_id!r}")
        return OptimizationRecord.from_row(row)

    def runs(self, program: str | None = None) -> list[OptimizationRecord]:
        query = sa.select(optimizations).order_by(optimizations.c.created_at)
        if program is not None:
            query = query.where(optimizations.c.program == program)
        with self.db.read() as connection:
            return [OptimizationRecord.from_row(r) for r in connection.execute(query).mappings()]

    def update(self, optimization_id: str, **values: Any) -> None:
        """Set columns of a run (``status``, ``best``, ``pareto``, ``result_version_id``, ``error``, ``budget``)."""
        allowed = {"status", "best", "pareto", "result_version_id", "error", "budget", "settings"}
        unknown = set(values) - allowed
        if unknown:
            raise ConfigurationError(f"cannot update {sorted(unknown)} of an optimization")
        with self.db.write() as connection:
            connection.execute(
                optimizations.update()
                .where(optimizations.c.id == optimization_id)
                .values(**values, updated_at=utcnow())
            )

    # -- the owner of a shared run -----------------------------------------------------------------
    def claim_owner(
        self, optimization_id: str, *, driver: str, lease_s: float, gone: Callable[[str], bool]
    ) -> str | None:
        """Make ``driver`` the run's owner for ``lease_s``, in one write transaction under the run's lock,
        unless another owner holds it: one whose lease has not passed and that ``gone`` does not know to
        have ended. Returns None when ``driver`` owns the run (or there is no run yet), else the holder."""
        now = utcnow()
        with self.db.write() as connection:
            query = sa.select(optimizations.c.owner, optimizations.c.owner_lease_expires_at).where(
                optimizations.c.id == optimization_id
            )
            if self.db.dialect == "postgresql":  # serialise claims per run across processes
                query = query.with_for_update()
            row = connection.execute(query).first()
            if row is None:
                return None
            holder, expires = row.owner, row.owner_lease_expires_at
            if (
                holder is not None
                and holder != driver
                and expires is not None
                and aware(expires) >= now
                and not gone(holder)
            ):
                return str(holder)
            connection.execute(
                optimizations.update()
                .where(optimizations.c.id == optimization_id)
                .values(owner=driver, owner_lease_expires_at=now + dt.timedelta(seconds=lease_s))
            )
        return None

    def renew_owner(self, optimization_id: str, driver: str, lease_s: float) -> bool:
        """Extend ``driver``'s ownership of the run by ``lease_s`` from now; False if it is not the owner."""
        with self.db.write() as connection:
            result = connection.execute(
                optimizations.update()
                .where(optimizations.c.id == optimization_id, optimizations.c.owner == driver)
                .values(owner_lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
            )
        return bool(result.rowcount)

    def release_owner(self, optimization_id: str, driver: str) -> None:
        """``driver`` no longer owns the run (it ended); a no-op if another owner took it meanwhile."""
        with self.db.write() as connection:
            connection.execute(
                optimizations.update()
                .where(optimizations.c.id == optimization_id, optimizations.c.owner == driver)
                .values(owner=None, owner_lease_expires_at=None)
            )

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, optimization_id: str, params: Mapping[str, Any]) -> int:
        """Insert a ``running`` trial with the next number (taken under the write lock); returns it."""
        with self.db.write() as connection:
            if self.db.dialect == "postgresql":  # serialise numbering per run across processes
                connection.execute(
                    sa.select(optimizations.c.id)
                    .where(optimizations.c.id == optimization_id)
                    .with_for_update()
                )
            last = connection.execute(
                sa.select(sa.func.max(optimization_trials.c.number)).where(
                    optimization_trials.c.optimization_id == optimization_id
                )
            ).scalar_one_or_none()
            number = 0 if last is None else int(last) + 1
            connection.execute(
                optimization_trials.insert().values(
                    optimization_id=optimization_id,
                    number=number,
                    state="running",
                    params=dict(params),
                    intermediate={},
                    lm_calls=0,
                    started_at=utcnow(),
                )
            )
        return number

    def claim_trial(
        self,
        optimization_id: str,
        *,
        driver: str,
        lease_s: float,
        since: int,
        watch: Collection[int],
        gone: Callable[[str], bool],
        decide: Callable[[TrialBoard], Mapping[str, Any] | None],
        reason: str,
    ) -> tuple[int | None, TrialBoard]:
        """In one write transaction under the run's lock: mark ``failed`` (with ``reason``) the running
        trials whose driver is gone (no driver, its lease passed, or ``gone(driver)``), build the
        :class:`TrialBoard`, and call ``decide`` with it; when it returns params, insert them as the next
        trial, ``running`` for ``driver`` with a lease of ``lease_s``. Returns (the number or None, the
        board). ``decide`` runs under the lock: it must be quick (a sampler's ask) and touch no database."""
        now = utcnow()
        trials = optimization_trials
        with self.db.write() as connection:
            query = sa.select(optimizations.c.status).where(optimizations.c.id == optimization_id)
            if self.db.dialect == "postgresql":  # serialise claims per run across processes
                query = query.with_for_update()
            status = connection.execute(query).scalar_one_or_none()
            if status is None:
                raise ConfigurationError(f"no optimization {optimization_id!r}")
            of_run = trials.c.optimization_id == optimization_id
            running = connection.execute(
                sa.select(trials.c.number, trials.c.driver, trials.c.lease_expires_at).where(
                    of_run, trials.c.state == "running"
                )
            ).all()
            reaped = sorted(
                r.number
                for r in running
                if r.driver != driver
                and (
                    r.driver is None
                    or (r.lease_expires_at is not None and aware(r.lease_expires_at) < now)
                    or gone(r.driver)
                )
            )
            if reaped:
                connection.execute(
                    trials.update()
                    .where(of_run, trials.c.number.in_(reaped), trials.c.state == "running")
                    .values(state="failed", error=reason, finished_at=now)
                )
            counts = {
                state: (int(n), int(calls or 0))
                for state, n, calls in connection.execute(
                    sa.select(trials.c.state, sa.func.count(), sa.func.sum(trials.c.lm_calls))
                    .where(of_run)
                    .group_by(trials.c.state)
                ).all()
            }
            changed = sa.or_(trials.c.number >= since, trials.c.number.in_(sorted(watch)))
            rows = connection.execute(
                sa.select(trials).where(of_run, changed).order_by(trials.c.number)
            ).mappings()
            board = TrialBoard(
                status=str(status),
                rows=tuple(TrialRecord.from_row(r) for r in rows),
                finished=sum(counts.get(s, (0, 0))[0] for s in ("complete", "pruned")),
                running=counts.get("running", (0, 0))[0],
                lm_calls=sum(calls for _, calls in counts.values()),
                reaped=tuple(reaped),
            )
            params = decide(board)
            if params is None:
                return None, board
            number = sum(n for n, _ in counts.values())  # numbers are contiguous from 0
            connection.execute(
                trials.insert().values(
                    optimization_id=optimization_id,
                    number=number,
                    state="running",
                    params=dict(params),
                    intermediate={},
                    lm_calls=0,
                    started_at=now,
                    driver=driver,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                )
            )
        return number, board

    def renew_trials(self, optimization_id: str, driver: str, lease_s: float) -> int:
        """Extend the lease of ``driver``'s running trials by ``lease_s`` from now; returns how many."""
        with self.db.write() as connection:
            result = connection.execute(
                optimization_trials.update()
                .where(
                    optimization_trials.c.optimization_id == optimization_id,
                    optimization_trials.c.driver == driver,
                    optimization_trials.c.state == "running",
                )
                .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
            )
            return int(result.rowcount)

    def finish_trial(
        self,
        optimization_id: str,
        number: int,
        *,
        state: TrialState,
        params: Mapping[str, Any] | None = None,
        configuration: Mapping[str, Any] | None = None,
        configuration_id: str | None = None,
        scores: Mapping[str, float] | None = None,
        intermediate: Mapping[int, float] | None = None,
        lm_calls: int = 0,
        cost_usd: float | None = None,
        duration_s: float | None = None,
        error: str | None = None,
        if_running: bool = False,
    ) -> bool:
        """Record how a running trial ended (``params`` replaces the stored ones when given). Only a
        ``running`` row changes, so a trial ends once: a trial that is no longer running (another driver
        marked it failed when its lease passed) is an error, or, with ``if_running``, returns False."""
        if state == "running":
            raise ConfigurationError("a finished trial is complete, pruned or failed")
        extra = {"params": dict(params)} if params is not None else {}
        with self.db.write() as connection:
            result = connection.execute(
                optimization_trials.update()
                .where(
                    optimization_trials.c.optimization_id == optimization_id,
                    optimization_trials.c.number == number,
                    optimization_trials.c.state == "running",
                )
                .values(
                    **extra,
                    state=state,
                    configuration=dict(configuration) if configuration is not None else None,
                    configuration_id=configuration_id,
                    scores=dict(scores) if scores is not None else None,
                    intermediate={str(k): v for k, v in (intermediate or {}).items()},
                    lm_calls=lm_calls,
                    cost_usd=cost_usd,
                    duration_s=duration_s,
                    error=error,
                    finished_at=utcnow(),
                )
            )
            if result.rowcount != 1:
                if if_running:
                    return False
                raise ConfigurationError(
                    f"trial {number} of optimization {optimization_id!r} is not running; "
                    "another process may have marked it failed"
                )
        return True

    def abandon_running(self, optimization_id: str, reason: str) -> int:
        """Mark the run's ``running`` trials ``failed`` (their process died); returns how many."""
        with self.db.write() as connection:
            result = connection.execute(
                optimization_trials.update()
                .where(
                    optimization_trials.c.optimization_id == optimization_id,
                    optimization_trials.c.state == "running",
                )
                .values(state="failed", error=reason, finished_at=utcnow())
            )
            return int(result.rowcount)

    def trials(self, optimization_id: str, states: Sequence[TrialState] | None = None) -> list[TrialRecord]:
        """The run's trials by number (``states`` filters)."""
        query = (
            sa.select(optimization_trials)
            .where(optimization_trials.c.optimization_id == optimization_id)
            .order_by(optimization_trials.c.number)
        )
        if states is not None:
            query = query.where(optimization_trials.c.state.in_(list(states)))
        with self.db.read() as connection:
            return [TrialRecord.from_row(r) for r in connection.execute(query).mappings()]

    def count(self, optimization_id: str, states: Sequence[TrialState] = ("complete", "pruned")) -> int:
        """How many trials of the run are in ``states`` (by default the finished ones that count)."""
        with self.db.read() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count())
                    .select_from(optimization_trials)
                    .where(
                        optimization_trials.c.optimization_id == optimization_id,
                        optimization_trials.c.state.in_(list(states)),
                    )
                ).scalar_one()
            )
