"""Request and response bodies of the REST service (pydantic lives here, at the boundary, and nowhere else).

Responses are built as plain dicts from the store's ``to_json`` forms and sent without re-validation (the
run path stays lean); these models document them in the OpenAPI document and validate requests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dspex.distributed._parallel import MAX_DRIVERS, MAX_PARALLEL

__all__ = [
    "DatasetOut",
    "DatasetUpload",
    "DatasetVersionOut",
    "ErrorBody",
    "ErrorDetail",
    "ExampleOut",
    "ExecutionOut",
    "ExecutionPage",
    "ExecutionStatsOut",
    "FeedbackIn",
    "FeedbackOut",
    "HealthOut",
    "JobOut",
    "OptimizationDetailOut",
    "OptimizationStart",
    "OptimizationStarted",
    "PoolOut",
    "PoolWorkerOut",
    "ProgramDetailOut",
    "ProgramOut",
    "ProgramRegister",
    "RunRequest",
    "RunResultOut",
    "SessionCreate",
    "SessionOut",
    "SessionRunRequest",
    "SessionTurnOut",
    "SignalGroupOut",
    "SignalReportOut",
    "TrialOut",
    "VersionOut",
]

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
JsonObject = dict[str, Any]


class _Strict(BaseModel):
    """Request bodies refuse unknown fields, so a typo is a 422 naming it rather than silently ignored,
    and values of another type than declared (``"replace": 0`` for a boolean) rather than coercing them."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -- errors ------------------------------------------------------------------------------------------------


class FieldProblem(BaseModel):
    field: str
    message: str
    expected: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code, e.g. not_found, validation_error, lm_error.")
    message: str
    field: str | None = Field(None, description="The request field at fault, when there is one.")
    path: str | None = Field(None, description="Where in a submitted spec the problem is.")
    execution_id: str | None = Field(None, description="The execution record of a run that failed.")
    retryable: bool | None = None
    detail_code: str | None = Field(None, description="For program_failed: the dspex error code.")
    issues: list[FieldProblem] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- programs -----------------------------------------------------------------------------------------------


class ProgramRegister(_Strict):
    name: Name
    spec: JsonObject = Field(
        description="A program spec: {module, signature, options?, tools?, lm?}, as `dspex programs register` "
        "reads from YAML.",
        examples=[{"module": "predict", "signature": "question -> answer"}],
    )
    description: str | None = Field(None, max_length=10_000)
    replace: bool = False


class VersionOut(BaseModel):
    id: str
    program: str
    status: Literal["draft", "optimizing", "production", "archived"]
    dspy_version: str
    variables: JsonObject | None
    parent_id: str | None
    note: str
    created_at: str
    promoted_at: str | None


class ProgramOut(BaseModel):
    name: str
    description: str
    source: JsonObject
    production_version: str | None
    versions: int
    cache_ttl_s: int | None
    created_at: str
    updated_at: str


class CacheSetting(_Strict):
    ttl_s: int | None = Field(
        description="Serve repeated runs (same version, variables and inputs) from the program-level cache "
        "for this many seconds; null turns the cache off and deletes the stored entries.",
        ge=1,
        le=10 * 365 * 24 * 3600,
        examples=[3600],
    )


class ProgramDetailOut(ProgramOut):
    default_version: str | None = Field(description="The version a run without `version` uses.")


# -- runs --------------------------------------------------------------------------------------------------


class RunRequest(_Strict):
    inputs: JsonObject = Field(description="The program's input fields.", examples=[{"question": "2 + 2?"}])
    version: str | None = Field(
        None,
        max_length=64,
        description="A version id or unique prefix; default production, else newest draft.",
    )
    variables: JsonObject | None = Field(None, description="Variable values, recorded with the run.")
    durability: Literal["async", "sync"] | None = Field(
        None,
        description="'sync': the run's record is committed before the response; 'async': written just "
        "after it. Default: the program's setting, else the server's.",
    )
    idempotent: bool = Field(
        False,
        description="On a server that runs on a worker pool: a run whose worker died is tried once more "
        "(on a fresh worker, under the same execution id).",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="The run's deadline in seconds: LM calls, retries, rate-limit waits and pipeline steps "
        "respect it; past it the run fails with 504 deadline_exceeded.",
    )


class RunResultOut(BaseModel):
    execution_id: str
    outputs: JsonObject
    duration_ms: float
    usage: JsonObject
    cost_usd: float | None
    cache_hit: bool
    trace_id: str | None = Field(
        None,
        description="The OpenTelemetry trace of the run (32 hex digits): the caller's when the request "
        "carried a W3C traceparent header, a new one when telemetry export is on, else null.",
    )


# -- sessions ----------------------------------------------------------------------------------------------


class SessionCreate(_Strict):
    program: Name = Field(description="A registered program; its runs are the session's turns.")
    variables: JsonObject | None = Field(None, description="Variable values, recorded with every turn.")
    ttl_s: float | None = Field(
        None,
        gt=0,
        le=31_536_000,
        description="Idle seconds before the session expires (default: the server's).",
    )


class SessionRunRequest(_Strict):
    inputs: JsonObject = Field(
        description="This turn's inputs; the history input (a dspy.History) is filled from the session.",
        examples=[{"question": "And its river?"}],
    )
    durability: Literal["async", "sync"] | None = Field(None, description="As for program runs.")
    idempotent: bool = Field(False, description="As for program runs.")
    timeout: float | None = Field(None, gt=0, le=86_400, description="As for program runs.")


class SessionTurnOut(BaseModel):
    inputs: JsonObject
    outputs: JsonObject
    execution_id: str


class SessionOut(BaseModel):
    id: str
    program: str
    owner: str = Field(description="`key:<id>` of the key that created it, or `local`.")
    variables: JsonObject | None
    turns: int
    metrics: JsonObject = Field(description="Running: turns, failed, total_tokens, cost_usd, duration_ms.")
    ttl_s: float
    created_at: str
    updated_at: str
    expires_at: str
    history: list[SessionTurnOut] | None = Field(
        None, description="Every turn; only on GET /v1/sessions/{id}."
    )


# -- executions --------------------------------------------------------------------------------------------


class ExecutionOut(BaseModel):
    id: str
    program: str | None
    version_id: str | None
    status: Literal["running", "succeeded", "failed", "cancelled", "abandoned"]
    inputs: JsonObject
    outputs: JsonObject | None
    error: JsonObject | None
    started_at: str
    ended_at: str | None
    duration_ms: float | None
    usage: JsonObject | None
    total_tokens: int | None
    cost_usd: float | None
    variables: JsonObject | None
    trace: JsonObject | None = Field(None, description="The span tree; only on GET /v1/executions/{id}.")
    cache_hit: bool
    runner: str
    placement: JsonObject | None = Field(
        None,
        description="Where the run executed: null inline; for a pool, its pool, worker, pid and attempts.",
    )
    session_id: str | None = Field(None, description="The session this run was a turn of.")
    feedback: list[FeedbackOut] | None = Field(
        None, description="Feedback on the run, oldest first; only on GET /v1/executions/{id}."
    )


class FeedbackIn(_Strict):
    """Feedback on a run: at least one of score, label and comment."""

    score: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="From 0 (worst) to 1 (best)."
    )
    label: str | None = Field(None, min_length=1, max_length=200, description="A tag such as `good`.")
    comment: str | None = Field(None, min_length=1, max_length=10_000)
    detail: JsonObject | None = Field(
        None, description="Any JSON object kept with it (at most 16 KiB encoded), e.g. the end user's id."
    )

    @model_validator(mode="after")
    def _something(self) -> FeedbackIn:
        if self.score is None and self.label is None and self.comment is None:
            raise ValueError("give a score, a label or a comment")
        return self


class FeedbackOut(BaseModel):
    id: str
    execution_id: str
    score: float | None
    label: str | None
    comment: str | None
    detail: JsonObject | None
    actor: str = Field(description="`key:<id>` for an API key, `local` for the CLI or Python.")
    created_at: str


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    total: int
    limit: int
    offset: int


class ExecutionStatsOut(BaseModel):
    program: str | None
    version_id: str | None
    count: int
    succeeded: int
    failed: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    total_tokens: int
    cost_usd: float | None


# -- datasets ----------------------------------------------------------------------------------------------


class DatasetUpload(_Strict):
    name: Name
    records: list[JsonObject] = Field(min_length=1, max_length=100_000, description="The examples.")
    inputs: list[str] = Field(min_length=1, max_length=1000, description="The input field names.")
    labels: list[str] | None = Field(None, max_length=1000, description="Default: every other field.")
    split: str | dict[str, float] | None = Field(
        None,
        description="Fractions such as {train: 0.8, dev: 0.2}, or the field naming each example's split.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    description: str = Field("", max_length=10_000)


class DatasetVersionOut(BaseModel):
    id: str
    dataset: str
    input_fields: list[str]
    label_fields: list[str]
    splits: JsonObject
    example_count: int
    stats: JsonObject
    created_at: str


class ExampleOut(BaseModel):
    position: int
    split: str | None
    data: JsonObject


class DatasetOut(BaseModel):
    name: str
    description: str
    created_at: str
    updated_at: str
    version_count: int
    latest: DatasetVersionOut | None
    version_ids: list[str] | None = None


# -- optimizations and jobs --------------------------------------------------------------------------------


OptimizerOption = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_]{0,63}$")]


class OptimizationStart(_Strict):
    program: Name
    dataset: str = Field(min_length=1, max_length=300, description="A dataset name, or name@version.")
    space: JsonObject | None = Field(
        None,
        description="The space document: {variables: ..., bindings: ...} as `dspex optimize --space` reads. "
        "Required for the variable search; not with `optimizer`.",
    )
    n_trials: int | None = Field(None, ge=1, le=10_000, description="The variable search's trials.")
    optimizer: (
        Literal["miprov2", "gepa", "simba", "copro", "bootstrap", "bootstrap_rs", "ensemble"] | None
    ) = Field(None, description="Run this DSPy optimizer instead of the variable search.")
    options: dict[OptimizerOption, int | float | bool | str | None] | None = Field(
        None,
        max_length=40,
        description="The optimizer's own options as plain values (counts, temperatures, flags, fixed "
        "choices); an unknown name is a 422 listing the valid ones.",
        examples=[{"auto": "light", "num_threads": 4}],
    )
    prompt_model: str | None = Field(
        None, max_length=200, description="A configured model proposing instructions or reflecting."
    )
    split: str | None = Field(None, min_length=1, max_length=64)
    metric: Literal["exact_match", "f1"] = "exact_match"
    objectives: list[Literal["quality", "cost", "latency"]] = Field(default=["quality"], min_length=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    version: str | None = Field(None, max_length=64)
    max_lm_calls: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="The variable search starts no trial past this many LM calls; a DSPy optimizer is "
        "stopped at it (a hard cap over all the job's attempts) and the best candidate so far is kept.",
    )
    parallel: int | None = Field(
        None,
        ge=1,
        le=MAX_PARALLEL,
        description="The variable search's trials evaluated at once by the worker that runs it (default 1); "
        "where they run is the worker's pool or the server's routing rules, never the request's.",
    )
    drivers: int | None = Field(
        None,
        ge=1,
        le=MAX_DRIVERS,
        description="Worker processes driving the variable search (default 1): the job that owns the run, "
        "and drivers - 1 more jobs any worker may claim, which add their trials to it.",
    )


class JobOut(BaseModel):
    id: str
    kind: str
    payload: JsonObject
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    priority: int
    attempts: int
    max_attempts: int
    run_after: str | None
    lease_owner: str | None
    lease_expires_at: str | None
    heartbeat_at: str | None
    cancel_requested: bool
    progress: JsonObject | None
    result: JsonObject | None
    error: JsonObject | None
    created_by: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class OptimizationStarted(BaseModel):
    optimization_id: str
    job: JobOut


class TrialOut(BaseModel):
    number: int
    state: Literal["running", "complete", "pruned", "failed"]
    configuration: JsonObject | None
    configuration_id: str | None
    scores: dict[str, float] | None
    intermediate: dict[str, float]
    lm_calls: int
    cost_usd: float | None
    duration_s: float | None
    error: str | None


class OptimizationDetailOut(BaseModel):
    id: str
    program: str | None
    status: str = Field(description="queued (no worker took it yet), running, succeeded, failed, cancelled.")
    objectives: list[str]
    budget: JsonObject | None
    best: JsonObject | None
    pareto: list[JsonObject] | None
    result_version_id: str | None
    error: str | None
    created_at: str | None
    updated_at: str | None
    job: JobOut | None
    trials: list[TrialOut]


# -- operations --------------------------------------------------------------------------------------------


class PoolWorkerOut(BaseModel):
    name: str
    pid: int | None
    state: Literal["starting", "idle", "busy", "stopping", "dead"]
    rss_mb: float | None = Field(description="Resident memory, measured by the worker itself.")
    tasks: int = Field(description="Tasks done by the current process of this slot.")
    age_s: float
    heartbeat_age_s: float | None


class PoolOut(BaseModel):
    name: str
    size: int
    healthy: bool = Field(description="Every worker is idle or busy (none starting, stopping or dead).")
    queued: int
    completed: int
    failed: int
    replaced: dict[str, int] = Field(
        description="Workers replaced, by reason: died, hung, memory_limit, task_timeout, max_rss, "
        "max_tasks, ttl, start_failed, error."
    )
    last_error: str | None
    workers: list[PoolWorkerOut]


class BreakerOut(BaseModel):
    endpoint: str = Field(description="The model and its base URL.")
    state: Literal["closed", "open", "half_open"]
    calls: int = Field(description="Calls in the breaker's window.")
    failures: int
    failure_rate: float | None
    opened_at: float | None = Field(None, description="When it last opened (Unix seconds).")
    retry_after: float | None = Field(None, description="Seconds until an open breaker lets a probe through.")
    opens: int = Field(0, description="Times it opened.")


class LMStatusOut(BaseModel):
    enabled: bool = Field(description="Whether run LMs go through the resilience layer.")
    shared: bool = Field(description="Whether breakers and limits are shared through Redis.")
    breakers: list[BreakerOut]
    limits: list[dict[str, Any]] = Field(description="Per model: its limits and what was used of them.")
    budgets: dict[str, dict[str, Any]] = Field(description="Per model: calls and retries in the last minute.")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
    queue: dict[str, int] = Field(description="Jobs per status.")
    queue_depth: int = Field(description="Queued jobs.")
    workers: list[str] = Field(description="Workers with a running job and a fresh heartbeat.")
    pools: list[PoolOut] = Field(
        default_factory=list, description="The worker pools this server process has started."
    )
    lms: LMStatusOut | None = Field(
        None, description="Circuit breakers, rate limits and retry budgets of the LM endpoints called."
    )


class AuditEventOut(BaseModel):
    id: str
    at: str = Field(description="When, ISO 8601 UTC.")
    actor: str = Field(description="`key:<id>` for an API key, `local` for the CLI or Python.")
    action: Literal["register", "replace", "promote", "rollback"]
    program: str | None
    before_version: str | None = Field(description="The production version before the change.")
    after_version: str | None = Field(description="The version the change registered, promoted or restored.")
    detail: dict[str, Any] | None


# -- signals -----------------------------------------------------------------------------------------------


class SignalWhereOut(BaseModel):
    program: str | None
    version: str | None
    model: str | None
    config: str | None = Field(description="The variable configuration: 12 hex digits of its content hash.")
    dimension: Literal["program", "version", "model", "config"]


class SignalGroupOut(BaseModel):
    where: SignalWhereOut
    label: str
    runs: int = Field(description="Ended runs in the window.")
    succeeded: int
    failed: int = Field(description="Failed and abandoned runs.")
    cancelled: int
    success_rate: float | None = Field(
        description="succeeded / (succeeded + failed), abandoned runs counted as failed; cancelled left out."
    )
    p50_ms: float | None = Field(description="Of successful runs.")
    p95_ms: float | None
    tokens_per_run: float | None
    cost_per_run: float | None
    cost_usd: float | None
    quality: float | None = Field(description="Mean feedback score (0..1) in the window.")
    ratings: int = Field(description="Feedback scores in the window.")
    trends: dict[str, Literal["improving", "degrading", "unstable", "stable", "unknown"]]
    anomalies: list[str] = Field(description="Anomalies firing now.")
    first_at: str | None
    last_at: str | None


class SignalAnomalyCountOut(BaseModel):
    program: str | None
    dimension: str
    kind: str
    count: int


class SignalReportOut(BaseModel):
    at: str
    window_s: float
    window_runs: int
    groups: list[SignalGroupOut]
    anomalies: list[SignalAnomalyCountOut] = Field(description="Anomalies counted since the monitor started.")
