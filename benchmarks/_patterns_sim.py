"""Checkable tasks and a simulated solver with a fixed per-call accuracy, for ``benchmarks/patterns.py``.

The solver is a set of :class:`~dspex.testing.ScriptedEngine` rules. Every LM call, whatever module or
pattern makes it, is one independent draw that is right with probability ``p`` and otherwise a plausible
wrong answer:

- an answer (``answer``, ``expression``): right with ``p``; a correction call ignores the critique and the
  rejected attempt (the LM learns nothing from them), so a pattern gains only by sampling again and
  checking;
- a judgement (a critic's ``ok``, a tree's ``score``, a judge's ``choice``): the truth with ``p``, else
  the opposite (or another candidate);
- a tree thought: one step of a solution. A solution of ``k`` steps is right with ``p`` in one chain of
  thought call, so each step is right with ``p ** (1 / k)`` (a chain of k right steps is right with ``p``):
  one unit of reasoning is as reliable in a tree as in a chain;
- ``finish`` of a tree copies the conclusion of the path it is given (a transcription, not a solving step).

So no pattern gets a smarter LM: gains can come only from validation, search or voting themselves.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dspex.testing import ScriptedEngine

__all__ = ["TASKS", "Task", "solver_engine"]


@dataclass(frozen=True)
class Task:
    """A task: questions with gold answers, how the solver errs, and the checks a pattern may use."""

    name: str
    signature: str
    items: dict[str, Any]  # question -> gold
    gold: Callable[[str], Any]
    sample: Callable[[str, random.Random, float], tuple[str, str]]  # (reasoning, answer) of one call
    correct: Callable[[str, str], bool]  # is this answer right (for scoring and for judges' truth)
    check: Callable[[dict[str, Any], Any], tuple[bool, str]] | None  # a validator that never sees gold
    propose: Callable[[str, list[str], random.Random, float], str]  # one tree thought
    promising: Callable[[str, list[str]], bool]  # the truth a tree scorer estimates
    conclude: Callable[[str, list[str]], str]  # the answer a path leads to
    steps: int = 1  # reasoning steps in a full solution (a tree's depth)
    metric: Callable[[dict[str, Any], list[str]], float] | None = None  # a tree scorer that never sees gold


# -- arithmetic word problems ---------------------------------------------------------------------------

_NAMES = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo")
_THINGS = ("apples", "coins", "stamps", "marbles")


def _arith_items(n: int, rng: random.Random) -> dict[str, list[tuple[str, int]]]:
    items: dict[str, list[tuple[str, int]]] = {}
    while len(items) < n:
        who, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        start = rng.randint(5, 40)
        ops = [(rng.choice("+-*"), rng.randint(2, 9)) for _ in range(3)]
        words = {"+": "gets {} more", "-": "gives away {}", "*": "multiplies them by {}"}
        text = f"{who} has {start} {thing}, " + ", then ".join(words[o].format(v) for o, v in ops) + "."
        items[text + " How many now?"] = [("start", start), *[(o, v) for o, v in ops]]
    return items


def _arith_steps(ops: list[tuple[str, int]]) -> list[tuple[int, str, int, int]]:
    value = ops[0][1]
    steps = []
    for op, v in ops[1:]:
        result = value + v if op == "+" else value - v if op == "-" else value * v
        steps.append((value, op, v, result))
        value = result
    return steps


def _arith_sample(ops: list[tuple[str, int]], rng: random.Random, p: float) -> tuple[str, str]:
    steps = _arith_steps(ops)
    if rng.random() < p:
        lines = [f"{a} {o} {b} = {r}" for a, o, b, r in steps]
        return "; ".join(lines), str(steps[-1][3])
    # Wrong: 70% an arithmetic slip in one step (the written equation is false), 30% a misread operand
    # (every written equation is true, but of the wrong problem): a step checker catches only the first.
    k = rng.randrange(len(steps))
    lines, value = [], steps[0][0]
    slip = rng.random() < 0.7
    for i, (_, o, b, _) in enumerate(steps):
        b2 = b + rng.choice((-1, 1)) if (i == k and not slip) else b
        true = value + b2 if o == "+" else value - b2 if o == "-" else value * b2
        written = true + rng.choice((-2, -1, 1, 2)) if (i == k and slip) else true
        lines.append(f"{value} {o} {b2} = {written}")
        value = written
    return "; ".join(lines), str(value)


def _arith_check(inputs: dict[str, Any], prediction: Any) -> tuple[bool, str]:
    """Re-does every equation the reasoning wrote (never the gold answer): catches slips, not misreads."""
    for a, o, b, r in re.findall(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)", str(prediction.reasoning)):
        x, y = int(a), int(b)
        if {"+": x + y, "-": x - y, "*": x * y}[o] != int(r):
            return False, f"{a} {o} {b} is not {r}"
    return True, ""


# -- Game of 24 ------------------------------------------------------------------------------------------

_OPS = ("+", "-", "*", "/")


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "/" and b == 0:
        return None
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def _moves(nums: tuple[Fraction, ...]) -> list[tuple[str, tuple[Fraction, ...]]]:
    moves = []
    for i, j in itertools.permutations(range(len(nums)), 2):
        rest = tuple(n for k, n in enumerate(nums) if k not in (i, j))
        for op in _OPS:
            r = _apply(nums[i], op, nums[j])
            if r is not None:
                moves.append((f"{nums[i]} {op} {nums[j]} = {r}", (*rest, r)))
    return moves


def _solvable(nums: tuple[Fraction, ...], memo: dict[tuple[Fraction, ...], bool]) -> bool:
    key = tuple(sorted(nums))
    if key not in memo:
        memo[key] = nums[0] == 24 if len(nums) == 1 else any(_solvable(n, memo) for _, n in _moves(nums))
    return memo[key]


def _state(question: str, path: list[str]) -> tuple[Fraction, ...]:
    nums = [Fraction(x) for x in re.findall(r"\d+", question.split(" once")[0])]
    for step in path:
        m = re.match(r"(\S+) (\S) (\S+) = (\S+)", step)
        if m is None:
            return ()
        a, _, b, r = (m.group(1), m.group(2), m.group(3), m.group(4))
        for v in (Fraction(a), Fraction(b)):
            if v not in nums:
                return ()
            nums.remove(v)
        nums.append(Fraction(r))
    return tuple(nums)


_MEMO24: dict[tuple[Fraction, ...], bool] = {}


def _g24_items(n: int, rng: random.Random) -> dict[str, list[int]]:
    items: dict[str, list[int]] = {}
    while len(items) < n:
        nums = [rng.randint(1, 13) for _ in range(4)]
        if _solvable(tuple(Fraction(x) for x in nums), _MEMO24):
            items[f"Use {' '.join(map(str, nums))} once each with + - * / to make 24."] = nums
    return items


def _g24_propose(question: str, path: list[str], rng: random.Random, p: float) -> str:
    state = _state(question, path)
    moves = _moves(state) if len(state) > 1 else []
    if not moves:
        return "no move left"
    good = [m for m, nxt in moves if _solvable(nxt, _MEMO24)]
    bad = [m for m, nxt in moves if not _solvable(nxt, _MEMO24)]
    if good and (rng.random() < p or not bad):
        return rng.choice(good)
    return rng.choice(bad) if bad else rng.choice(good)


def _g24_sample(question: str, rng: random.Random, p: float) -> tuple[str, str]:
    path: list[str] = []
    right = rng.random() < p
    while len(_state(question, path)) > 1:
        # One draw decides the whole answer: a solving sequence (right) or one that misses 24 (wrong).
        path.append(_g24_propose(question, path, rng, 1.0 if right else 0.0))
    return "; ".join(path), _g24_conclude(question, path)


def _g24_conclude(question: str, path: list[str]) -> str:
    state = _state(question, path)
    return "; ".join(path) if len(state) == 1 else "no solution found"


def _g24_correct(question: str, answer: str) -> bool:
    steps = [s.strip() for s in answer.split(";")]
    state = _state(question, steps)
    for step in steps:  # every equation must be true
        m = re.match(r"(\S+) (\S) (\S+) = (\S+)", step)
        if m is None or _apply(Fraction(m.group(1)), m.group(2), Fraction(m.group(3))) != Fraction(
            m.group(4)
        ):
            return False
    return len(state) == 1 and state[0] == 24


def _g24_check(inputs: dict[str, Any], prediction: Any) -> tuple[bool, str]:
    """The task's own rule, checkable without a gold answer: the steps use the numbers and reach 24."""
    ok = _g24_correct(str(inputs["question"]), str(prediction.answer))
    return ok, "" if ok else "the steps do not use each number once to reach 24"


def _g24_metric(inputs: dict[str, Any], path: list[str]) -> float:
    """A tree scorer from the task's rule alone: a finished path scores 1 if it reaches 24, else 0; an
    unfinished one 0.5 (the rule cannot tell yet)."""
    state = _state(str(inputs["question"]), path)
    if len(state) != 1:
        return 0.5 if state else 0.0
    return 1.0 if state[0] == 24 else 0.0


# -- multi-hop questions ---------------------------------------------------------------------------------

_PEOPLE = [
    f"{a} {b}" for a in ("Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus") for b in ("Ng", "Ortiz", "Park")
]
_FILMS = [
    f"{a} {b}"
    for a in (
        "Red",
        "Silent",
        "Last",
        "Blue",
        "Iron",
        "Paper",
        "Quiet",
        "Wild",
        "Glass",
        "Night",
        "Cold",
        "Late",
        "Golden",
        "Hidden",
        "Small",
    )
    for b in (
        "River",
        "Harbor",
        "Summer",
        "Code",
        "Letter",
        "Garden",
        "Signal",
        "Tide",
        "Crown",
        "Road",
        "Bridge",
        "Mirror",
        "Engine",
        "Winter",
        "Island",
        "Ledger",
        "Orchard",
        "Lantern",
        "Falcon",
        "Gate",
    )
]


def _hop_items(n: int, rng: random.Random) -> dict[str, tuple[str, str]]:
    items: dict[str, tuple[str, str]] = {}
    films = rng.sample(_FILMS, min(n, len(_FILMS)))
    for film in films:
        director, spouse = rng.sample(_PEOPLE, 2)
        items[f"Who is married to the director of {film}?"] = (director, spouse)
    return items


def _hop_wrong(bridge: str, gold: str, rng: random.Random) -> str:
    # Half the time the bridge entity itself (the classic multi-hop slip), else a random person.
    return bridge if rng.random() < 0.5 else rng.choice([x for x in _PEOPLE if x != gold])


# -- the solver ------------------------------------------------------------------------------------------


def make_tasks(n: int, seed: int) -> dict[str, Task]:
    rng = random.Random(seed)
    arith = _arith_items(n, rng)
    g24 = _g24_items(n, rng)
    hops = _hop_items(n, rng)
    return {
        "arithmetic": Task(
            "arithmetic",
            "question -> answer",
            arith,
            lambda q: str(_arith_steps(arith[q])[-1][3]),
            lambda q, r, p: _arith_sample(arith[q], r, p),
            lambda q, a: a.strip() == str(_arith_steps(arith[q])[-1][3]),
            _arith_check,
            # A thought is a full worked answer; the path's last thought is the conclusion.
            lambda q, path, r, p: "answer {1} ({0})".format(*_arith_sample(arith[q], r, p)),
            lambda q, path: path[-1].split()[1] == str(_arith_steps(arith[q])[-1][3]),
            lambda q, path: path[-1].split()[1],
        ),
        "game24": Task(
            "game24",
            "question -> answer",
            g24,
            lambda q: "24",
            _g24_sample,
            _g24_correct,
            _g24_check,
            _g24_propose,
            lambda q, path: len(_state(q, path)) >= 1 and _solvable(_state(q, path), _MEMO24),
            _g24_conclude,
            steps=3,
            metric=_g24_metric,
        ),
        "multihop": Task(
            "multihop",
            "question -> answer",
            hops,
            lambda q: hops[q][1],
            lambda q, r, p: (
                (f"directed by {hops[q][0]}", hops[q][1])
                if r.random() < p
                else (f"directed by {hops[q][0]}", _hop_wrong(hops[q][0], hops[q][1], r))
            ),
            lambda q, a: a.strip() == hops[q][1],
            None,  # nothing to check without the knowledge base: the critic is an LM
            lambda q, path, r, p: (
                (hops[q][0] if r.random() < p else r.choice(_PEOPLE))
                if not path
                else (
                    hops[q][1]
                    if path[0] == hops[q][0] and r.random() < p
                    else _hop_wrong(path[0], hops[q][1], r)
                )
            ),
            lambda q, path: path == [hops[q][0], hops[q][1]][: len(path)],
            lambda q, path: path[-1],
            steps=2,
        ),
    }


TASKS = ("arithmetic", "game24", "multihop")


def solver_engine(task: Task, p: float, seed: int) -> ScriptedEngine:
    """A scripted engine answering ``task``'s calls with per-call accuracy ``p`` (see the module doc)."""
    rng = random.Random(seed)
    lock = threading.Lock()
    pending: dict[tuple[int, str], str] = {}  # a call's reasoning drew its answer: keyed per thread

    def draw() -> float:
        with lock:
            return rng.random()

    class _R(random.Random):  # each call's draws come from the one seeded stream, under the lock
        def random(self) -> float:
            return draw()

    r = _R()

    def reasoning(inputs: dict[str, Any]) -> str:
        if "candidates" in inputs or "proposed_answer" in inputs:
            return "judging"
        question = str(inputs["question"])
        if "path" in inputs:  # finish: copy the path's conclusion
            pending[(threading.get_ident(), question)] = task.conclude(question, list(inputs["path"]))
            return "following the path"
        text, answer = task.sample(question, r, p)
        pending[(threading.get_ident(), question)] = answer
        return text

    def answer(inputs: dict[str, Any]) -> str:
        question = str(inputs["question"])
        key = (threading.get_ident(), question)
        if key in pending:
            return pending.pop(key)
        return task.sample(question, r, p)[1]

    def ok(inputs: dict[str, Any]) -> bool:
        proposed = str(inputs["proposed_answer"]).removeprefix("answer: ")
        truth = task.correct(str(inputs["question"]), proposed)
        return truth if r.random() < p else not truth

    def score(inputs: dict[str, Any]) -> float:
        truth = task.promising(str(inputs["question"]), list(inputs["path"]))
        return float(truth if r.random() < p else not truth)

    def thought(inputs: dict[str, Any]) -> str:
        return task.propose(str(inputs["question"]), list(inputs["path"]), r, p ** (1 / task.steps))

    def choice(inputs: dict[str, Any]) -> int:
        candidates = list(inputs["candidates"])
        right = [i for i, c in enumerate(candidates) if task.correct(str(inputs["question"]), str(c))]
        if right and r.random() < p:
            return right[0] + 1
        wrong = [i for i in range(len(candidates)) if i not in right] or list(range(len(candidates)))
        return int(r.choice(wrong)) + 1

    return ScriptedEngine(
        {
            "reasoning": reasoning,
            "answer": answer,
            "ok": ok,
            "critique": "the answer looks wrong; redo it",
            "score": score,
            "thought": thought,
            "choice": choice,
        }
    )
