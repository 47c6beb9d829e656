"""Adaptive programs: serve live traffic from candidate configurations, learning which to serve.

::

    from dspex.adapt import PolicyConfig, Reward

    adaptive = app.adapt("qa-live", program="qa", space=document,
                         arms=[{"model": "openai/large"}, {"model": "openai/small"}],
                         reward=Reward(quality=0.8, latency=0.2, latency_scale_ms=2000))
    adaptive.run({"question": "2 + 2?"})       # a bandit picks the arm; the run records it and why
    adaptive.status()                          # arms, traffic shares, posteriors, reward over time

The policy (:mod:`dspex.adapt.policy`), its reward (:mod:`dspex.adapt.reward`), contexts
(:mod:`dspex.adapt.features`) and re-optimization (:mod:`dspex.adapt.reoptimize`) are plain values; the
state lives in the store (:mod:`dspex.store.adapt`) and is shared by every process serving the program.
"""

import typing as _typing

from dspex import _lazy

if _typing.TYPE_CHECKING:
    from dspex.adapt.features import Feature
    from dspex.adapt.manager import Adaptations
    from dspex.adapt.policy import Decision, PolicyConfig, PolicyState
    from dspex.adapt.program import AdaptiveProgram
    from dspex.adapt.reoptimize import Reoptimize
    from dspex.adapt.reward import Reward

_LAZY = {
    "Adaptations": "dspex.adapt.manager",
    "AdaptiveProgram": "dspex.adapt.program",
    "Decision": "dspex.adapt.policy",
    "Feature": "dspex.adapt.features",
    "PolicyConfig": "dspex.adapt.policy",
    "PolicyState": "dspex.adapt.policy",
    "Reoptimize": "dspex.adapt.reoptimize",
    "Reward": "dspex.adapt.reward",
}

__all__ = [
    "Adaptations",
    "AdaptiveProgram",
    "Decision",
    "Feature",
    "PolicyConfig",
    "PolicyState",
    "Reoptimize",
    "Reward",
]

__getattr__, __dir__ = _lazy.attach("dspex.adapt", _LAZY, globals(), __all__)
