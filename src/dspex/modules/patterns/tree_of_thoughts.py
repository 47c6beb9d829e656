"""Tree of thoughts: expand partial reasoning paths level by level, score them, keep a beam, answer from the best.

::

    tot = TreeOfThoughts("numbers: list[int] -> expression", breadth=3, depth=3, beam=2)    # an LM scores
    tot = build_module("tree_of_thoughts", "question -> answer", breadth=4, depth=2, beam=2,
                       scorer="myapp.checks:partial_score")                                   # a metric scores
    result = tot(question="...")
    result.answer, result.path, result.score, result.tree     # the tree: every node explored

Each level expands every path in the beam into ``breadth`` children at once (in parallel, ``num_threads``):
``propose`` (a ``dspy.Predict`` over the inputs and the path so far) writes the next thought, then the
child is scored, by ``evaluate`` (an LM predictor rating the path from 0 to 1) or by a scorer function
``scorer(inputs: dict, path: list[str]) -> float``. The ``beam`` best children (ties: the earlier one)
survive to the next level. After ``depth`` levels, ``finish`` (a ``dspy.ChainOfThought``) writes the
outputs from the best path. Every node is a span (``node 1.0``: level 1, child 0) with its thought,
score and parent; the whole tree, with which nodes the beam kept, is in the result and on the module's
span.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import dspy

from dspex.errors import ConfigurationError
from dspex.modules._signature import _to_signature
from dspex.modules.patterns._nodes import Node, annotate, check_minimum, run_parallel

__all__ = ["Scorer", "ThoughtNode", "TreeOfThoughts"]

Scorer = Callable[[dict[str, Any], list[str]], float]


@dataclass(slots=True)
class ThoughtNode:
    """One explored node: its thought, the path to it (thoughts from the root), its score and fate."""

    id: int
    parent: int | None
    depth: int
    thought: str
    path: list[str]
    score: float
    kept: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TreeOfThoughts(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Breadth-by-depth search over partial thoughts with beam pruning (see the module doc)."""

    def __init__(
        self,
        signature: str | type[dspy.Signature],
        breadth: int = 3,
        depth: int = 2,
        beam: int = 2,
        scorer: str | Scorer = "lm",
        num_threads: int = 4,
        **config: Any,
    ) -> None:
        super().__init__()
        for name, value in (
            ("breadth", breadth),
            ("depth", depth),
            ("beam", beam),
            ("num_threads", num_threads),
        ):
            check_minimum("tree_of_thoughts", name, value, 1)
        sig = _to_signature(signature)
        self.signature = sig  # what pipelines and App.run read: the inputs and outputs it takes
        self.breadth, self.depth, self.beam, self.num_threads = breadth, depth, beam, num_threads
        inputs = ", ".join([*sig.input_fields, "path: list[str]"])
        self.propose = dspy.Predict(
            _to_signature(f"{inputs} -> thought").with_instructions(
                "Propose the next step of reasoning toward the outputs, continuing the path of earlier steps."
            ),
            **config,
        )
        self.evaluate: dspy.Module | None = None
        self._scorer: Scorer | None = None
        if scorer == "lm":
            self.evaluate = dspy.Predict(
                _to_signature(f"{inputs} -> score: float").with_instructions(
                    "Rate how promising this partial path is for reaching correct outputs, from 0 to 1."
                )
            )
        elif callable(scorer):
            self._scorer = scorer
        else:
            raise ConfigurationError(
                f"tree_of_thoughts option 'scorer' is 'lm' or a scoring function; got {scorer!r}"
            )
        self.finish = dspy.ChainOfThought(
            sig.prepend(
                "path", dspy.InputField(desc="the best reasoning path found"), list[str]
            ).append_instructions("Give the outputs that the reasoning path leads to."),
            **config,
        )

    def score(self, inputs: dict[str, Any], path: list[str]) -> float:
        """The score of a partial path (raises what the scorer raises)."""
        if self._scorer is not None:
            value = self._scorer(dict(inputs), list(path))
        else:
            assert self.evaluate is not None
            value = self.evaluate(**inputs, path=path).score
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"a tree_of_thoughts scorer returns a number; got {type(value).__name__} {value!r}"
            )
        return float(value)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        ids = itertools.count()
        root = ThoughtNode(next(ids), None, 0, "", [], 0.0, kept=True)
        tree = [root]
        frontier = [root]
        for level in range(1, self.depth + 1):
            numbered = [(next(ids), parent) for parent in frontier for _ in range(self.breadth)]

            def expand(node_id: int, parent: ThoughtNode, level: int = level) -> ThoughtNode:
                def run() -> ThoughtNode:
                    # rollout_id keeps the breadth siblings distinct samples, not one cached answer.
                    thought = str(
                        self.propose(**inputs, path=parent.path, config={"rollout_id": node_id}).thought
                    )
                    path = [*parent.path, thought]
                    node = ThoughtNode(node_id, parent.id, level, thought, path, self.score(inputs, path))
                    annotate(depth=level, parent=parent.id, thought=thought, score=node.score)
                    return node

                result: ThoughtNode = Node(f"node {level}.{node_id}", run)()
                return result

            calls: list[Callable[[], ThoughtNode]] = [functools.partial(expand, n, p) for n, p in numbered]
            children = run_parallel(calls, self.num_threads)
            tree.extend(children)
            ranked = sorted(children, key=lambda node: -node.score)  # stable: ties keep creation order
            frontier = ranked[: self.beam]
            for node in frontier:
                node.kept = True
        best = frontier[0]
        answer = self.finish(**inputs, path=best.path)
        nodes = [node.to_json() for node in tree]
        annotate(tree=nodes, best=best.id)
        return dspy.Prediction(
            **{name: answer.get(name) for name in answer},
            path=best.path,
            score=best.score,
            tree=nodes,
        )
