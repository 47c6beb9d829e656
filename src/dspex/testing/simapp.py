"""The ASGI app of the simulated OpenAI-compatible LM server: its knobs, state, statistics and routes.

:mod:`dspex.testing.server` runs it (``SimServer``, ``dspex sim-lm serve``); this module only builds it.

It serves ``POST /v1/chat/completions`` (JSON or SSE streaming), ``GET /v1/models`` and ``GET /health``
for the models of :mod:`dspex.testing.simtask`, answering DSPy-formatted requests in the request's
adapter format with answers that are right or wrong per the model's quality profile. Knobs inject
latency, 429s with ``Retry-After``, 500s, timeouts and malformed output, per model too (a model that is
down, its own error rate); they can change at runtime (``POST /sim/config``, :meth:`SimServer.configure`)
and ``GET /sim/stats`` counts what happened::

    with SimServer(rate_limit_rate=0.1, retry_after=0.2) as sim:
        with dspy.context(lm=sim.lm("sim-medium", num_retries=3)):
            dspy.ChainOfThought("question -> answer")(question="What is the capital of Peru?")
        print(sim.stats().statuses)             # {200: 1} or {429: 1, 200: 1}

Starlette and uvicorn are imported when a server is built, never when this module is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from dspex.errors import ConfigurationError, did_you_mean
from dspex.testing._prompt import read_chat_messages, read_prompt
from dspex.testing.simtask import DEFAULT_PROFILES, ModelProfile, SimTask, answer_prompt

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ModelStats", "RequestRecord", "SimConfig", "SimStats", "State", "create_app"]

Failure = int | Literal["timeout", "malformed"]
Outcome = Literal["ok", "rate_limit", "error", "timeout", "malformed", "down"]

# No DSPy adapter parses this: no field markers, no JSON object, no XML tags.
MALFORMED_TEXT = "Sorry, I lost track of the requested format; here is my answer anyway: forty-two"
_MAX_HANG = 600.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The server's knobs. Rates are per-request probabilities drawn from ``seed``; together <= 1.

    ``fail_first`` makes the next requests fail deterministically, in order (HTTP status codes,
    ``"timeout"`` or ``"malformed"``) before the rates apply; setting it again re-arms it.
    429s carry ``Retry-After: retry_after``; other error statuses carry ``error_retry_after`` when set.
    Latency per request is ``profile.latency * latency_scale + latency + uniform(0, jitter)``.
    A timed-out request hangs ``timeout_seconds`` (wakes early when the server stops) then gets a 504.
    Malformed output is a 200 whose text no DSPy adapter parses.

    Per model: ``down_models`` answer every request with an immediate 503 (an endpoint that is down;
    ``error_retry_after`` applies), before ``fail_first`` and the draws; ``model_error_rates`` replaces
    ``error_rate`` (500s) for the models it names, e.g. ``{"sim-small": 0.5}``. A mixed fault storm is
    :meth:`storm`.

    >>> SimConfig(rate_limit_rate=0.1, retry_after=0.5).replace(fail_first=[429]).fail_first
    (429,)
    >>> SimConfig(down_models=["sim-small"]).down_models
    ('sim-small',)
    """

    latency: float = 0.0
    latency_scale: float = 1.0
    jitter: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    error_rate: float = 0.0
    error_retry_after: float | None = None
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    malformed_rate: float = 0.0
    fail_first: tuple[Failure, ...] = ()
    down_models: tuple[str, ...] = ()
    model_error_rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    stream_chunk_chars: int = 4
    stream_chunk_delay: float = 0.0
    task_size: int = 300
    task_seed: int = 0
    profiles: tuple[ModelProfile, ...] = field(default=tuple(DEFAULT_PROFILES.values()), repr=False)

    def __post_init__(self) -> None:
        rates = ("rate_limit_rate", "error_rate", "timeout_rate", "malformed_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if sum(getattr(self, name) for name in rates) > 1.0 + 1e-9:
            raise ConfigurationError(f"{', '.join(rates)} must add up to at most 1")
        for name in ("latency", "latency_scale", "jitter", "retry_after", "stream_chunk_delay"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.error_retry_after is not None and self.error_retry_after < 0:
            raise ConfigurationError(f"error_retry_after must be >= 0 or None, got {self.error_retry_after}")
        if not 0 <= self.timeout_seconds <= _MAX_HANG:
            raise ConfigurationError(
                f"timeout_seconds must be in [0, {_MAX_HANG:g}], got {self.timeout_seconds}"
            )
        if self.stream_chunk_chars < 1:
            raise ConfigurationError(f"stream_chunk_chars must be >= 1, got {self.stream_chunk_chars}")
        object.__setattr__(self, "fail_first", tuple(self.fail_first))
        for item in self.fail_first:
            ok = item in ("timeout", "malformed") or (isinstance(item, int) and 400 <= item <= 599)
            if not ok:
                raise ConfigurationError(
                    f"fail_first items must be HTTP error statuses (400-599), 'timeout' or 'malformed'; got {item!r}"
                )
        if not self.profiles:
            raise ConfigurationError("a simulated server needs at least one model profile")
        known = {p.name for p in self.profiles}
        if isinstance(self.down_models, str):  # one name, not its letters
            object.__setattr__(self, "down_models", (self.down_models,))
        object.__setattr__(self, "down_models", tuple(self.down_models))
        object.__setattr__(self, "model_error_rates", dict(self.model_error_rates))
        for model in (*self.down_models, *self.model_error_rates):
            if model not in known:
                raise ConfigurationError(did_you_mean(model, known, what="model"))
        others = sum(getattr(self, name) for name in rates if name != "error_rate")
        for model, rate in self.model_error_rates.items():
            if not 0.0 <= rate <= 1.0 or others + rate > 1.0 + 1e-9:
                raise ConfigurationError(
                    f"model_error_rates[{model!r}] must be a probability in [0, 1] that adds up to at most 1 "
                    f"with the other rates, got {rate}"
                )

    @classmethod
    def storm(cls, rate: float, **knobs: Any) -> SimConfig:
        """A mixed fault storm: ``rate`` of the requests fail, split evenly over 429 (with
        ``Retry-After``), 500, timeouts and malformed output; other knobs as keyword arguments.

        >>> SimConfig.storm(0.2, timeout_seconds=2).timeout_rate
        0.05
        """
        share = rate / 4
        return cls(
            **{
                "rate_limit_rate": share,
                "error_rate": share,
                "timeout_rate": share,
                "malformed_rate": share,
                **knobs,
            }
        )

    def error_rate_for(self, model: str) -> float:
        """The 500 rate of ``model``: its ``model_error_rates`` entry, else ``error_rate``."""
        return self.model_error_rates.get(model, self.error_rate)

    def replace(self, **knobs: Any) -> SimConfig:
        """A copy with some knobs changed; unknown knob names raise ``ConfigurationError``."""
        valid = {f.name for f in fields(self)}
        for name in knobs:
            if name not in valid:
                raise ConfigurationError(did_you_mean(name, valid, what="simulated server knob"))
        return replace(self, **knobs)

    def to_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values (profiles by name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "profiles"}
        out["fail_first"] = list(self.fail_first)
        out["down_models"] = list(self.down_models)
        out["model_error_rates"] = dict(self.model_error_rates)
        out["models"] = [p.name for p in self.profiles]
        return out


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Counts for one model name (as requested, known or not)."""

    requests: int = 0
    statuses: Mapping[int, int] = field(default_factory=dict)
    malformed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    graded: int = 0  # answers to task questions
    correct: int = 0


@dataclass(frozen=True, slots=True)
class SimStats:
    """What the server has seen since it started or was last reset."""

    total_requests: int
    statuses: Mapping[int, int]
    models: Mapping[str, ModelStats]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "models": {
                name: {**asdict(m), "statuses": {str(k): v for k, v in sorted(m.statuses.items())}}
                for name, m in sorted(self.models.items())
            },
        }


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One chat-completion request as the server read and answered it."""

    model: str
    status: int
    outcome: Outcome
    stream: bool
    temperature: float | None
    reasoning: bool
    demos: int
    format: str | None
    question: str | None
    correct: bool | None


@dataclass(slots=True)
class _Counts:
    """The mutable twin of :class:`ModelStats`, updated under the state's lock."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    malformed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    graded: int = 0
    correct: int = 0


class State:
    """Config, counters and the draw generator of one server; thread-safe (the handle mutates it)."""

    def __init__(self, config: SimConfig) -> None:
        self.lock = threading.Lock()
        self.closing: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.log: deque[RequestRecord] = deque(maxlen=1000)
        self.config = config
        self.task = SimTask.generate(config.task_size, config.task_seed)
        self.rng = random.Random(config.seed)
        self.pending: deque[Failure] = deque(config.fail_first)
        self.models: dict[str, _Counts] = {}

    @property
    def profiles(self) -> dict[str, ModelProfile]:
        return {p.name: p for p in self.config.profiles}

    def configure(self, **knobs: Any) -> SimConfig:
        with self.lock:
            new = self.config.replace(**knobs)
            if (new.task_size, new.task_seed) != (self.config.task_size, self.config.task_seed):
                self.task = SimTask.generate(new.task_size, new.task_seed)
            if "seed" in knobs:
                self.rng = random.Random(new.seed)
            if "fail_first" in knobs:
                self.pending = deque(new.fail_first)
            self.config = new
            return new

    def reset(self) -> None:
        with self.lock:
            self.models.clear()
            self.log.clear()
            self.rng = random.Random(self.config.seed)
            self.pending = deque(self.config.fail_first)

    def draw(self, model: str) -> tuple[Outcome, int, float]:
        """(outcome, HTTP status, jitter seconds) of the next request, for ``model``."""
        with self.lock:
            c = self.config
            if model in c.down_models:  # down: no draw, so the other models' draws stay as they were
                return "down", 503, 0.0
            jitter = self.rng.uniform(0.0, c.jitter) if c.jitter else 0.0
            if self.pending:
                item = self.pending.popleft()
                if item == "timeout":
                    return "timeout", 504, jitter
                if item == "malformed":
                    return "malformed", 200, jitter
                return ("rate_limit" if item == 429 else "error"), int(item), jitter
            u = self.rng.random()
            table: tuple[tuple[Outcome, float, int], ...] = (
                ("rate_limit", c.rate_limit_rate, 429),
                ("error", c.error_rate_for(model), 500),
                ("timeout", c.timeout_rate, 504),
                ("malformed", c.malformed_rate, 200),
            )
            for outcome, rate, status in table:
                if u < rate:
                    return outcome, status, jitter
                u -= rate
            return "ok", 200, jitter

    def record(self, rec: RequestRecord, *, input_tokens: int = 0, output_tokens: int = 0) -> None:
        profile = self.profiles.get(rec.model)
        with self.lock:
            self.log.append(rec)
            m = self.models.setdefault(rec.model, _Counts())
            m.requests += 1
            m.statuses[rec.status] = m.statuses.get(rec.status, 0) + 1
            m.malformed += rec.outcome == "malformed"
            m.input_tokens += input_tokens
            m.output_tokens += output_tokens
            m.cost_usd += profile.cost_usd(input_tokens, output_tokens) if profile else 0.0
            if rec.correct is not None:
                m.graded += 1
                m.correct += rec.correct

    def stats(self) -> SimStats:
        with self.lock:
            models = {
                name: ModelStats(**{**asdict(m), "statuses": dict(m.statuses)})
                for name, m in self.models.items()
            }
        statuses: dict[int, int] = {}
        for m in models.values():
            for status, n in m.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
        return SimStats(sum(m.requests for m in models.values()), statuses, models)

    async def hang(self, seconds: float) -> None:
        """Sleep, but wake as soon as the server starts shutting down."""
        if self.closing is None:  # pragma: no cover - the lifespan always sets it
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    def wake(self) -> None:
        """Wake every hanging request (thread-safe)."""
        if self.loop is not None and self.closing is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped in between
                self.loop.call_soon_threadsafe(self.closing.set)


# -- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    from starlette.responses import JSONResponse

    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def create_app(config: SimConfig | None = None, *, _state: State | None = None) -> Starlette:
    """The Starlette app of a simulated server (mount it or run it with any ASGI server).

    >>> app = create_app(SimConfig(latency_scale=0))      # uvicorn.run(app, port=8787)
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from dspex.testing.engine import estimate_tokens  # loads dspy.lm15: at startup, not import

    state = _state or State(config or SimConfig())
    counter = itertools.count(1)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        state.closing = asyncio.Event()
        yield
        state.closing.set()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "dspex-sim"} for name in state.profiles
        ]
        return JSONResponse({"object": "list", "data": data})

    async def get_config(request: Request) -> Response:
        return JSONResponse(state.config.to_dict())

    async def post_config(request: Request) -> Response:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict) or "profiles" in knobs:
                raise ConfigurationError("POST /sim/config takes a JSON object of knobs (profiles excluded)")
            return JSONResponse(state.configure(**knobs).to_dict())
        except (ValueError, TypeError, ConfigurationError) as exc:
            return _error(400, str(exc), "invalid_config")

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"status": "reset"})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats().to_dict())

    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
            model, messages = str(body["model"]), body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise TypeError("messages must be a list of objects")
            n = 1 if body.get("n") is None else int(body["n"])
            if not 1 <= n <= 16:
                raise ValueError(f"n must be between 1 and 16, got {n}")
            temperature = None if body.get("temperature") is None else float(body["temperature"])
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            limit = None if limit is None else int(limit)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"invalid chat completion body: {exc!s}", "invalid_body")
        stream = bool(body.get("stream"))
        profile = state.profiles.get(model.rsplit("/", 1)[-1])
        system, turns = read_chat_messages(messages)
        prompt = read_prompt(system, turns)
        reasoning = "reasoning" in prompt.output_names
        fmt = prompt.format if prompt.output_fields else None

        def rec(
            status: int, outcome: Outcome, question: str | None = None, ok: bool | None = None
        ) -> RequestRecord:
            return RequestRecord(
                model, status, outcome, stream, temperature, reasoning, prompt.demos, fmt, question, ok
            )

        if profile is None:
            state.record(rec(404, "error"))
            message = did_you_mean(model, state.profiles, what="model")
            return _error(404, f"The model {model!r} does not exist ({message})", "model_not_found")
        outcome, status, jitter = state.draw(profile.name)
        config = state.config
        if outcome == "down":  # a dead endpoint answers at once, whatever the model's latency
            state.record(rec(status, outcome))
            wait = config.error_retry_after
            headers = {} if wait is None else {"Retry-After": f"{wait:g}"}
            return _error(
                503, f"the model {profile.name!r} is unavailable (simulated)", "model_down", headers
            )
        await state.hang(profile.latency * config.latency_scale + config.latency + jitter)
        if outcome == "timeout":
            state.record(rec(status, outcome))
            await state.hang(config.timeout_seconds)
            return _error(504, "simulated timeout", "timeout")
        if outcome == "rate_limit":
            state.record(rec(status, outcome))
            message = "Rate limit reached (simulated); retry after the Retry-After delay."
            return _error(429, message, "rate_limit_exceeded", {"Retry-After": f"{config.retry_after:g}"})
        if outcome == "error":
            state.record(rec(status, outcome))
            wait = config.error_retry_after
            headers = {} if wait is None else {"Retry-After": f"{wait:g}"}
            return _error(status, f"simulated error {status}", "simulated_error", headers)

        answers = [
            answer_prompt(
                state.task, prompt, turns, profile, temperature=temperature, seed=config.seed, choice=k
            )
            for k in range(n)
        ]
        texts = [MALFORMED_TEXT if outcome == "malformed" else a.text for a in answers]
        finish = ["stop"] * len(texts)
        for k, text in enumerate(texts):
            if limit and estimate_tokens(text) > limit:
                texts[k], finish[k] = text[: limit * 4], "length"
        prompt_tokens = estimate_tokens(system + "".join(t for _, t in turns))
        completion_tokens = sum(estimate_tokens(t) for t in texts)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        first = answers[0]
        state.record(
            rec(200, outcome, first.question, None if outcome == "malformed" else first.correct),
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
        )
        ident, created = f"chatcmpl-sim-{next(counter)}", int(time.time())
        head = {"id": ident, "created": created, "model": profile.name, "system_fingerprint": "dspex-sim"}
        if not stream:
            choices = [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish[k],
                    "logprobs": None,
                }
                for k, text in enumerate(texts)
            ]
            return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage})

        options = body.get("stream_options") or {}
        size, delay = config.stream_chunk_chars, config.stream_chunk_delay

        async def events() -> AsyncIterator[bytes]:
            chunk = {**head, "object": "chat.completion.chunk"}
            for k, text in enumerate(texts):
                delta = {"role": "assistant", "content": ""}
                yield _sse({**chunk, "choices": [{"index": k, "delta": delta, "finish_reason": None}]})
                for i in range(0, len(text), size):
                    if delay:
                        await state.hang(delay)
                    piece = {"content": text[i : i + size]}
                    yield _sse({**chunk, "choices": [{"index": k, "delta": piece, "finish_reason": None}]})
                yield _sse({**chunk, "choices": [{"index": k, "delta": {}, "finish_reason": finish[k]}]})
            if options.get("include_usage"):
                yield _sse({**chunk, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/sim/config", get_config, methods=["GET"]),
        Route("/sim/config", post_config, methods=["POST"]),
        Route("/sim/reset", reset, methods=["POST"]),
        Route("/sim/stats", stats, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = state
    return app
