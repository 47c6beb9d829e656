"""An adaptive program: one registered program served from a set of arms, chosen by a shared bandit.

::

    adaptive = app.adapt("qa-live", program="qa", space=document, arms=[{"model": "openai/a"}, ...])
    result = adaptive.run({"question": "2 + 2?"})        # an arm chosen, run, recorded, rewarded
    app.feedback(result.execution_id, score=1.0)          # or later: the reward of that run's arm
    adaptive.status()["arms"]                             # shares, posteriors, rewards

Each run: (1) the policy state catches up with the shared log if it is older than ``refresh_s`` (new
events of other processes, feedback turned into rewards, arms added or retired, the status);
(2) the policy picks an arm (:mod:`dspex.adapt.policy`), or the frozen arm; (3) the program version,
configured with the arm's values (:func:`dspex.variables.apply`, cached per version and arm), runs
through the App like any run, its execution record carrying ``adaptation = {"adaptive", "arm",
"reason", "context", "policy"}`` and ``variables`` = the arm's configuration (so the telemetry signals
group runs by arm); (4) a ``serve`` event is appended with its latency, cost, failure and, with a metric,
its reward; it is applied to this process's state at once. Guardrails run at each catch-up; an arm
breaching one is retired in the store (every process stops serving it at its next catch-up).

Several processes serving one adaptive program share it through the store: they append to one log and
read each other's events, so no observation is lost and each process's posteriors converge to the same.
A process started later replays the log's last :attr:`PolicyConfig.horizon` rewards (older ones weigh
under 0.1%).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dspex.adapt.features import MAX_CONTEXTS, Feature, context_of
from dspex.adapt.policy import Decision, PolicyConfig, PolicyState
from dspex.adapt.reoptimize import Reoptimize, Reoptimizer
from dspex.adapt.reward import QualityMetric, Reward, check_quality
from dspex.errors import ConfigurationError, UserError
from dspex.store.adapt import AdaptiveRecord, AdaptiveRepository, ArmRecord, EventRecord
from dspex.variables.binding import Bindings, apply
from dspex.variables.configuration import Configuration
from dspex.variables.space import VariableSpace

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AdaptiveProgram", "Host", "arm_id"]

log = logging.getLogger("dspex.adapt")

_LAG_IDS = 512  # events re-read behind the newest seen: ids another process committed out of order
_FEEDBACK_LAG_S = 60.0  # feedback re-read behind the newest seen (commit order is not time order)


def arm_id(configuration: Configuration) -> str:
    """An arm's id: the first 16 hex digits of its configuration's content id."""
    return configuration.id[:16]


class Host(Protocol):
    """What an adaptive program needs from the App (the facade passes itself)."""

    @property
    def programs(self) -> Any: ...

    def space_lms(self, space: VariableSpace) -> dict[str, Any] | None: ...

    def _run_adaptive(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        *,
        program_name: str,
        version_id: str,
        variables: Mapping[str, Any],
        adaptation: Mapping[str, Any],
        lm: Any,
        durability: Any,
        timeout: float | None,
    ) -> Any: ...

    async def _arun_adaptive(
        self,
        program: Any,
        inputs: Mapping[str, Any] | None,
        *,
        program_name: str,
        version_id: str,
        variables: Mapping[str, Any],
        adaptation: Mapping[str, Any],
        lm: Any,
        durability: Any,
        timeout: float | None,
    ) -> Any: ...


class AdaptiveProgram:
    """One adaptive program in this process (module docstring). Thread-safe."""

    def __init__(
        self,
        host: Host,
        repository: AdaptiveRepository,
        record: AdaptiveRecord,
        space: VariableSpace,
        bindings: Bindings,
        *,
        metric: QualityMetric | None = None,
        lms: Mapping[str, Any] | None = None,
        refresh_s: float = 1.0,
    ) -> None:
        import numpy as np

        self.host = host
        self.repository = repository
        self.name = record.name
        self.record = record
        self.space = space
        self.bindings = bindings
        spec = record.spec
        self.reward = Reward.from_json(spec.get("reward", {}))
        self.config = PolicyConfig.from_json(spec.get("policy", {}))
        self.features = tuple(Feature.from_json(f) for f in spec.get("features", []))
        reopt = spec.get("reoptimize")
        self.reoptimize = Reoptimize.from_json(reopt) if reopt else None
        self.metric = metric
        if self.reward.metric is not None and metric is None:
            raise ConfigurationError(
                f"adaptive program {self.name!r} scores runs with metric {self.reward.metric!r}; "
                "pass the function it names (metric=...) or register it in the App's tools"
            )
        self.refresh_s = refresh_s
        self._lms = lms
        self._lock = threading.RLock()
        self._rng: np.random.Generator = np.random.default_rng(self.config.seed)
        self.state = PolicyState(self.config)
        self.arms: dict[str, ArmRecord] = {}
        self._configured: dict[tuple[str, str], Any] = {}
        self._version: tuple[Any, float] | None = None
        self._seen: dict[int, None] = {}
        self._last_id = 0
        self._synced_at = -1e9
        self._feedback_since: Any = None
        self._contexts: set[str] = set()
        self._reoptimizer = Reoptimizer(self) if self.reoptimize is not None else None
        self._load()

    # -- state ---------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Arms from the store, then the log's recent serves and rewards replayed in order."""
        with self._lock:
            self._refresh_arms()
            events = self.repository.recent_events(
                self.name, kinds=("serve", "reward"), limit=2 * self.config.horizon
            )
            for event in events:
                self._apply(event, live=False)
            self._last_id = max([e.id for e in events], default=0)
            self._synced_at = time.monotonic()

    def _refresh_arms(self) -> None:
        self.arms = {arm.arm: arm for arm in self.repository.arms(self.name)}
        for arm in self.arms:
            self.state.add_arm(arm)

    def _mark_seen(self, event_id: int) -> None:
        self._seen[event_id] = None
        self._last_id = max(self._last_id, event_id)
        while len(self._seen) > 4 * _LAG_IDS:
            self._seen.pop(next(iter(self._seen)))

    def _apply(self, event: EventRecord, *, live: bool) -> None:
        if event.id in self._seen:
            return
        self._mark_seen(event.id)
        if event.arm is None:
            return
        reset = False
        if event.kind == "serve":
            reset = self.state.observe_serve(
                event.arm,
                reason=event.reason,
                failed=bool(event.failed),
                reward=event.reward,
                quality=event.quality,
                context=event.context,
            )
        elif event.kind == "reward" and event.reward is not None:
            reset = self.state.observe_reward(
                event.arm, event.reward, quality=event.quality, context=event.context
            )
        if reset and live:
            log.info(
                "adaptive %r: change detected on arm %s; its statistics were reset", self.name, event.arm
            )
            self.repository.append(
                self.name,
                "reset",
                event.arm,
                key=f"reset:{event.arm}:{event.id}",
                detail={"after_event": event.id, "reason": "change detected (CUSUM)"},
            )

    def sync(self, *, force: bool = True) -> None:
        """Catch up with the shared log now (``force``) or when older than ``refresh_s``: feedback into
        rewards, other processes' events, arms, status, guardrails, re-optimization."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._synced_at < self.refresh_s:
                return
            self._synced_at = now
            self.record = self.repository.get(self.name)
            if self.reward.quality > 0 and self.reward.metric is None and self.metric is None:
                self._ingest_feedback()
            after = max(0, self._last_id - _LAG_IDS)
            while True:
                events = self.repository.events(self.name, after=after, limit=5000)
                if not events:
                    break
                for event in events:
                    if event.kind in ("arm", "retire"):
                        self._refresh_arms()
                    self._apply(event, live=True)
                after = events[-1].id
                if len(events) < 5000:
                    break
            self._refresh_arms()
            self._guardrails()
            if self._reoptimizer is not None and self.record.status == "active":
                self._reoptimizer.check()

    def _ingest_feedback(self) -> None:
        """Turn feedback scores on runs this program served into ``reward`` events (first score wins)."""
        import datetime as dt

        since = self._feedback_since
        found = self.repository.unrewarded_feedback(
            self.name, since=since - dt.timedelta(seconds=_FEEDBACK_LAG_S) if since is not None else None
        )
        for served, score, at in found:
            reward = self.reward.combine(score, served.cost_usd, served.latency_ms)
            if reward is None:
                continue
            self.repository.append(
                self.name,
                "reward",
                served.arm,
                execution_id=served.execution_id,
                context=served.context,
                reward=reward,
                quality=score,
                key=f"reward:{served.execution_id}",
            )
            if self._feedback_since is None or at > self._feedback_since:
                self._feedback_since = at

    def _guardrails(self) -> None:
        active = self.active_arms()
        for arm, reason in self.state.breaches(active):
            if self.repository.retire(self.name, arm, reason):
                log.warning("adaptive %r: arm %s retired: %s", self.name, arm, reason)
        self._refresh_arms()

    def active_arms(self) -> list[str]:
        return [a for a, record in self.arms.items() if record.status == "active"]

    # -- arms ----------------------------------------------------------------------------------------
    def validate(self, values: Mapping[str, Any]) -> Configuration:
        """``values`` checked against the program's variable space (defaults filled)."""
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"an arm is a mapping of variable values, got {type(values).__name__}")
        unknown = sorted(set(values) - set(self.space.names))
        if unknown:
            raise ConfigurationError(
                f"arm sets unknown variable(s) {unknown}; the space has {sorted(self.space.names)}"
            )
        return self.space.validate(values)

    def add_arms(self, arms: Sequence[Mapping[str, Any]], *, source: str = "explicit") -> list[str]:
        """Add configurations as arms (validated against the space); returns the ids of the new ones.
        Other processes see them at their next catch-up."""
        configurations = [self.validate(values) for values in arms]
        added = self.repository.add_arms(
            self.name, [(arm_id(c), c.to_json(), source) for c in configurations]
        )
        with self._lock:
            self._refresh_arms()
        return added

    def retire(self, arm: str, reason: str = "retired by hand") -> bool:
        """Retire ``arm`` (not the last active one); True when it was active."""
        self._arm(arm)
        done = self.repository.retire(self.name, arm, reason)
        with self._lock:
            self._refresh_arms()
        return done

    def restore(self, arm: str) -> bool:
        """Serve a retired arm again."""
        self._arm(arm)
        done = self.repository.restore(self.name, arm)
        with self._lock:
            self._refresh_arms()
        return done

    def _arm(self, arm: str) -> ArmRecord:
        with self._lock:
            if arm not in self.arms:
                self._refresh_arms()
            matches = [a for a in self.arms if a == arm or (len(arm) >= 4 and a.startswith(arm))]
        if len(matches) != 1:
            from dspex.errors import did_you_mean

            raise ConfigurationError(did_you_mean(arm, list(self.arms), what="arm"))
        return self.arms[matches[0]]

    # -- lifecycle -----------------------------------------------------------------------------------
    def freeze(self, arm: str | None = None) -> str:
        """Serve every run from ``arm`` (default: the current best) until :meth:`unfreeze`; returns it."""
        with self._lock:
            self.sync()
            chosen = (
                self._arm(arm).arm
                if arm is not None
                else self.state.best(self.active_arms() or list(self.arms))
            )
            self.repository.set_status(self.name, "frozen", chosen)
            self.repository.append(self.name, "status", chosen, detail={"status": "frozen"})
            self.record = self.repository.get(self.name)
            return chosen

    def unfreeze(self) -> None:
        """Let the policy choose again."""
        self._set_status("active")

    def stop(self) -> None:
        """Refuse runs (``ConfigurationError``) until :meth:`resume`; the state stays in the store."""
        self._set_status("stopped")

    def resume(self) -> None:
        self._set_status("active")

    def _set_status(self, status: Any) -> None:
        with self._lock:
            self.repository.set_status(self.name, status)
            self.repository.append(self.name, "status", None, detail={"status": status})
            self.record = self.repository.get(self.name)

    # -- serving -------------------------------------------------------------------------------------
    def select(self, inputs: Mapping[str, Any] | None = None) -> Decision:
        """The arm the next run with ``inputs`` would be served by, and why (catches up first if due)."""
        self.sync(force=False)
        with self._lock:
            if self.record.status == "stopped":
                raise ConfigurationError(
                    f"adaptive program {self.name!r} is stopped; resume it (dspex adapt start) to serve runs"
                )
            context = self._context(inputs or {})
            if self.record.status == "frozen" and self.record.frozen_arm in self.arms:
                frozen = self.record.frozen_arm
                return Decision(frozen, "frozen", frozen, context)
            active = self.active_arms()
            if not active:
                raise ConfigurationError(
                    f"adaptive program {self.name!r} has no arms; add some with add_arms()"
                )
            return self.state.choose(active, context=context, rng=self._rng)

    def _context(self, inputs: Mapping[str, Any]) -> str | None:
        context = context_of(self.features, inputs)
        if context is None or context in self._contexts:
            return context
        if len(self._contexts) >= MAX_CONTEXTS:
            return "other"
        self._contexts.add(context)
        return context

    def _prepared(self, decision: Decision) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
        """(configured module, version id, variables, adaptation tag) for the decision."""
        with self._lock:
            now = time.monotonic()
            if self._version is None or now > self._version[1]:
                version = self.host.programs.resolve(self.record.program, self.record.version_id)
                self._version = (version, now + self.refresh_s)
            version = self._version[0]
            configuration = self.arms[decision.arm].configuration
            key = (version.id, decision.arm)
            module = self._configured.get(key)
            if module is None:
                lms = self._lms if self._lms is not None else self.host.space_lms(self.space)
                module = apply(self.host.programs.build(version), configuration, self.bindings, lms=lms)
                if len(self._configured) > 256:
                    self._configured.clear()
                self._configured[key] = module
        tag = {
            "v": 1,
            "adaptive": self.name,
            "arm": decision.arm,
            "reason": decision.reason,
            "context": decision.context,
            "policy": self.config.algorithm,
            "best": decision.best,
        }
        return module, version.id, configuration, tag

    def run(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        durability: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Serve one run: choose an arm, run the program with it, record and learn. Returns the
        :class:`~dspex.runtime.RunResult` (raises what the run raised, after learning from it)."""
        return self.serve(inputs, lm=lm, durability=durability, timeout=timeout)[0]

    def serve(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        durability: Any = None,
        timeout: float | None = None,
    ) -> tuple[Any, Decision]:
        """:meth:`run`, returning ``(result, decision)``."""
        decision = self.select(inputs)
        module, version_id, variables, tag = self._prepared(decision)
        started = time.perf_counter()
        try:
            result = self.host._run_adaptive(
                module,
                inputs,
                program_name=self.record.program,
                version_id=version_id,
                variables=variables,
                adaptation=tag,
                lm=lm,
                durability=durability,
                timeout=timeout,
            )
        except BaseException as exc:
            self._learn_failure(decision, exc, (time.perf_counter() - started) * 1000)
            raise
        self._learn(decision, inputs or {}, result)
        return result, decision

    async def arun(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        durability: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Async :meth:`run`; the store is read and written off the event loop."""
        return (await self.aserve(inputs, lm=lm, durability=durability, timeout=timeout))[0]

    async def aserve(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: Any = None,
        durability: Any = None,
        timeout: float | None = None,
    ) -> tuple[Any, Decision]:
        decision = await asyncio.to_thread(self.select, inputs)
        module, version_id, variables, tag = await asyncio.to_thread(self._prepared, decision)
        started = time.perf_counter()
        try:
            result = await self.host._arun_adaptive(
                module,
                inputs,
                program_name=self.record.program,
                version_id=version_id,
                variables=variables,
                adaptation=tag,
                lm=lm,
                durability=durability,
                timeout=timeout,
            )
        except BaseException as exc:
            elapsed = (time.perf_counter() - started) * 1000
            await asyncio.to_thread(self._learn_failure, decision, exc, elapsed)
            raise
        await asyncio.to_thread(self._learn, decision, inputs or {}, result)
        return result, decision

    def _learn(self, decision: Decision, inputs: Mapping[str, Any], result: Any) -> None:
        quality = None
        if self.metric is not None:
            try:
                quality = check_quality(self.metric(inputs, result.outputs), self.reward.metric or "metric")
            except ConfigurationError:
                raise
            except Exception as exc:  # a metric that fails on one output scores it 0, and says so
                log.warning(
                    "adaptive %r: reward metric raised %s: %s; scored 0", self.name, type(exc).__name__, exc
                )
                quality = 0.0
        reward = self.reward.combine(quality, result.cost_usd, result.duration_ms)  # None: awaits feedback
        self._append_serve(
            decision, result.execution_id, failed=False, reward=reward, quality=quality,
            cost_usd=result.cost_usd, latency_ms=result.duration_ms,
        )  # fmt: skip

    def _learn_failure(self, decision: Decision, exc: BaseException, latency_ms: float) -> None:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            return  # the caller's doing, not the arm's
        if isinstance(exc, UserError):
            return  # bad inputs or settings are the caller's doing: no arm is to blame
        execution_id = getattr(exc, "execution_id", None)
        reward = self.reward.combine(0.0, None, latency_ms) if self.reward.quality > 0 else 0.0
        self._append_serve(
            decision,
            execution_id,
            failed=True,
            reward=reward,
            quality=0.0,
            cost_usd=None,
            latency_ms=latency_ms,
        )

    def _append_serve(
        self,
        decision: Decision,
        execution_id: str | None,
        *,
        failed: bool,
        reward: float | None,
        quality: float | None,
        cost_usd: float | None,
        latency_ms: float | None,
    ) -> None:
        event = self.repository.append(
            self.name,
            "serve",
            decision.arm,
            execution_id=execution_id,
            reason=decision.reason,
            context=decision.context,
            reward=reward,
            quality=quality,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            failed=failed,
            key=f"serve:{execution_id}" if execution_id else None,
        )
        if event is not None:
            with self._lock:
                self._apply(event, live=True)
                if failed:
                    self._guardrails()

    # -- visible -------------------------------------------------------------------------------------
    def status(self, *, buckets: int = 20) -> dict[str, Any]:
        """Everything about the adaptive program now: settings, arms (configuration, status, traffic
        share, reasons, posterior mean and 95% interval, rewards), reward over time, recent events."""
        self.sync()
        counts = self.repository.serve_counts(self.name)
        total = sum(sum(by.values()) for by in counts.values())
        with self._lock:
            best = self.state.best(self.active_arms() or list(self.arms)) if self.arms else None
            arms = []
            for arm, arm_record in self.arms.items():
                served = counts.get(arm, {})
                arms.append(
                    {
                        **arm_record.to_json(),
                        **self.state.view(arm).to_json(),
                        "served": sum(served.values()),
                        "share": sum(served.values()) / total if total else 0.0,
                        "reasons": served,
                        "best": arm == best,
                    }
                )
            record = self.record
        recent = self.repository.events(
            self.name,
            after=max(0, self._last_id - 2000),
            kinds=("reset", "retire", "reoptimize", "reoptimized", "status", "arm"),
        )
        return {
            "name": self.name,
            "program": record.program,
            "version_id": record.version_id,
            "status": record.status,
            "frozen_arm": record.frozen_arm,
            "policy": self.config.to_json(),
            "reward": self.reward.to_json(),
            "features": [f.to_json() for f in self.features],
            "reoptimize": self.reoptimize.to_json() if self.reoptimize is not None else None,
            "runs": total,
            "explore_share": self.state.explore_share(),
            "best_arm": best,
            "arms": arms,
            "reward_over_time": self.repository.reward_series(self.name, buckets=buckets),
            "events": [e.to_json() for e in recent[-50:]],
        }


MetricLookup = Callable[[str], QualityMetric]
