"""The tables, as SQLAlchemy Core metadata. Migrations in ``migrations/versions`` create them.

Every JSON column holds plain JSON (JSONB on PostgreSQL), never pickle; payloads that may evolve carry
a ``"v"`` version field. Times are timezone-aware UTC. Each table is explained in the docstring of the
repository that owns it; this module is the one place their columns are declared, and a test checks
that the migrated database matches it exactly.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "ADAPTIVE_ARM_STATUSES",
    "ADAPTIVE_STATUSES",
    "EXECUTION_STATUSES",
    "JOB_STATUSES",
    "OPTIMIZATION_STATUSES",
    "TRIAL_STATES",
    "VERSION_STATUSES",
    "adaptive_arms",
    "adaptive_events",
    "adaptive_programs",
    "api_keys",
    "audit_events",
    "dataset_examples",
    "dataset_versions",
    "datasets",
    "evaluation_cache",
    "executions",
    "jobs",
    "metadata",
    "optimization_trials",
    "optimizations",
    "program_cache",
    "program_versions",
    "programs",
    "recorders",
    "variable_changes",
]

# Python None is SQL NULL (not JSON null), so "no value" is one thing in filters and retention.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
VERSION_STATUSES = ("draft", "optimizing", "production", "archived")
EXECUTION_STATUSES = ("running", "succeeded", "failed", "cancelled", "abandoned")
OPTIMIZATION_STATUSES = ("running", "succeeded", "failed", "cancelled")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TRIAL_STATES = ("running", "complete", "pruned", "failed")
ADAPTIVE_STATUSES = ("active", "frozen", "stopped")
ADAPTIVE_ARM_STATUSES = ("active", "retired")


def _when(name: str, *, nullable: bool = False, index: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

programs = sa.Table(
    "programs",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("source", JSON, nullable=False),
    _when("created_at"),
    _when("updated_at"),
    sa.Column("cache_ttl_s", sa.Integer, nullable=True),
    sa.Column("durability", sa.String(8), nullable=True),
)

program_versions = sa.Table(
    "program_versions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("program", sa.String(200), sa.ForeignKey("programs.name", ondelete="CASCADE"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("state", JSON, nullable=False),
    sa.Column("dspy_version", sa.String(32), nullable=False),
    sa.Column("variables", JSON, nullable=True),
    sa.Column("parent_id", sa.String(64), nullable=True),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    _when("created_at"),
    _when("promoted_at", nullable=True),
    sa.CheckConstraint(_in("status", VERSION_STATUSES), name="status"),
    sa.Index("ix_program_versions_program_created_at", "program", "created_at"),
    # Exactly one production version per program, enforced by the database itself.
    sa.Index(
        "uq_program_versions_one_production",
        "program",
        unique=True,
        sqlite_where=sa.text("status = 'production'"),
        postgresql_where=sa.text("status = 'production'"),
    ),
)


UNSUCCESSFUL = "status IN ('failed', 'cancelled', 'abandoned')"  # the condition of that partial index


def _where(condition: str) -> dict[str, Any]:
    """A partial index's condition, on both databases."""
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


executions = sa.Table(
    "executions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("program", sa.String(200), nullable=True),
    sa.Column("version_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("inputs", JSON, nullable=False),
    sa.Column("outputs", JSON, nullable=True),
    sa.Column("error", JSON, nullable=True),
    _when("started_at", index=True),
    _when("ended_at", nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=True),
    sa.Column("usage", JSON, nullable=True),
    sa.Column("total_tokens", sa.Integer, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("variables", JSON, nullable=True),
    sa.Column("trace", JSON, nullable=True),
    sa.Column("cache_hit", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("runner", sa.String(200), nullable=False),
    sa.Column("recorder_id", sa.String(36), nullable=True),
    sa.Column("placement", JSON, nullable=True),
    sa.Column("session_id", sa.String(36), nullable=True),
    sa.Column("trace_id", sa.String(32), nullable=True),  # the run's OpenTelemetry trace
    sa.Column("adaptation", JSON, nullable=True),  # which arm of an adaptive program served it, and why
    sa.CheckConstraint(_in("status", EXECUTION_STATUSES), name="status"),
    sa.Index("ix_executions_program_version_id_started_at", "program", "version_id", "started_at"),
    # Partial (migration 0010): every run's record pays for each index it enters, and these serve only
    # the sweep of running rows (queries spell 'running' as a literal so planners can use them) and
    # lookups by session or trace, which most runs do not have.
    *(
        sa.Index(f"ix_executions_status_{column}", "status", column, **_where("status = 'running'"))
        for column in ("runner", "recorder_id")
    ),
    *(
        sa.Index(f"ix_executions_{column}", column, **_where(f"{column} IS NOT NULL"))
        for column in ("session_id", "trace_id")
    ),
    # Partial (migration 0013): the runs that did not succeed, for "failed runs" listings and counts.
    sa.Index("ix_executions_unsuccessful_started_at", "status", "started_at", **_where(UNSUCCESSFUL)),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    _when("created_at"),
    _when("updated_at"),
)

dataset_versions = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(200), sa.ForeignKey("datasets.name", ondelete="CASCADE"), nullable=False),
    sa.Column("input_fields", JSON, nullable=False),
    sa.Column("label_fields", JSON, nullable=False),
    sa.Column("splits", JSON, nullable=False),
    sa.Column("stats", JSON, nullable=False),
    sa.Column("example_count", sa.Integer, nullable=False),
    _when("created_at"),
    sa.Index("ix_dataset_versions_dataset_created_at", "dataset", "created_at"),
)

dataset_examples = sa.Table(
    "dataset_examples",
    metadata,
    sa.Column(
        "version_id",
        sa.String(64),
        sa.ForeignKey("dataset_versions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("example_hash", sa.String(64), nullable=False),
    sa.Column("split", sa.String(64), nullable=True),
    sa.Column("data", JSON, nullable=False),
)

variable_changes = sa.Table(
    "variable_changes",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("variable", sa.String(200), nullable=False),
    sa.Column("old", JSON, nullable=True),
    sa.Column("new", JSON, nullable=True),
    sa.Column("changed_by", sa.String(200), nullable=False),
    _when("changed_at"),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("configuration_id", sa.String(64), nullable=True),
    sa.Index("ix_variable_changes_scope_variable_id", "scope", "variable", "id"),
    sa.Index("ix_variable_changes_scope_changed_at", "scope", "changed_at"),
)

optimizations = sa.Table(
    "optimizations",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("program", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("space", JSON, nullable=False),
    sa.Column("objectives", JSON, nullable=False),
    sa.Column("budget", JSON, nullable=False),
    sa.Column("settings", JSON, nullable=False),
    sa.Column("best", JSON, nullable=True),
    sa.Column("pareto", JSON, nullable=True),
    sa.Column("result_version_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    _when("created_at"),
    _when("updated_at"),
    # Migration 0015: the driver that owns a shared run and its lease (one owner per run).
    sa.Column("owner", sa.String(200), nullable=True),
    _when("owner_lease_expires_at", nullable=True),
    sa.CheckConstraint(_in("status", OPTIMIZATION_STATUSES), name="status"),
)

optimization_trials = sa.Table(
    "optimization_trials",
    metadata,
    sa.Column(
        "optimization_id",
        sa.String(200),
        sa.ForeignKey("optimizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", JSON, nullable=False),
    sa.Column("configuration", JSON, nullable=True),
    sa.Column("configuration_id", sa.String(64), nullable=True),
    sa.Column("scores", JSON, nullable=True),
    sa.Column("intermediate", JSON, nullable=False),
    sa.Column("lm_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    _when("started_at"),
    _when("finished_at", nullable=True),
    # Migration 0014: the driver process running the trial and its lease (several drivers per run).
    sa.Column("driver", sa.String(200), nullable=True),
    _when("lease_expires_at", nullable=True),
    sa.CheckConstraint(_in("state", TRIAL_STATES), name="state"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    _when("run_after"),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    _when("lease_expires_at", nullable=True),
    _when("heartbeat_at", nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("progress", JSON, nullable=True),
    sa.Column("result", JSON, nullable=True),
    sa.Column("error", JSON, nullable=True),
    sa.Column("created_by", sa.String(200), nullable=True),
    _when("created_at", index=True),
    _when("started_at", nullable=True),
    _when("finished_at", nullable=True),
    sa.CheckConstraint(_in("status", JOB_STATUSES), name="status"),
    sa.Index("ix_jobs_status_run_after", "status", "run_after"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", JSON, nullable=False),
    sa.Column("programs", JSON, nullable=True),
    _when("created_at"),
    _when("revoked_at", nullable=True),
    _when("last_used_at", nullable=True),
)

program_cache = sa.Table(
    "program_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("program", sa.String(200), nullable=False, index=True),
    sa.Column("version_id", sa.String(64), nullable=False),
    sa.Column("outputs", JSON, nullable=False),
    sa.Column("execution_id", sa.String(36), nullable=True),
    _when("created_at"),
    _when("expires_at", index=True),
)

# Who changed which program's production state, and when (dspex.store.audit).
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    _when("at", index=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("program", sa.String(200), nullable=True),
    sa.Column("before_version", sa.String(64), nullable=True),
    sa.Column("after_version", sa.String(64), nullable=True),
    sa.Column("detail", JSON, nullable=True),
    sa.Index("ix_audit_events_program_at", "program", "at"),
)

# Processes that record runs, each with a lease renewed by its writer thread (dspex.store.executions).
recorders = sa.Table(
    "recorders",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    _when("started_at"),
    _when("heartbeat_at"),
    _when("lease_expires_at", index=True),
    _when("closed_at", nullable=True),
)


# A conversation's state across runs (dspex.runtime.sessions): its program, owner, history, variables.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("program", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("variables", JSON, nullable=True),
    sa.Column("history", JSON, nullable=False),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("metrics", JSON, nullable=False),
    sa.Column("ttl_s", sa.Float, nullable=False),
    _when("created_at"),
    _when("updated_at"),
    _when("expires_at", index=True),
    # A turn in progress holds the session: who (a per-process token) and until when (a lease).
    sa.Column("busy_by", sa.String(64), nullable=True),
    sa.Column("busy_until", sa.DateTime(timezone=True), nullable=True),
)


# Feedback on a run after it ended (a score, a label, a comment): stored, shown, counted in quality.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("execution_id", sa.String(36), nullable=False, index=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("detail", JSON, nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    _when("created_at", index=True),
)


# Adaptive programs (dspex.store.adapt): a bandit serving arms (configurations) of one program.
adaptive_programs = sa.Table(
    "adaptive_programs",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("program", sa.String(200), nullable=False),
    sa.Column("version_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("frozen_arm", sa.String(64), nullable=True),
    _when("created_at"),
    _when("updated_at"),
    sa.CheckConstraint(_in("status", ADAPTIVE_STATUSES), name="status"),
)

adaptive_arms = sa.Table(
    "adaptive_arms",
    metadata,
    sa.Column(
        "adaptive",
        sa.String(200),
        sa.ForeignKey("adaptive_programs.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("arm", sa.String(64), primary_key=True),
    sa.Column("configuration", JSON, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("retired_reason", sa.Text, nullable=True),
    _when("added_at"),
    _when("retired_at", nullable=True),
    sa.CheckConstraint(_in("status", ADAPTIVE_ARM_STATUSES), name="status"),
)

# Append-only: serves, rewards, resets, retirements, re-optimizations; ``key`` makes one idempotent.
adaptive_events = sa.Table(
    "adaptive_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("adaptive", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("arm", sa.String(64), nullable=True),
    sa.Column("execution_id", sa.String(36), nullable=True, index=True),
    sa.Column("reason", sa.String(16), nullable=True),
    sa.Column("context", sa.String(200), nullable=True),
    sa.Column("reward", sa.Float, nullable=True),
    sa.Column("quality", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("failed", sa.Boolean, nullable=True),
    sa.Column("detail", JSON, nullable=True),
    sa.Column("key", sa.String(200), nullable=True),
    _when("at"),
    sa.Index("ix_adaptive_events_adaptive_id", "adaptive", "id"),
    sa.Index("uq_adaptive_events_adaptive_key", "adaptive", "key", unique=True),
)

# What a configuration predicted for an example (dspex.store.evalcache): evaluations an optimizer has paid for.
evaluation_cache = sa.Table(
    "evaluation_cache",
    metadata,
    sa.Column("configuration_id", sa.String(200), primary_key=True),
    sa.Column("example_hash", sa.String(64), primary_key=True),
    sa.Column("result", JSON, nullable=False),
    _when("created_at", index=True),
)
