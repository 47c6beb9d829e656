"""``app.adapt``: start, open, list and stop adaptive programs.

::

    adaptive = app.adapt("qa-live", program="qa", space=space, bindings=[bind.model("model")],
                         arms=[{"model": "openai/large"}, {"model": "openai/small"}],
                         reward=Reward(quality=0.8, latency=0.2, latency_scale_ms=2000))
    adaptive = app.adapt("qa-live")                  # open it again (another process, after a restart)
    app.adapt("qa-live", arms=[{"model": "openai/medium"}])       # add an arm while it runs
    app.adapt("qa-opt", program="qa", space=document, from_optimization="opt-1a2b", top=3)
    app.adapt("qa-rnd", program="qa", space=document, sample=4)   # arms drawn from the space
    app.adapt.list(); app.adapt.get("qa-live").status()

The settings (space, policy, reward, features, re-optimization) are fixed when the adaptive program is
created; opening it again with different ones is an error (stop it and start another name). Arms are
added at any time. One :class:`AdaptiveProgram` per name per App: every caller in the process shares its
state.
"""

from __future__ import annotations

import builtins
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dspex.adapt.features import Feature
from dspex.adapt.policy import PolicyConfig
from dspex.adapt.program import AdaptiveProgram, Host
from dspex.adapt.reoptimize import Reoptimize
from dspex.adapt.reward import QualityMetric, Reward
from dspex.errors import ConfigurationError, UserError
from dspex.store.adapt import AdaptiveRecord, AdaptiveRepository
from dspex.variables.binding import Bindings
from dspex.variables.space import VariableSpace
from dspex.variables.spacefile import space_document, space_from_document

__all__ = ["SPEC_VERSION", "Adaptations"]

SPEC_VERSION = 1
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not set(name) <= _NAME_CHARS:
        raise ConfigurationError(
            f"an adaptive program's name is 1-200 letters, digits, '-', '_' or '.', got {name!r}"
        )
    return name


class Adaptations:
    """The adaptive programs of one App (module docstring). Thread-safe."""

    def __init__(
        self, host: Host, repository: Callable[[], AdaptiveRepository], tools: Callable[[], Any]
    ) -> None:
        self._host = host
        self._repository = repository
        self._tools = tools
        self._open: dict[str, AdaptiveProgram] = {}
        self._lock = threading.Lock()

    @property
    def repository(self) -> AdaptiveRepository:
        return self._repository()

    def __call__(
        self,
        name: str,
        program: str | None = None,
        *,
        space: VariableSpace | Mapping[str, Any] | None = None,
        bindings: Bindings | Sequence[Any] | None = None,
        arms: Sequence[Mapping[str, Any]] = (),
        from_optimization: str | None = None,
        top: int = 3,
        sample: int = 0,
        seed: int = 0,
        policy: PolicyConfig | Mapping[str, Any] | None = None,
        reward: Reward | Mapping[str, Any] | None = None,
        metric: str | QualityMetric | None = None,
        features: Sequence[Feature | str | Mapping[str, Any]] = (),
        reoptimize: Reoptimize | Mapping[str, Any] | None = None,
        version_id: str | None = None,
        lms: Mapping[str, Any] | None = None,
    ) -> AdaptiveProgram:
        """Start adaptive program ``name`` serving registered program ``program``, or open it (and add
        ``arms``) when it exists. See the module docstring."""
        _check_name(name)
        repository = self.repository
        existing = repository.find(name)
        if existing is None:
            if program is None or space is None:
                raise ConfigurationError(
                    f"no adaptive program {name!r} yet: starting one needs program= (a registered program) "
                    "and space= (its variable space and bindings)"
                )
            self._host.programs.resolve(program, version_id)  # an unknown program fails here, by name
            parsed, parsed_bindings = _space(space, bindings, self._tools())
            metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", None)
            reward_obj = reward if isinstance(reward, Reward) else Reward.from_json(reward or {})
            if metric is not None:
                reward_obj = Reward.from_json({**reward_obj.to_json(), "metric": metric_name or "metric"})
            spec = {
                "v": SPEC_VERSION,
                "space": space_document(parsed, parsed_bindings),
                "policy": (
                    policy if isinstance(policy, PolicyConfig) else PolicyConfig.from_json(policy or {})
                ).to_json(),
                "reward": reward_obj.to_json(),
                "features": [
                    (f if isinstance(f, Feature) else Feature.from_json(f)).to_json() for f in features
                ],
                "reoptimize": (
                    (
                        reoptimize if isinstance(reoptimize, Reoptimize) else Reoptimize.from_json(reoptimize)
                    ).to_json()
                    if reoptimize is not None
                    else None
                ),
            }
            initial = self._initial_arms(parsed, arms, from_optimization, top, sample, seed)
            if not initial:
                raise ConfigurationError(
                    f"adaptive program {name!r} needs arms: give arms=[...], from_optimization= or sample="
                )
            adaptive_program = self._build(
                name, parsed, parsed_bindings, repository, metric, lms, program=program,
                version_id=version_id, spec=spec, initial=initial,
            )  # fmt: skip
            return adaptive_program
        if program is not None and program != existing.program:
            raise ConfigurationError(
                f"adaptive program {name!r} serves {existing.program!r}, not {program!r}; pick another name"
            )
        if any(v is not None for v in (space, policy, reward, reoptimize)) or features:
            raise ConfigurationError(
                f"adaptive program {name!r} exists; its space, policy, reward, features and re-optimization "
                "are fixed (stop it and start another name to change them); pass only arms to add"
            )
        adaptive = self.get(name, metric=metric, lms=lms)
        extra = self._initial_arms(adaptive.space, arms, from_optimization, top, sample, seed)
        for source in dict.fromkeys(source for _, source in extra):
            adaptive.add_arms([values for values, s in extra if s == source], source=source)
        return adaptive

    def _build(
        self,
        name: str,
        space: VariableSpace,
        bindings: Bindings,
        repository: AdaptiveRepository,
        metric: str | QualityMetric | None,
        lms: Mapping[str, Any] | None,
        *,
        program: str,
        version_id: str | None,
        spec: dict[str, Any],
        initial: builtins.list[tuple[Mapping[str, Any], str]],
    ) -> AdaptiveProgram:
        # Arms are validated before anything is stored: bad input leaves no half-made program behind.
        configurations = [(space.validate(values), source) for values, source in initial]
        _, created = repository.create(name, program=program, version_id=version_id, spec=spec)
        if not created:
            raise ConfigurationError(f"adaptive program {name!r} was just started by another caller; open it")
        from dspex.adapt.program import arm_id

        repository.add_arms(name, [(arm_id(c), c.to_json(), source) for c, source in configurations])
        return self.get(name, metric=metric, lms=lms)

    def get(
        self, name: str, *, metric: str | QualityMetric | None = None, lms: Mapping[str, Any] | None = None
    ) -> AdaptiveProgram:
        """The adaptive program ``name`` (opened once per App; raises
        :class:`~dspex.store.adapt.UnknownAdaptive`)."""
        with self._lock:
            found = self._open.get(name)
            if found is not None:
                if metric is not None and not isinstance(metric, str):
                    found.metric = metric
                return found
        record = self.repository.get(name)
        space, bindings = space_from_document(record.spec["space"], functions=self._tools())
        reward = Reward.from_json(record.spec.get("reward", {}))
        fn: QualityMetric | None = None
        if callable(metric):
            fn = metric
        elif reward.metric is not None:
            fn = self._metric(reward.metric, required=metric is not None)
        adaptive = AdaptiveProgram(self._host, self.repository, record, space, bindings, metric=fn, lms=lms)
        with self._lock:
            return self._open.setdefault(name, adaptive)

    def _metric(self, name: str, *, required: bool) -> QualityMetric | None:
        tools = self._tools()
        if ":" not in name and name in tools:
            found: QualityMetric = tools.resolve(name, what="reward metric")
            return found
        if required:
            raise ConfigurationError(
                f"unknown reward metric {name!r}: a metric is a function registered in the App's tools "
                f"(registered: {', '.join(tools.names()) or 'none'}), or a callable given in Python"
            )
        return None

    def list(self, program: str | None = None) -> builtins.list[AdaptiveRecord]:
        """Every adaptive program (of ``program``), by name."""
        return self.repository.all(program)

    def delete(self, name: str) -> bool:
        """Forget adaptive program ``name``: its arms and its log (execution records keep their tags)."""
        with self._lock:
            self._open.pop(name, None)
        return self.repository.delete(name)

    def _initial_arms(
        self,
        space: VariableSpace,
        arms: Sequence[Mapping[str, Any]],
        from_optimization: str | None,
        top: int,
        sample: int,
        seed: int,
    ) -> builtins.list[tuple[Mapping[str, Any], str]]:
        if isinstance(arms, Mapping) or not isinstance(arms, Sequence):
            raise ConfigurationError("arms is a list of configurations (mappings of variable values)")
        found: builtins.list[tuple[Mapping[str, Any], str]] = [(values, "explicit") for values in arms]
        if from_optimization is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 50:
                raise ConfigurationError(f"top is a whole number from 1 to 50, got {top!r}")
            found += [(c, "optimization") for c in self._from_optimization(from_optimization, top)]
        if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= 50:
            raise ConfigurationError(f"sample is a whole number from 0 to 50, got {sample!r}")
        if sample:
            rng = random.Random(seed)
            drawn: dict[str, Mapping[str, Any]] = {}
            for _ in range(sample * 20):
                configuration = space.sample(rng)
                drawn.setdefault(configuration.id, configuration.to_json())
                if len(drawn) >= sample:
                    break
            found += [(c, "sampled") for c in drawn.values()]
        return found

    def _from_optimization(self, optimization_id: str, top: int) -> builtins.list[dict[str, Any]]:
        host: Any = self._host
        record = host.optimizations.get(optimization_id)  # ConfigurationError naming it when unknown
        configurations: builtins.list[dict[str, Any]] = []

        def take(trial: Any) -> None:
            configuration = trial.get("configuration") if isinstance(trial, Mapping) else None
            if isinstance(configuration, Mapping) and dict(configuration) not in configurations:
                configurations.append(dict(configuration))

        for trial in record.pareto or []:
            take(trial)
        if record.best is not None:
            take(record.best)
        trials = host.optimizations.trials(optimization_id, states=["complete"])
        ranked = sorted(trials, key=lambda t: -float((t.scores or {}).get("quality", 0.0)))
        for trial in ranked:
            if len(configurations) >= top:
                break
            take({"configuration": trial.configuration})
        if not configurations:
            raise ConfigurationError(
                f"optimization {optimization_id!r} has no completed trial to take arms from"
            )
        return configurations[:top] if len(configurations) > top else configurations


def _space(
    space: VariableSpace | Mapping[str, Any], bindings: Bindings | Sequence[Any] | None, tools: Any
) -> tuple[VariableSpace, Bindings]:
    if isinstance(space, VariableSpace):
        if bindings is None:
            raise ConfigurationError(
                "a VariableSpace needs bindings= (how its variables apply to the program)"
            )
        return space, bindings if isinstance(bindings, Bindings) else Bindings(bindings)
    if bindings is not None:
        raise ConfigurationError("a space document carries its bindings; leave bindings= out")
    try:
        return space_from_document(space, functions=tools)
    except UserError:
        raise
