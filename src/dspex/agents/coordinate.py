"""Pick agents for a task, and run several on one input to a consensus.

::

    ranked = coordinate(Task.of("arithmetic", needs={"answer"}, supplies={"question"}), agents, app=app)
    ranked[0].agent.name, ranked[0].fitness.score          # the best fit by measured fitness

    result = consensus([a, b, c], {"question": "2 + 2?"}, signature="question -> answer",
                       method="weighted", app=app, kind="arithmetic")   # weights from each one's record
    result.answer, result.agreement, result.weights

:func:`coordinate` keeps the agents whose capabilities fit (they provide everything the task needs, require
only what it supplies, and serve its kind) and ranks them by fitness for the task's kind, measured from the
record (:mod:`dspex.agents.fitness`); an agent that names no registered program has no record and ranks at
the prior. Ties keep the order the agents were given. :func:`consensus` builds a
:class:`~dspex.modules.patterns.Consensus` over the agents' modules (registered programs are loaded from
the registry) and runs it, through ``app.run`` when an App is given, so the consensus is one recorded run
whose members are spans of it. With ``pool=``, registered programs run on that worker pool instead, each
as its own recorded pooled run (the distributed form), and their votes are combined in this process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.agents.capabilities import Agent, Task
from dspex.agents.fitness import PRIOR, Fitness, measure_fitness
from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.modules.patterns import ConsensusMethod
    from dspex.runtime.app import App

__all__ = ["ConsensusResult", "Ranked", "consensus", "coordinate", "learned_weights"]


@dataclass(frozen=True, slots=True)
class Ranked:
    """An agent that fits a task, with its fitness for the task's kind."""

    agent: Agent
    fitness: Fitness


def _fitness(agent: Agent, kind: str, app: App | None) -> Fitness:
    if app is not None and agent.program is not None:
        return measure_fitness(app, agent.program, kind)
    return Fitness(agent.program or agent.name, kind, 0, None, PRIOR)


def _misfit(agent: Agent, task: Task) -> str | None:
    caps = agent.capabilities
    if caps.kinds and task.kind not in caps.kinds:
        return f"serves {', '.join(sorted(caps.kinds))}, not {task.kind}"
    missing = task.needs - caps.provides
    if missing:
        return f"does not provide {', '.join(sorted(missing))}"
    if task.supplies is not None and not caps.requires <= task.supplies:
        return f"requires {', '.join(sorted(caps.requires - task.supplies))}, which the task does not supply"
    return None


def coordinate(
    task: Task, agents: Sequence[Agent], *, app: App | None = None, top: int | None = None
) -> list[Ranked]:
    """The agents fitting ``task``, best measured fitness first (see the module doc).

    Raises ``ConfigurationError`` saying why each agent does not fit when none does."""
    if not agents:
        raise ConfigurationError("coordinate needs at least one agent")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"agent names must be unique; got {names}")
    fits: list[Ranked] = []
    reasons: list[str] = []
    for agent in agents:
        reason = _misfit(agent, task)
        if reason is None:
            fits.append(Ranked(agent, _fitness(agent, task.kind, app)))
        else:
            reasons.append(f"{agent.name} {reason}")
    if not fits:
        raise ConfigurationError(f"no agent fits task kind {task.kind!r}: " + "; ".join(reasons))
    fits.sort(key=lambda r: -r.fitness.score)  # stable: ties keep the given order
    return fits[:top] if top is not None else fits


def learned_weights(app: App, agents: Sequence[Agent], kind: str) -> list[float]:
    """One weight per agent: its smoothed recorded accuracy on ``kind`` (the prior for unregistered ones)."""
    return [_fitness(agent, kind, app).score for agent in agents]


@dataclass(frozen=True, slots=True)
class ConsensusResult:
    """The combined answer of a consensus run."""

    outputs: dict[str, Any]
    agreement: float
    votes: dict[str, float]
    chosen: str  # the agent whose answer won
    tied: bool
    weights: list[float]
    execution_id: str | None  # the recorded run, when run through an App
    member_execution_ids: tuple[str, ...] = ()  # on a pool: each member's own recorded run

    @property
    def answer(self) -> Any:
        """The last output field of the winning answer (the compared field by default)."""
        return list(self.outputs.values())[-1] if self.outputs else None


def consensus(
    agents: Sequence[Agent],
    inputs: Mapping[str, Any],
    *,
    signature: str,
    method: ConsensusMethod = "majority",
    weights: list[float] | None = None,
    kind: str | None = None,
    app: App | None = None,
    field: str | None = None,
    num_threads: int = 4,
    pool: str | None = None,
) -> ConsensusResult:
    """Run ``agents`` on ``inputs`` in parallel and combine their answers (see the module doc).

    With ``method="weighted"`` and no ``weights``, each agent's weight is its recorded fitness on
    ``kind`` (which then needs ``app`` and ``kind``). With ``pool``, every agent must name a registered
    program: each runs on that worker pool (:mod:`dspex.pools`) as its own recorded run, and the votes are
    combined here (majority or weighted)."""
    from dspex.modules.patterns import Consensus

    if method == "weighted" and weights is None:
        if app is None or kind is None:
            raise ConfigurationError(
                "consensus method 'weighted' without weights learns them from the record: pass app= and kind="
            )
        weights = learned_weights(app, agents, kind)
    if pool is not None:
        return _on_pool(agents, inputs, signature, method, weights, app, field, pool)
    modules = [
        app.programs.load(a.module) if isinstance(a.module, str) and app is not None else a.module
        for a in agents
    ]
    for agent, module in zip(agents, modules, strict=True):
        if isinstance(module, str):
            raise ConfigurationError(f"agent {agent.name!r} names program {module!r}: pass app= to load it")
    module = Consensus(
        signature, modules=modules, method=method, weights=weights, field=field, num_threads=num_threads
    )
    execution_id: str | None = None
    if app is not None:
        run = app.run(module, dict(inputs))
        prediction, execution_id = run.prediction, run.execution_id
    else:
        prediction = module(**inputs)
    outputs = {name: prediction.get(name) for name in module.signature.output_fields}
    return ConsensusResult(
        outputs,
        float(prediction.agreement),
        dict(prediction.votes),
        agents[int(prediction.chosen)].name,
        bool(prediction.tied),
        list(module.weights),
        execution_id,
    )


def _on_pool(
    agents: Sequence[Agent],
    inputs: Mapping[str, Any],
    signature: str,
    method: ConsensusMethod,
    weights: list[float] | None,
    app: App | None,
    field: str | None,
    pool: str,
) -> ConsensusResult:
    from concurrent.futures import ThreadPoolExecutor

    from dspex.modules._signature import _to_signature
    from dspex.modules.patterns.consensus import combine_votes

    if app is None:
        raise ConfigurationError(
            f"consensus on pool {pool!r} runs registered programs through an App: pass app="
        )
    if method == "judge":
        raise ConfigurationError(
            "consensus on a pool combines by 'majority' or 'weighted'; 'judge' runs in process"
        )
    unnamed = [a.name for a in agents if not isinstance(a.module, str)]
    if unnamed:
        raise ConfigurationError(
            f"consensus on pool {pool!r} runs registered programs; agents {', '.join(unnamed)} hold built modules"
        )
    if len(agents) < 2:
        raise ConfigurationError(f"consensus needs at least 2 agents; got {len(agents)}")
    outputs_of = list(_to_signature(signature).output_fields)
    compared = field if field is not None else outputs_of[-1]
    if compared not in outputs_of:
        raise ConfigurationError(f"field names an output of {signature!r}; got {field!r}")
    chosen_weights = [1.0] * len(agents) if weights is None else [float(w) for w in weights]
    if len(chosen_weights) != len(agents) or any(w < 0 for w in chosen_weights) or not any(chosen_weights):
        raise ConfigurationError(
            f"weights is a list of {len(agents)} numbers >= 0 (one per agent, one at least > 0); got {weights!r}"
        )
    # A thread per member only waits on the pool; the work runs in the pool's worker processes.
    with ThreadPoolExecutor(max_workers=len(agents)) as threads:
        futures = [threads.submit(app.run, str(a.module), dict(inputs), pool=pool) for a in agents]
        runs = [f.result() for f in futures]
    vote = combine_votes(
        [r.outputs.get(compared) for r in runs], chosen_weights if method == "weighted" else None
    )
    best = runs[vote.chosen]
    return ConsensusResult(
        {name: best.outputs.get(name) for name in outputs_of},
        vote.agreement,
        vote.tally,
        agents[vote.chosen].name,
        vote.tied,
        chosen_weights,
        None,
        tuple(r.execution_id for r in runs),
    )
