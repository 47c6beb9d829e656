"""Adaptive programs against static configurations, on a stream with an unannounced drift halfway.

Run: ``python benchmarks/adaptation.py [--requests 2000] [--seed 0] [--latency-scale 0.25]``.

The simulated OpenAI-compatible server (:mod:`dspex.testing.server`) answers the task's questions right
with a probability set by the model, the module (``chain_of_thought`` reasons) and the temperature, after a
latency set per model. Four arms of one registered program (model x module x temperature):

    large-cot   sim-large  chain_of_thought  t=0.7   best before the drift
    medium-cot  sim-medium chain_of_thought  t=0.5
    small-cot   sim-small  chain_of_thought  t=0.3
    medium-pred sim-medium predict           t=0.5

Each request's reward is ``0.7 * correct + 0.3 * (1 - latency / 40 ms)``, the latency being the run's
measured duration (a real run through the App, recorded). Halfway through the stream the server is
reconfigured (the policy is not told): sim-large's accuracy drops by 0.56 and its latency doubles, as when
a provider degrades. A second stream has no drift.

Printed, for both streams: the cumulative reward of the adaptive program (``app.adapt``, default policy:
discounted Thompson sampling with a CUSUM reset), of every arm served statically on the same requests, of
the best static arm chosen on the first half (what a team that optimized before the drift deploys), of the
best static arm in hindsight, and of an oracle that switches to the best arm at the drift. Goals: on the
drifting stream >= 1.20x the static arm chosen before the drift and >= 0.90x the oracle; on the stationary
stream >= 0.97x the best static arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex.adapt import PolicyConfig, Reward
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing.server import SimServer
from dspex.testing.simtask import DEFAULT_PROFILES
from dspex.variables import Bindings, Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document

MODELS = ("sim-small", "sim-medium", "sim-large")
ARMS: dict[str, dict[str, Any]] = {
    "large-cot": {"model": "openai/sim-large", "module": "chain_of_thought", "temperature": 0.7},
    "medium-cot": {"model": "openai/sim-medium", "module": "chain_of_thought", "temperature": 0.5},
    "small-cot": {"model": "openai/sim-small", "module": "chain_of_thought", "temperature": 0.3},
    "medium-pred": {"model": "openai/sim-medium", "module": "predict", "temperature": 0.5},
}
REWARD = Reward(quality=0.7, latency=0.3, latency_scale_ms=40.0)


def space() -> dict[str, Any]:
    variables = VariableSpace(
        [
            Variable.model("model", [f"openai/{m}" for m in MODELS]),
            Variable.module_type("module", ["predict", "chain_of_thought"]),
            Variable.float("temperature", 0.0, 1.5, step=0.1),
        ]
    )
    bindings = Bindings(
        [bind.model("model"), bind.module_type("module", at=""), bind.temperature("temperature")]
    )
    return space_document(variables, bindings)


def drifted_profiles() -> tuple[Any, ...]:
    """sim-large after the drift: accuracy down by 0.56, latency doubled."""
    large = DEFAULT_PROFILES["sim-large"]
    worse = dataclasses.replace(large, base_accuracy=large.base_accuracy - 0.56, latency=large.latency * 2)
    return tuple(worse if p.name == "sim-large" else p for p in DEFAULT_PROFILES.values())


class Stream:
    """The requests, their gold answers, and the drift switch of the simulated server."""

    def __init__(self, sim: SimServer, questions: list[str], drift: bool) -> None:
        self.sim = sim
        self.questions = questions
        self.drift = drift
        self.gold = {ex.question: ex.answer for ex in sim.task.items}

    def at(self, i: int) -> None:
        """Set the server to the world of request ``i`` (only the server knows; the policy does not)."""
        drifted = self.drift and i >= len(self.questions) // 2
        self.sim.configure(profiles=drifted_profiles() if drifted else tuple(DEFAULT_PROFILES.values()))

    def quality(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
        return 1.0 if str(outputs.get("answer", "")).strip() == self.gold[inputs["question"]] else 0.0


def reward_of(stream: Stream, question: str, run: Callable[[], Any]) -> float:
    try:
        result = run()
    except Exception:
        return 0.0
    quality = stream.quality({"question": question}, result.outputs)
    value = REWARD.combine(quality, result.cost_usd, result.duration_ms)
    assert value is not None
    return value


def run_static(app: App, stream: Stream, arm: str, start: int, end: int) -> list[float]:
    """Serve requests [start, end) with one arm, statically (the same App path: a frozen adaptive)."""
    adaptive = app.adapt.get(f"static-{arm}-{stream.drift}")
    rewards = []
    for i in range(start, end):
        stream.at(i)
        question = stream.questions[i]
        rewards.append(reward_of(stream, question, lambda q=question: adaptive.run({"question": q})))
    return rewards


def run_adaptive(app: App, stream: Stream, name: str) -> tuple[list[float], dict[str, int]]:
    adaptive = app.adapt.get(name)
    rewards, served = [], dict.fromkeys(ARMS, 0)
    labels = {}
    for label, values in ARMS.items():
        labels[adaptive.validate(values).id[:16]] = label
    for i, question in enumerate(stream.questions):
        stream.at(i)
        try:
            result, decision = adaptive.serve({"question": question})
        except Exception:
            rewards.append(0.0)  # the failed run's arm was learnt from; its reward is 0
            continue
        served[labels[decision.arm]] += 1
        quality = stream.quality({"question": question}, result.outputs)
        rewards.append(REWARD.combine(quality, result.cost_usd, result.duration_ms) or 0.0)
    return rewards, served


def start(app: App, stream: Stream, lms: Mapping[str, Any], seed: int) -> None:
    document = space()
    app.adapt(
        f"adaptive-{stream.drift}", "qa", space=document, arms=list(ARMS.values()), reward=REWARD,
        metric=stream.quality, lms=lms, policy=PolicyConfig(seed=seed),
    )  # fmt: skip
    for label, values in ARMS.items():
        static = app.adapt(
            f"static-{label}-{stream.drift}", "qa", space=document, arms=[values], reward=REWARD,
            metric=stream.quality, lms=lms,
        )  # fmt: skip
        static.freeze()


def report(title: str, adaptive: float, static: dict[str, tuple[float, float]]) -> dict[str, float]:
    first = max(static, key=lambda a: static[a][0])
    hindsight = max(static, key=lambda a: sum(static[a]))
    second = max(static, key=lambda a: static[a][1])
    before = sum(static[first])
    oracle = static[first][0] + static[second][1]
    print(f"\n{title}")
    print(f"{'':34} {'cumulative reward':>18} {'adaptive / it':>14}")
    print(f"{'adaptive program':34} {adaptive:18.1f} {'':>14}")
    for arm, (a, b) in static.items():
        print(f"{'static ' + arm:34} {a + b:18.1f} {adaptive / (a + b):13.2f}x")
    print(f"{'best static before drift (' + first + ')':34} {before:18.1f} {adaptive / before:13.2f}x")
    print(f"{'best static in hindsight (' + hindsight + ')':34} {sum(static[hindsight]):18.1f} "
          f"{adaptive / sum(static[hindsight]):13.2f}x")  # fmt: skip
    print(f"{'oracle (' + first + ' -> ' + second + ')':34} {oracle:18.1f} {adaptive / oracle:13.2f}x")
    return {
        "before": adaptive / before,
        "hindsight": adaptive / sum(static[hindsight]),
        "oracle": adaptive / oracle,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-scale", type=float, default=0.25)
    args = parser.parse_args()
    logging.getLogger("dspex").setLevel(logging.ERROR)
    n = args.requests
    home = tempfile.mkdtemp(prefix="dspex-adaptation-")
    started = time.perf_counter()
    with SimServer(latency_scale=args.latency_scale, task_size=n, task_seed=args.seed) as sim:
        questions = [ex.question for ex in sim.task.items][:n]
        lms = {f"openai/{m}": sim.lm(m, num_retries=0) for m in MODELS}
        settings = Settings(home=home, database_url=f"sqlite:///{home}/dspex.db")
        with App(settings) as app:
            app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
            drifting, steady = Stream(sim, questions, True), Stream(sim, questions, False)
            for stream in (drifting, steady):
                start(app, stream, lms, args.seed)
            half = n // 2
            # Every arm on every request of the drifting stream; on the steady stream the first half is
            # the same world, so only its second half is served again.
            static_drift = {arm: run_static(app, drifting, arm, 0, n) for arm in ARMS}
            static_steady = {
                arm: static_drift[arm][:half] + run_static(app, steady, arm, half, n) for arm in ARMS
            }
            adaptive_drift, served_drift = run_adaptive(app, drifting, "adaptive-True")
            adaptive_steady, served_steady = run_adaptive(app, steady, "adaptive-False")
            status = app.adapt.get("adaptive-True").status()
    elapsed = time.perf_counter() - started

    def halves(values: list[float]) -> tuple[float, float]:
        return sum(values[:half]), sum(values[half:])

    print(
        f"{n} requests per stream, drift at request {half}; reward = 0.7 x correct + 0.3 x (1 - latency / 40 ms)"
    )
    drift = report(
        "Stream with drift (sim-large: accuracy -0.56, latency x2 at halfway)",
        sum(adaptive_drift),
        {arm: halves(values) for arm, values in static_drift.items()},
    )
    print(f"adaptive traffic per arm: {served_drift}; first half {sum(adaptive_drift[:half]):.1f}, "
          f"second half {sum(adaptive_drift[half:]):.1f}")  # fmt: skip
    resets = {arm["arm"]: arm["resets"] for arm in status["arms"] if arm["resets"]}
    print(f"change-detector resets per arm: {resets or 'none'}")
    steady = report(
        "Stream without drift",
        sum(adaptive_steady),
        {arm: halves(values) for arm, values in static_steady.items()},
    )
    print(f"adaptive traffic per arm: {served_steady}")
    goals = [
        ("drift: adaptive >= 1.20x best static chosen before the drift", drift["before"] >= 1.20),
        ("drift: adaptive >= 0.90x the oracle", drift["oracle"] >= 0.90),
        ("no drift: adaptive >= 0.97x the best static", steady["hindsight"] >= 0.97),
    ]
    print()
    for goal, met in goals:
        print(f"{'MET ' if met else 'MISSED'} {goal}")
    print(f"({elapsed:.0f} s)")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
