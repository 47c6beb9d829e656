"""DSPex settings: one explicit object, read from arguments, the project file and the environment.

Precedence, highest first: explicit argument > project file (``dspex.toml`` in the working directory)
> environment (``DSPEX_*``) > default. ::

    settings = Settings.load(lm="openai/gpt-4o-mini")   # explicit wins over dspex.toml and DSPEX_LM
    settings.home                                        # Path(".dspex") unless configured

A project file is TOML with the same keys as the fields below::

    lm = "openai/gpt-4o-mini"
    temperature = 0.2
    [tools]                                   # what specs from the API may name (by name only)
    search = "myapp.tools:search"
    [models.fast]                             # a model specs from the API may name
    model = "openai/gpt-4o-mini"
    api_base = "http://vllm.internal:8000/v1"
    api_key_env = "VLLM_KEY"
    [pools.general]                           # a pool of worker processes (dspex.pools)
    size = 2
    max_rss_mb = 1024
    [telemetry]                               # OpenTelemetry export of runs (dspex.telemetry.otel)
    endpoint = "http://127.0.0.1:6006"        # OTLP/HTTP base URL; else OTEL_EXPORTER_OTLP_ENDPOINT
    headers = { authorization = "OTLP_AUTH" } # header -> the environment variable holding its value
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspex.errors import ConfigurationError, did_you_mean

__all__ = [
    "PROJECT_FILE",
    "BreakerSetting",
    "ModelResilienceSetting",
    "ModelSetting",
    "PoolSetting",
    "ProgramResilienceSetting",
    "ResilienceSetting",
    "RoutingSetting",
    "Settings",
    "TelemetrySetting",
]

PROJECT_FILE = "dspex.toml"


class ModelSetting(pydantic.BaseModel):
    """One ``[models.NAME]`` entry: a model specs may name, with its endpoint and key (security area)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The provider model, e.g. openai/gpt-4o-mini.")
    api_base: str | None = Field(None, description="Its base URL (None: the provider's).")
    api_key: SecretStr | None = Field(None, description="Its key (prefer api_key_env).")
    api_key_env: str | None = Field(None, description="The environment variable holding its key.")


class PoolSetting(pydantic.BaseModel):
    """One ``[pools.NAME]`` entry: a pool of worker processes (see :mod:`dspex.pools`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    # -- Ray (issue 17): backend = "ray" makes the workers Ray actors (dspex.pools.ray_pool) --
    backend: Literal["process", "ray"] = Field(
        "process", description="Worker processes on this machine, or Ray actors (the ray extra)."
    )
    actor_cpus: float = Field(
        1.0, ge=0, le=64, description="CPUs Ray reserves for each actor (backend = 'ray'; 0.5: two per core)."
    )
    size: int = Field(0, ge=0, le=256, description="Worker processes (0: one per core).")
    max_rss_mb: int | None = Field(
        None,
        ge=64,
        description="A worker over this resident memory (or about to be, at its last task's growth) is "
        "recycled between tasks.",
    )
    kill_rss_mb: int | None = Field(
        None,
        ge=64,
        description="A task that takes its worker over this is killed with it (memory_limit); "
        "default 1.5 x max_rss_mb.",
    )
    max_tasks: int | None = Field(None, ge=1, description="Tasks a worker runs before it is recycled.")
    ttl_s: float | None = Field(None, gt=0, description="Seconds a worker lives before it is recycled.")
    task_timeout_s: float | None = Field(
        None, gt=0, description="A task running longer has its worker killed and replaced."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the workers.")
    start_method: Literal["forkserver", "spawn", "fork"] = Field(
        "forkserver", description="How workers start (multiprocessing start methods)."
    )
    initializer: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="'package.module:function' each worker calls once at start-up (operator code).",
    )
    heartbeat_s: float = Field(0.5, gt=0, le=60, description="How often a worker reports that it lives.")
    hung_after_s: float = Field(
        30.0, gt=0, description="A worker silent this long is hung: killed and replaced."
    )
    concurrency: int = Field(
        64,
        ge=1,
        le=256,
        description="Tasks a worker runs at once, each on a thread of its own: a run waiting on its LM "
        "leaves the process free for others, as inline runs on threads do. 1 runs one task at a time "
        "(then a task's memory is its own, for max_rss_mb and kill_rss_mb).",
    )
    prefetch: int = Field(
        2,
        ge=1,
        le=64,
        description="Tasks a worker holds at once beyond those it runs: the next ones wait in its pipe "
        "(prefetch - 1 of them). More keeps workers busy while the pool's process is slow to answer them "
        "(a loaded machine); fewer keeps a long task from holding others back on its worker.",
    )
    coalesce: int = Field(
        8,
        ge=1,
        le=256,
        description="With concurrency = 1 (a process pool): while runs wait in the queue, up to this many "
        "go to a worker as one message, run one after the other, and answer together: one message and "
        "one wake-up each way for the group, for runs that only compute. Each worker takes at most its "
        "share of the queue. 1: never. A Ray pool ignores it.",
    )


class RoutingSetting(pydantic.BaseModel):
    """The ``[routing]`` table: where runs of registered programs execute when the caller names no pool
    (see :mod:`dspex.runtime.router`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    default: str = Field("inline", description="'inline', or a pool for every program no rule names.")
    programs: dict[str, str] = Field(default_factory=dict, description="Program name -> 'inline' or a pool.")
    modules: dict[str, str] = Field(
        default_factory=dict,
        description="Catalog module name (program_of_thought, react...) found in a program -> 'inline' or a pool.",
    )
    spill_queue: int = Field(
        64, ge=0, description="A pool with more queued tasks than this spills the run to spill_to."
    )
    spill_to: str = Field(
        "inline", description="Where a saturated or unhealthy pool's runs go: 'inline' or a pool."
    )


FallbackCause = Literal["rate_limit", "server", "timeout", "transport", "unexpected", "breaker_open", "parse"]
FALLBACK_CAUSES: tuple[str, ...] = (
    "rate_limit",
    "server",
    "timeout",
    "transport",
    "unexpected",
    "breaker_open",
    "parse",
)


class BreakerSetting(pydantic.BaseModel):
    """A circuit breaker per model endpoint (``[resilience.breaker]``, or per model)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Open when this share of the window's calls failed (and min_calls)."
    )
    min_calls: int = Field(10, ge=1, description="Calls the window must hold before the rate counts.")
    window_s: float = Field(30.0, gt=0, description="Seconds of calls the failure rate is taken over.")
    cooldown_s: float = Field(30.0, gt=0, description="Seconds an open breaker fails fast before a probe.")
    probes: int = Field(1, ge=1, description="Calls let through at once while half-open.")


class ModelResilienceSetting(pydantic.BaseModel):
    """``[resilience.models.NAME]``: limits, fallbacks and overrides for one model, named by its configured
    name or its provider model string (``"openai/gpt-4o-mini"``)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="Requests per minute to this model.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute to this model (prompt + completion).")
    max_concurrent: int | None = Field(None, ge=1, description="Calls to this model in flight at once.")
    fallbacks: list[str] = Field(
        default_factory=list, description="Configured models to try, in order, when this one fails."
    )
    retries: int | None = Field(None, ge=0, description="Retries of a retryable error (else [resilience]).")
    breaker: BreakerSetting | None = Field(
        None, description="This model's breaker (else [resilience.breaker])."
    )


class ProgramResilienceSetting(pydantic.BaseModel):
    """``[resilience.programs.NAME]``: a registered program's own fallback chain and limits (on top of
    its models' limits, over all its runs whatever model serves them)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="LM requests per minute of this program's runs.")
    tpm: int | None = Field(None, ge=1, description="LM tokens per minute of this program's runs.")
    max_concurrent: int | None = Field(None, ge=1, description="LM calls of this program in flight at once.")

    fallbacks: list[str] = Field(
        default_factory=list, description="Configured models to try, in order, after the program's LM."
    )


class ResilienceSetting(pydantic.BaseModel):
    """The ``[resilience]`` table: rate limits, breakers, retries and fallbacks for every LM call
    (see :mod:`dspex.lm.resilient`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Wrap run LMs in the resilience layer (off: DSPy's own retries).")
    redis_prefix: str = Field(
        "dspex",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of the Redis keys of limits and breakers (deployments sharing one Redis differ).",
    )
    retries: int | None = Field(
        None, ge=0, le=20, description="Retries of a retryable LM error per model (None: num_retries)."
    )
    backoff_base_s: float = Field(0.5, gt=0, description="First backoff; doubles per retry, with jitter.")
    backoff_max_s: float = Field(20.0, gt=0, description="Longest backoff between two attempts.")
    max_retry_after_s: float = Field(
        60.0, gt=0, description="A Retry-After longer than this goes to the next fallback instead of waiting."
    )
    retry_budget: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Retries allowed per model as a share of its calls over the last minute...",
    )
    retry_budget_min: int = Field(
        10, ge=0, description="...plus this many per minute, so a quiet model can still retry."
    )
    breaker: BreakerSetting = Field(
        default_factory=lambda: BreakerSetting.model_validate({}), description="Default breaker per endpoint."
    )
    fallback_on: list[FallbackCause] = Field(
        default_factory=lambda: list(FALLBACK_CAUSES),  # type: ignore[arg-type]  # the same literals
        description="Failures that move a call to the next model of its chain.",
    )
    models: dict[str, ModelResilienceSetting] = Field(
        default_factory=dict, description="Per model: rpm, tpm, max_concurrent, fallbacks, retries, breaker."
    )
    programs: dict[str, ProgramResilienceSetting] = Field(
        default_factory=dict, description="Per registered program: its fallback chain."
    )


class TelemetrySetting(pydantic.BaseModel):
    """The ``[telemetry]`` table: OpenTelemetry export of every run (see :mod:`dspex.telemetry.otel`).

    Export is on when ``enabled`` is true, or when it is left unset and an endpoint is known: ``endpoint``
    here, else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``. ``OTEL_SDK_DISABLED=true``
    turns it off whatever this says.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(
        None, description="Export runs (None: when an endpoint is set here or in OTEL_EXPORTER_OTLP_*)."
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OTLP/HTTP base URL (traces go to <endpoint>/v1/traces), e.g. http://127.0.0.1:4318.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Header name -> the environment variable holding its value (never the value itself).",
    )
    service_name: str = Field("dspex", min_length=1, description="The service.name resource attribute.")
    capture_messages: bool = Field(
        False, description="Put LM messages and completions, tool arguments and results on the spans."
    )
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces exported (a caller's traceparent decides its own).",
    )


class Settings(BaseSettings):
    """Process settings. Build with :meth:`Settings.load`; instances are immutable."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_", extra="forbid", frozen=True)

    home: Path = Field(Path(".dspex"), description="Project state directory (database, caches).")
    lm: str | None = Field(None, description="Default LM as provider/model, e.g. openai/gpt-4o-mini.")
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible or provider endpoint.")
    api_key: SecretStr | None = Field(None, description="API key; else the provider's own variable.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default sampling temperature.")
    max_tokens: int | None = Field(None, gt=0, description="Default completion token limit.")
    num_retries: int = Field(3, ge=0, description="DSPy's retries of retryable LM errors.")
    timeout: float | None = Field(None, gt=0, description="Per-request LM timeout in seconds.")
    lm_cache: bool = Field(True, description="DSPy's request cache for LM calls.")
    retention_days: float | None = Field(
        None, gt=0, description="Prune executions older than this many days (None: keep forever)."
    )
    retention_per_program: int | None = Field(
        None, ge=0, description="Keep at most this many executions per program (None: no limit)."
    )
    retention_traces_only: bool = Field(
        False, description="Retention drops the trace payload and keeps the summary row."
    )
    signals: dict[str, float] = Field(
        default_factory=dict,
        description="[signals]: the live signals' window and detector thresholds by name (window_s, "
        "latency_z, error_z, quality_min_drop, cost_h...; dspex.telemetry.signals.Thresholds).",
    )
    trace: Literal["full", "lean", "off"] = Field(
        "lean",
        description="The span tree each run records: lean (modules, LM calls with messages, model, "
        "tokens and cost, tools), full (lean plus the adapter's format/parse spans) or off (no spans; "
        "status, inputs, outputs, usage and cost are still recorded).",
    )
    database_url: str | None = Field(
        None, description="Where runs are recorded; default sqlite:///<home>/dspex.db."
    )
    # -- security: what a spec received over the API may name (tools, models) ----------------------------
    tools: dict[str, str] = Field(
        default_factory=dict,
        description="Operator-registered callables by name, name = 'package.module:function': agent tools, "
        "reward functions, space constraints and derived values. Imported at server/worker start.",
    )
    models: dict[str, ModelSetting] = Field(
        default_factory=dict,
        description="Models a spec may name ([models.NAME] with model, api_base, api_key_env); the default "
        "lm/api_base/api_key is one more, named by its model string.",
    )
    # -- records: durability, recorder leases, input size (issue 10, sec-records) --
    pools: dict[str, PoolSetting] = Field(
        default_factory=dict,
        description="Worker pools by name ([pools.NAME] tables); a 'general' pool exists by default.",
    )
    routing: RoutingSetting = Field(
        default_factory=lambda: RoutingSetting.model_validate({}),
        description="Where runs execute by default ([routing] table).",
    )
    resilience: ResilienceSetting = Field(
        default_factory=lambda: ResilienceSetting.model_validate({}),
        description="Rate limits, circuit breakers, retries and fallbacks of LM calls ([resilience] table).",
    )
    telemetry: TelemetrySetting = Field(
        default_factory=lambda: TelemetrySetting.model_validate({}),
        description="OpenTelemetry export of runs ([telemetry] table).",
    )
    ray_address: str | None = Field(
        None,
        description="The Ray cluster of pools with backend = 'ray' (DSPEX_RAY_ADDRESS, e.g. ray://head:10001 "
        "or auto); unset: the one this process joined, else a local one started on first use.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by every process for rate limits and breaker states (DSPEX_REDIS_URL); "
        "without it each process keeps its own.",
    )
    session_ttl_s: float = Field(
        86_400.0, gt=0, description="A session idle this long (seconds) expires, unless created with its own."
    )
    session_lease_s: float = Field(
        600.0,
        gt=0,
        description="How long a turn holds its session against other processes (a dead one's lapses).",
    )
    session_wait_s: float = Field(
        60.0, ge=0, description="How long a turn waits for its session's previous turn before giving up."
    )
    durability: Literal["async", "sync"] = Field(
        "async",
        description="When a run's terminal record is written: 'async' behind the call (fastest; a "
        "kill right after the answer can leave it abandoned), 'sync' committed before the result "
        "is returned. A program's own setting and a run's argument override it.",
    )
    recorder_lease_s: float = Field(
        60.0,
        ge=1.0,
        description="Lease of a recording process, renewed every third of it; running records of a "
        "recorder whose lease expired are marked abandoned.",
    )
    max_input_bytes: int = Field(
        4_000_000, ge=1, description="Largest JSON-encoded inputs of one run; larger runs fail validation."
    )

    # -- HTTP limits: request bodies and the JSON documents they carry ------------------------------------
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body the service reads (413 beyond it)."
    )
    max_spec_depth: int = Field(
        32, ge=2, le=500, description="Deepest nesting of a program spec or space document sent to the API."
    )
    max_spec_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest program spec or space document sent to the API (as JSON)."
    )

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'dspex.db'}"

    @pydantic.field_validator("signals")
    @classmethod
    def _known_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        from dspex.telemetry.signals import Thresholds

        fields = Thresholds.__dataclass_fields__
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown signal threshold(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
            )
        typed: dict[str, float] = {}
        for name, number in value.items():
            if fields[name].type in (int, "int"):  # counts: whole numbers
                if not float(number).is_integer():
                    raise ValueError(f"signal threshold {name} is a whole number, got {number!r}")
                typed[name] = int(number)
            else:
                typed[name] = number
        try:
            Thresholds(**typed)  # type: ignore[arg-type]  # each a finite number > 0
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from exc
        return typed

    @classmethod
    def load(cls, project_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Settings from explicit overrides, the project file and ``DSPEX_*`` variables.

        ``project_file`` defaults to ``dspex.toml`` in the working directory; a missing default file is
        fine, a missing explicit one is an error.
        """
        path = Path(project_file) if project_file is not None else Path(PROJECT_FILE)
        values: dict[str, Any] = {}
        if path.exists():
            values = _read_project_file(path)
        elif project_file is not None:
            raise ConfigurationError(f"project file {str(path)!r} does not exist; create it or drop the path")
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise ConfigurationError(did_you_mean(unknown[0], cls.model_fields, what="setting"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except pydantic.ValidationError as exc:
            raise ConfigurationError(_describe(exc, source=str(path) if path.exists() else None)) from None


def _read_project_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigurationError(
            f"{path}: " + did_you_mean(unknown[0], Settings.model_fields, what="setting")
        )
    return data


def _describe(exc: pydantic.ValidationError, *, source: str | None) -> str:
    problems = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        # A table entry ([pools.general] size) has no DSPEX_ variable of its own; a top-level key does.
        hint = f" (DSPEX_{name.upper()})" if len(err["loc"]) == 1 else ""
        problems.append(f"{name}{hint}: {err['msg']}, got {err.get('input')!r}")
    where = f" (explicit arguments, {source}, or the environment)" if source else ""
    return "invalid settings" + where + ": " + "; ".join(problems)
