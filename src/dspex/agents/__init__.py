"""Agents and coordination: capabilities, fitness from the record, coordinate, consensus, self-scaffolding.

::

    from dspex.agents import Agent, Capabilities, Task, consensus, coordinate, scaffold

    ranked = coordinate(Task.of("arithmetic", needs="answer"), agents, app=app)
    result = consensus(agents, {"question": "2 + 2?"}, signature="question -> answer", method="weighted",
                       app=app, kind="arithmetic")
    drafted = scaffold(app, "answer arithmetic word problems", "tests.jsonl", name="math")

The patterns themselves (``consensus``, ``self_correcting_cot``, ``tree_of_thoughts``) are catalog modules
in :mod:`dspex.modules.patterns`, usable anywhere a module is.
"""

from dspex.agents.capabilities import Agent, Capabilities, Task
from dspex.agents.coordinate import ConsensusResult, Ranked, consensus, coordinate, learned_weights
from dspex.agents.fitness import Fitness, measure_fitness, record_outcome
from dspex.agents.scaffold import ScaffoldAttempt, ScaffoldCase, ScaffoldResult, load_tests, scaffold

__all__ = [
    "Agent",
    "Capabilities",
    "ConsensusResult",
    "Fitness",
    "Ranked",
    "ScaffoldAttempt",
    "ScaffoldCase",
    "ScaffoldResult",
    "Task",
    "consensus",
    "coordinate",
    "learned_weights",
    "load_tests",
    "measure_fitness",
    "record_outcome",
    "scaffold",
]
