"""Self-scaffolding: an LM writes a pipeline spec for a task, DSPex checks and tests it, and iterates.

::

    result = scaffold(app, "Answer arithmetic word problems", tests, name="math")   # tests: ScaffoldCase list
    result.program, result.version_id, result.score       # the best spec, registered as a draft version
    dspex scaffold "Answer arithmetic word problems" --tests tests.jsonl --name math

Each iteration the proposer (a ``dspy.ChainOfThought``, run through ``app.run`` so every proposal is a
recorded run) reads the task, the catalog of modules it may use, the registered tools, the input and output
fields of the tests, and the feedback on its last proposal, and writes a pipeline spec in DSPex's YAML
format (:mod:`dspex.pipeline.spec`). The spec is data, never code: it is parsed and validated by the spec
parser against a registry of the App's registered functions with import paths turned off, under the
untrusted spec policy (no import paths, no local interpreter, no LM settings), and code-executing catalog
modules are refused. A rejected spec's error (with its path) is the next feedback; an accepted one runs on
every test case through ``app.run`` (recorded), and the failing cases (inputs, expected, got) are the next
feedback. The best-scoring spec (score: the share of expected output fields matched, compared after
trimming and case-folding) is registered as a ``draft`` version of program ``name``; promoting it is a
person's decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from dspex.errors import ConfigurationError, ExecutionError, RunError, SpecError, UserError

if TYPE_CHECKING:
    from dspex.runtime.app import App

__all__ = ["ScaffoldAttempt", "ScaffoldCase", "ScaffoldResult", "load_tests", "scaffold"]

MAX_FEEDBACK_CASES = 3
MAX_ITERATIONS = 20


@dataclass(frozen=True, slots=True)
class ScaffoldCase:
    """One test: inputs for the pipeline and the outputs expected from it."""

    inputs: dict[str, Any]
    expected: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScaffoldAttempt:
    """One proposal: the spec text, and either why it was rejected or how it scored."""

    iteration: int
    spec: str
    error: str | None
    score: float | None
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "spec": self.spec,
            "error": self.error,
            "score": self.score,
            "failures": self.failures,
        }


@dataclass(frozen=True, slots=True)
class ScaffoldResult:
    """The best spec found, registered as a draft, and every attempt."""

    program: str
    version_id: str
    score: float
    spec: dict[str, Any]
    attempts: list[ScaffoldAttempt]


class _Propose(dspy.Signature):  # type: ignore[misc]  # dspy.Signature is untyped
    """Write a DSPex pipeline spec (YAML) that performs the task on the given fields. Use only the listed
    catalog modules and tools. Reply with the YAML only: name, inputs, outputs and steps."""

    task: str = dspy.InputField()
    catalog: str = dspy.InputField(desc="modules and tools you may use, with their options")
    io_fields: str = dspy.InputField(desc="the pipeline's inputs and the outputs it must produce")
    feedback: str = dspy.InputField(desc="what was wrong with your previous spec; empty on the first try")
    spec: str = dspy.OutputField(desc="the pipeline spec, YAML")


_EXAMPLE = """name: example
inputs: [question]
outputs: [answer]
steps:
  - {name: solve, module: chain_of_thought, signature: "question -> answer"}"""


def load_tests(path: str | Path) -> list[ScaffoldCase]:
    """Test cases from a JSON Lines file, one ``{"inputs": {...}, "expected": {...}}`` per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read tests file {str(path)!r}: {exc.strerror}") from None
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"tests line {number} is not JSON: {exc}", line=number) from None
        cases.append(_case(data, f"line {number}", number))
    if not cases:
        raise ConfigurationError(f"tests file {str(path)!r} has no test cases")
    return cases


def _case(data: Any, where: str, line: int | None = None) -> ScaffoldCase:
    if not isinstance(data, Mapping) or set(data) != {"inputs", "expected"}:
        raise SpecError(f'a test case ({where}) is {{"inputs": {{...}}, "expected": {{...}}}}', line=line)
    for key in ("inputs", "expected"):
        if not isinstance(data[key], Mapping) or not data[key]:
            raise SpecError(
                f"{key} of the test case at {where} is a non-empty object of fields", path=key, line=line
            )
    return ScaffoldCase(dict(data["inputs"]), dict(data["expected"]))


def _catalog_text(app: App) -> str:
    from dspex.modules import catalog

    lines = ["modules (module: name, signature: 'inputs -> outputs', options: {...}):"]
    for entry in catalog().values():
        if entry.executes_code or entry.stability == "deprecated" or entry.name == "parallel":
            continue
        options = ", ".join(o.name for o in entry.options if o.name != "lms")
        lines.append(f"- {entry.name}: {entry.description} options: {options or 'none'}")
    tools = sorted(app.tools)
    lines.append("tools (for react, or as a step's function): " + (", ".join(tools) if tools else "none"))
    lines.append("constructs: parallel, when, map, pipeline. Example:\n" + _EXAMPLE)
    return "\n".join(lines)


def _strip_fences(text: str) -> str:
    match = re.search(r"```(?:ya?ml)?\s*\n(.*?)```", text, re.DOTALL)
    return (match.group(1) if match else text).strip()


def _matches(expected: Any, got: Any) -> bool:
    from dspex.modules.patterns.consensus import normalise_answer

    return normalise_answer(expected) == normalise_answer(got)


class _Scaffolder:
    def __init__(self, app: App, tests: Sequence[ScaffoldCase], lm: Any) -> None:
        from dspex.modules import ToolRegistry

        self.app, self.tests, self.lm = app, tests, lm
        registered = app.tools
        self.registry = ToolRegistry(
            {name: registered.resolve(name) for name in registered}, allow_import_paths=False
        )
        self.policy = app.spec_policy("untrusted")

    def check(self, text: str) -> tuple[dict[str, Any], Any]:
        """The parsed spec and its pipeline; ``SpecError`` (with the path) when it is not acceptable."""
        from dspex.modules import load_yaml
        from dspex.pipeline.spec import pipeline_from_spec

        data, _ = load_yaml(text)
        if not isinstance(data, Mapping):
            raise SpecError(f"a pipeline spec is a mapping with name and steps; got {type(data).__name__}")
        self.policy.check_pipeline_spec(data, allow_code=False)
        pipeline = pipeline_from_spec(data, registry=self.registry)
        needed = {name for case in self.tests for name in case.expected}
        missing = sorted(needed - set(pipeline.writes))
        if missing:
            raise SpecError(
                f"the pipeline never writes {', '.join(missing)}, which the tests expect", path="steps"
            )
        return dict(data), pipeline

    def evaluate(self, pipeline: Any) -> tuple[float, list[dict[str, Any]]]:
        total = 0.0
        failures: list[dict[str, Any]] = []
        for case in self.tests:
            try:
                outputs = self.app.run(pipeline, case.inputs, lm=self.lm).outputs
            except (RunError, UserError) as exc:  # recorded as a failed run; the LM learns why
                failures.append({"inputs": case.inputs, "expected": case.expected, "error": str(exc)[:500]})
                continue
            right = [k for k, v in case.expected.items() if _matches(v, outputs.get(k))]
            total += len(right) / len(case.expected)
            if len(right) < len(case.expected):
                got = {k: outputs.get(k) for k in case.expected}
                failures.append({"inputs": case.inputs, "expected": case.expected, "got": got})
        return total / len(self.tests), failures


def _feedback(attempt: ScaffoldAttempt) -> str:
    if attempt.error is not None:
        return (
            f"Your spec was rejected: {attempt.error}\nFix it and reply with the whole spec.\n{attempt.spec}"
        )
    cases = json.dumps(attempt.failures[:MAX_FEEDBACK_CASES], default=str)
    return (
        f"Your spec scored {attempt.score:.2f} on the tests. Failing cases (inputs, expected, got or error): "
        f"{cases}\nImprove it and reply with the whole spec.\n{attempt.spec}"
    )


def scaffold(
    app: App,
    task: str,
    tests: Sequence[ScaffoldCase] | str | Path,
    *,
    name: str,
    iterations: int = 3,
    lm: Any = None,
) -> ScaffoldResult:
    """Let the LM write a pipeline for ``task``, test it, iterate, and register the best as a draft."""
    if not isinstance(task, str) or not task.strip():
        raise ConfigurationError(
            "task is a description of what the pipeline should do, e.g. 'answer questions'"
        )
    if (
        isinstance(iterations, bool)
        or not isinstance(iterations, int)
        or not 1 <= iterations <= MAX_ITERATIONS
    ):
        raise ConfigurationError(f"iterations is an int from 1 to {MAX_ITERATIONS}, got {iterations!r}")
    cases = (
        load_tests(tests)
        if isinstance(tests, str | Path)
        else [
            _case(
                {"inputs": c.inputs, "expected": c.expected} if isinstance(c, ScaffoldCase) else c,
                f"tests[{i}]",
            )
            for i, c in enumerate(tests)
        ]
    )
    if not cases:
        raise ConfigurationError("scaffold needs at least one test case")
    inputs = sorted({k for c in cases for k in c.inputs})
    outputs = sorted({k for c in cases for k in c.expected})
    fields = f"inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)}"
    scaffolder = _Scaffolder(app, cases, lm)
    proposer = dspy.ChainOfThought(_Propose)
    catalog_text = _catalog_text(app)
    attempts: list[ScaffoldAttempt] = []
    best: tuple[float, dict[str, Any]] | None = None
    feedback = ""
    for iteration in range(iterations):
        proposal = app.run(
            proposer,
            {"task": task, "catalog": catalog_text, "io_fields": fields, "feedback": feedback},
            lm=lm,
        )
        text = _strip_fences(str(proposal.outputs.get("spec") or ""))
        try:
            spec, pipeline = scaffolder.check(text)
        except UserError as exc:  # SpecError, SignatureError, ConfigurationError: the spec is at fault
            attempt = ScaffoldAttempt(iteration, text, str(exc), None)
        else:
            score, failures = scaffolder.evaluate(pipeline)
            attempt = ScaffoldAttempt(iteration, text, None, score, failures)
            if best is None or score > best[0]:
                best = (score, spec)
        attempts.append(attempt)
        if attempt.score == 1.0:
            break
        feedback = _feedback(attempt)
    if best is None:
        raise ExecutionError(
            f"no acceptable pipeline spec in {iterations} iteration(s); the last was rejected: {attempts[-1].error}"
        )
    version = app.programs.register(
        name, {"pipeline": best[1]}, description=f"scaffolded: {task}"[:500], replace=True
    )
    return ScaffoldResult(name, version.id, best[0], best[1], attempts)
