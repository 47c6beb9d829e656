"""Adaptive programs of a registered program: start one, add arms, serve runs, watch it, freeze or stop it.

Scopes: reading (``GET``) needs ``programs:read``; serving a run needs ``runs:execute``; starting one,
adding arms, freezing, unfreezing, stopping and resuming change what production serves and need
``programs:promote``; a body asking for re-optimization also needs ``optimize`` (it queues jobs). The key
must be allowed the program in the path, and an adaptive program is only found under its own program.

Everything in a body is data: arms are variable values checked against the adaptive program's space; the
space document is checked like an optimization's (registered functions, configured models only); a
reward ``metric`` names a function the operator registered (never an import path); LMs come from the
server's settings, never from the request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from dspex.server.app import checked_document, dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import ApiError, JSONResponse, not_found
from dspex.server.models import JsonObject, Name, _Strict
from dspex.server.routes._common import errors, program_or_404
from dspex.server.routes.programs import ProgramName
from dspex.server.routes.runs import result_json
from dspex.telemetry.context import continue_trace

if TYPE_CHECKING:
    from dspex.adapt.program import AdaptiveProgram
    from dspex.runtime.app import App

router = APIRouter(prefix="/v1/programs", tags=["adaptive"])

_read = require("programs:read", program_param="name")
_execute = require("runs:execute", program_param="name")
_manage = require("programs:promote", program_param="name")
AdaptiveName = Annotated[str, Path(max_length=200, description="The adaptive program's name.")]


class AdaptiveStart(_Strict):
    name: Name = Field(description="The adaptive program's name (new: started; existing: arms added).")
    space: JsonObject | None = Field(
        None, description="The space document (variables and bindings) the arms are configurations of."
    )
    arms: list[JsonObject] = Field(
        default_factory=list, max_length=50, description="Configurations (variable values) to serve."
    )
    from_optimization: str | None = Field(
        None, max_length=200, description="Take arms from this optimization's Pareto front and top trials."
    )
    top: int = Field(3, ge=1, le=50, description="How many configurations to take from the optimization.")
    sample: int = Field(0, ge=0, le=50, description="Draw this many arms from the space.")
    seed: int = 0
    policy: JsonObject | None = Field(None, description="Policy settings (dspex.adapt.PolicyConfig).")
    reward: JsonObject | None = Field(None, description="Reward weights and scales (dspex.adapt.Reward).")
    metric: str | None = Field(
        None, max_length=200, description="A registered function scoring outputs in [0, 1]; else feedback."
    )
    features: list[str | JsonObject] = Field(default_factory=list, max_length=8)
    reoptimize: JsonObject | None = Field(None, description="Re-optimization rule (dspex.adapt.Reoptimize).")
    version: str | None = Field(
        None, max_length=64, description="Pin a program version (default: production)."
    )


class AdaptiveRun(_Strict):
    inputs: JsonObject = Field(description="The program's input fields.")
    timeout: float | None = Field(None, gt=0, le=86_400)


class AdaptiveFreeze(_Strict):
    arm: str | None = Field(None, max_length=64, description="The arm (id or prefix); default: the best now.")


class AdaptiveArmOut(BaseModel):
    arm: str
    configuration: JsonObject
    source: str
    status: Literal["active", "retired"]
    retired_reason: str | None
    added_at: str
    retired_at: str | None
    posterior_mean: float | None = Field(description="Posterior mean reward (null before any reward).")
    interval: list[float] = Field(description="A central 95% interval of the posterior.")
    effective_n: float = Field(description="Rewards weighed by the discount.")
    served: int
    rewarded: int
    mean_reward: float | None
    error_rate: float | None
    resets: int = Field(description="How often the change detector reset the arm.")
    share: float = Field(description="Share of all runs served by the arm.")
    reasons: dict[str, int] = Field(
        description="Runs served per reason: exploit, explore, guardrail, frozen."
    )
    best: bool


class AdaptiveOut(BaseModel):
    name: str
    program: str
    version_id: str | None
    status: Literal["active", "frozen", "stopped"]
    frozen_arm: str | None
    policy: JsonObject
    reward: JsonObject
    features: list[JsonObject]
    reoptimize: JsonObject | None
    runs: int
    explore_share: float
    best_arm: str | None
    arms: list[AdaptiveArmOut]
    reward_over_time: list[JsonObject] = Field(description="Mean reward per bucket of consecutive runs.")
    events: list[JsonObject] = Field(
        description="Recent resets, retirements, re-optimizations, status changes."
    )


class AdaptiveListed(BaseModel):
    name: str
    status: Literal["active", "frozen", "stopped"]
    frozen_arm: str | None
    created_at: str


class AdaptiveRunOut(BaseModel):
    execution_id: str
    outputs: JsonObject
    duration_ms: float
    usage: JsonObject
    cost_usd: float | None
    cache_hit: bool
    trace_id: str | None = None
    arm: str
    reason: Literal["exploit", "explore", "guardrail", "frozen"]


def _adaptive(app: App, program: str, name: str) -> AdaptiveProgram:
    """The adaptive program ``name`` of ``program`` (404 when unknown or another program's)."""
    from dspex.store.adapt import UnknownAdaptive

    try:
        adaptive = app.adapt.get(name)
    except UnknownAdaptive:
        raise not_found(f"no adaptive program {name!r} of program {program!r}") from None
    if adaptive.record.program != program:
        raise not_found(f"no adaptive program {name!r} of program {program!r}")
    return adaptive


def _check_metric(app: App, metric: str | None) -> None:
    if metric is not None and (":" in metric or metric not in app.tools):
        raise ApiError(
            422,
            "configuration_error",
            f"unknown reward metric {metric!r}; name a function the operator registered "
            f"({', '.join(app.tools.names()) or 'none registered'})",
            field="metric",
        )


@router.post(
    "/{name}/adaptive",
    status_code=201,
    response_model=AdaptiveOut,
    responses=errors(401, 403, 404, 422),
    summary="Start an adaptive program",
)
async def start(
    name: ProgramName, body: AdaptiveStart, request: Request, principal: Principal = Depends(_manage)
) -> JSONResponse:
    """Start adaptive program ``body.name`` serving program ``name`` from arms (explicit, from an
    optimization, or sampled from the space), or add arms to an existing one."""
    app = dspex_of(request)
    if body.reoptimize is not None and not principal.has("optimize"):
        raise ApiError(
            403, "forbidden", "re-optimization queues optimization jobs: the key needs scope 'optimize'"
        )
    if body.space is not None:
        checked_document(request, body.space, "space")
        app.spec_policy("untrusted").check_space_document(body.space)
    _check_metric(app, body.metric)

    def begin() -> tuple[AdaptiveProgram, bool]:
        program_or_404(app, name)
        existing = app.adapt.repository.find(body.name)
        if existing is not None and existing.program != name:
            raise ApiError(409, "conflict", f"adaptive program {body.name!r} serves another program")
        if body.from_optimization is not None:
            from dspex.errors import ConfigurationError

            try:
                optimization = app.optimizations.get(body.from_optimization)
            except ConfigurationError:
                raise not_found(f"no optimization {body.from_optimization!r}") from None
            if optimization.program != name:
                raise not_found(f"no optimization {body.from_optimization!r} of program {name!r}")
        if existing is None:
            adaptive = app.adapt(
                body.name, name, space=body.space, arms=body.arms, from_optimization=body.from_optimization,
                top=body.top, sample=body.sample, seed=body.seed, policy=body.policy, reward=body.reward,
                metric=body.metric, features=body.features, reoptimize=body.reoptimize, version_id=body.version,
            )  # fmt: skip
            return adaptive, True
        adaptive = app.adapt(
            body.name, name, arms=body.arms, from_optimization=body.from_optimization, top=body.top,
            sample=body.sample, seed=body.seed, space=body.space, policy=body.policy, reward=body.reward,
            reoptimize=body.reoptimize, features=body.features,
        )  # fmt: skip
        if existing.status == "stopped":
            adaptive.resume()
        return adaptive, False

    adaptive, created = await asyncio.to_thread(begin)
    status = await asyncio.to_thread(adaptive.status)
    return JSONResponse(status, status_code=201 if created else 200)


@router.get(
    "/{name}/adaptive",
    response_model=list[AdaptiveListed],
    responses=errors(401, 403, 404),
    summary="List adaptive programs",
)
async def list_adaptive(name: ProgramName, request: Request, _p: Principal = Depends(_read)) -> JSONResponse:
    """The adaptive programs serving program ``name``: name, status, frozen arm."""
    app = dspex_of(request)

    def listing() -> list[dict[str, Any]]:
        program_or_404(app, name)
        return [
            {
                "name": r.name,
                "status": r.status,
                "frozen_arm": r.frozen_arm,
                "created_at": r.created_at.isoformat(),
            }
            for r in app.adapt.list(name)
        ]

    return JSONResponse(await asyncio.to_thread(listing))


@router.get(
    "/{name}/adaptive/{adaptive}",
    response_model=AdaptiveOut,
    responses=errors(401, 403, 404),
    summary="Show an adaptive program",
)
async def show(
    name: ProgramName, adaptive: AdaptiveName, request: Request, _p: Principal = Depends(_read)
) -> JSONResponse:
    """Arms (configuration, status, traffic share, reasons, posterior mean and 95% interval, rewards),
    reward over time, recent events (resets, retirements, re-optimizations), settings."""
    app = dspex_of(request)
    found = await asyncio.to_thread(_adaptive, app, name, adaptive)
    return JSONResponse(await asyncio.to_thread(found.status))


@router.post(
    "/{name}/adaptive/{adaptive}/runs",
    response_model=AdaptiveRunOut,
    responses=errors(401, 403, 404, 422, 502, 503, 504),
    summary="Serve a run",
)
async def run(
    name: ProgramName,
    adaptive: AdaptiveName,
    body: AdaptiveRun,
    request: Request,
    _p: Principal = Depends(_execute),
) -> JSONResponse:
    """Serve one run from the arm the policy picks; the answer names the arm and why."""
    app = dspex_of(request)
    found = await asyncio.to_thread(_adaptive, app, name, adaptive)
    with continue_trace(request.headers.get("traceparent")):
        result, decision = await found.aserve(body.inputs, timeout=body.timeout)
    return JSONResponse({**result_json(result), "arm": decision.arm, "reason": decision.reason})


@router.post(
    "/{name}/adaptive/{adaptive}/{action}",
    response_model=AdaptiveOut,
    responses=errors(401, 403, 404, 422),
    summary="Freeze, unfreeze, stop",
)
async def act(
    name: ProgramName,
    adaptive: AdaptiveName,
    action: Literal["freeze", "unfreeze", "stop", "resume"],
    request: Request,
    body: AdaptiveFreeze | None = None,
    _p: Principal = Depends(_manage),
) -> JSONResponse:
    """``freeze`` serves every run from one arm (``arm``, default the best now); ``unfreeze`` lets the
    policy choose again; ``stop`` refuses runs; ``resume`` serves again."""
    app = dspex_of(request)

    def apply() -> dict[str, Any]:
        found = _adaptive(app, name, adaptive)
        if action == "freeze":
            found.freeze(body.arm if body is not None else None)
        elif action == "unfreeze":
            found.unfreeze()
        elif action == "stop":
            found.stop()
        else:
            found.resume()
        return found.status()

    return JSONResponse(await asyncio.to_thread(apply))
