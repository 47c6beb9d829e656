"""What ``dspex demo`` does, as data: the CLI renders it, tests check it.

The demo builds signatures with the native engine, registers catalog modules as programs (promoting
their first version to production), and runs them over the simulated task against the simulated
OpenAI-compatible server, reached through the real ``dspy.LM`` HTTP client on 127.0.0.1. Every run
goes through :class:`~dspex.runtime.App` and is recorded in the project database (``.dspex/dspex.db``
unless configured), where ``dspex executions list`` shows it. Everything is offline and stops by
itself. ::

    report = run_demo(examples=12)
    report.modules[0].accuracy
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dspex.settings import Settings

__all__ = [
    "DEMO_SIGNATURES",
    "DemoReport",
    "ModuleRow",
    "OptimizationDemo",
    "ResearchDemoRow",
    "SignatureRow",
    "run_demo",
]

DEMO_SIGNATURES: tuple[str, ...] = (
    "question -> answer",
    "context: list[str], question: str -> answer: str, confidence: float",
    "document -> summary, keywords: list[str], sentiment: Literal['positive', 'negative', 'neutral']",
    "claims: dict[str, list[int]], threshold: Optional[float] -> verdict: bool",
)
DEMO_MODULES: tuple[str, ...] = ("predict", "chain_of_thought")
DEMO_MODELS: tuple[str, ...] = ("sim-small", "sim-medium", "sim-large")
RESEARCH_MODEL = "sim-large"


@dataclass(frozen=True, slots=True)
class SignatureRow:
    """A signature string and the fields the engine parsed from it."""

    spec: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ModuleRow:
    """One catalog module on one simulated model, over the demo examples."""

    module: str
    model: str
    examples: int
    correct: int
    expected_accuracy: float
    mean_latency_ms: float
    tokens: int
    cost_usd: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0


@dataclass(frozen=True, slots=True)
class ResearchDemoRow:
    """One question through the research-assistant pipeline, run and recorded by the App."""

    question: str
    answer: str
    gold: str | None
    citations: tuple[str, ...]
    spans: int  # in the recorded trace: the pipeline, its steps, their DSPy modules and LM calls
    duration_ms: float
    execution_id: str

    @property
    def correct(self) -> bool:
        return self.gold is not None and self.answer.strip() == self.gold


@dataclass(frozen=True, slots=True)
class OptimizationDemo:
    """The holistic optimizer on the demo program: the production version's default configuration
    (before) against the best one found (after), measured on held-out examples the search never saw."""

    program: str
    optimization_id: str
    trials: int
    pruned: int
    lm_calls: int
    devset: int
    heldout: int
    before: dict[str, Any]
    after: dict[str, Any]
    before_quality: float
    after_quality: float
    before_expected: float  # the simulated task's exact expected accuracy of each configuration
    after_expected: float
    before_cost_per_example: float
    after_cost_per_example: float
    version_id: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class DemoReport:
    """Everything the demo did."""

    signatures: tuple[SignatureRow, ...]
    modules: tuple[ModuleRow, ...]
    server_url: str
    requests: int
    programs: tuple[tuple[str, str], ...]  # (name, production version id)
    database_url: str
    recorded: int
    research: tuple[ResearchDemoRow, ...] = ()
    research_model: str = RESEARCH_MODEL
    optimization: OptimizationDemo | None = None


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    text = str(annotation)
    return name if name and "[" not in text else text.replace("typing.", "")


def _signature_rows(specs: Sequence[str]) -> tuple[SignatureRow, ...]:
    from dspex.signatures import signature

    rows = []
    for spec in specs:
        sig = signature(spec)
        rows.append(
            SignatureRow(
                spec,
                tuple((n, _type_name(f.annotation)) for n, f in sig.input_fields.items()),
                tuple((n, _type_name(f.annotation)) for n, f in sig.output_fields.items()),
            )
        )
    return tuple(rows)


def run_demo(
    *,
    examples: int = 12,
    modules: Sequence[str] = DEMO_MODULES,
    models: Sequence[str] = DEMO_MODELS,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
    optimize_trials: int = 16,
) -> DemoReport:
    """Build signatures, register and run programs on the simulated LM server; see the module docstring."""
    from dspex.lm.pricing import Price, Prices
    from dspex.runtime import App
    from dspex.testing.server import SimServer
    from dspex.testing.simtask import DEFAULT_PROFILES, expected_accuracy, load_task

    say = progress or (lambda _message: None)
    signature_rows = _signature_rows(DEMO_SIGNATURES)
    items = load_task().examples()[:examples]
    prices = Prices({p.name: Price(p.input_price, p.output_price) for p in DEFAULT_PROFILES.values()})
    rows: list[ModuleRow] = []
    programs: list[tuple[str, str]] = []
    with SimServer() as server, App(settings, prices=prices) as app:
        say(f"simulated OpenAI-compatible server on {server.url}")
        for module_name in modules:
            name = f"demo-{module_name.replace('_', '-')}"
            version = app.programs.register(
                name,
                {"module": module_name, "signature": "question -> answer"},
                description=f"dspex demo: {module_name} over the simulated task",
            )
            if version.status != "production":  # a second demo finds its programs already promoted
                app.programs.promote(name, version.id)
            programs.append((name, version.id))
            for model in models:
                say(f"running {name} on {model} over {len(items)} examples")
                lm = server.lm(model, cache=False)
                correct, elapsed, tokens, cost = 0, 0.0, 0, 0.0
                for example in items:
                    result = app.run(name, example.inputs(), lm=lm)
                    elapsed += result.duration_ms
                    correct += str(result.outputs.get("answer", "")).strip() == example.answer
                    tokens += sum(int(u["total_tokens"]) for u in result.usage.values())
                    cost += result.cost_usd or 0.0
                rows.append(
                    ModuleRow(
                        module=module_name,
                        model=model,
                        examples=len(items),
                        correct=correct,
                        expected_accuracy=expected_accuracy(
                            model, reasoning=module_name == "chain_of_thought"
                        ),
                        mean_latency_ms=elapsed / max(1, len(items)),
                        tokens=tokens,
                        cost_usd=cost,
                    )
                )
        research = _research(app, server, say)
        optimization = _optimize(app, server, prices, optimize_trials, say) if optimize_trials else None
        app.flush()
        recorded = app.executions.count()
        requests = server.stats().total_requests
        url = server.url
    return DemoReport(
        signatures=tuple(signature_rows),
        modules=tuple(rows),
        server_url=url,
        requests=requests,
        programs=tuple(programs),
        database_url=app.settings.resolved_database_url,
        recorded=recorded,
        research=research,
        optimization=optimization,
    )


def _research(app: Any, server: Any, say: Callable[[str], None]) -> tuple[ResearchDemoRow, ...]:
    """The research-assistant pipeline (parallel retrieval, rerank, comparison, citations) on a few
    task questions, each run recorded with one span per step."""
    from dspex.examples.research_assistant import build_pipeline, default_questions

    pipeline = build_pipeline()
    lm = server.lm(RESEARCH_MODEL, cache=False)
    rows = []
    for question in default_questions(server.task):
        say(f"research assistant: {question}")
        result = app.run(pipeline, {"question": question}, lm=lm, program_name="research-assistant")
        app.flush()
        record = app.executions.get(result.execution_id)
        spans = (record.trace or {}).get("spans", []) if record is not None else []
        gold = server.task.lookup(question)
        rows.append(
            ResearchDemoRow(
                question=question,
                answer=str(result.outputs.get("answer", "")),
                gold=gold.answer if gold is not None else None,
                citations=tuple(str(c["id"]) for c in result.outputs.get("citations", [])),
                spans=len(spans),
                duration_ms=result.duration_ms,
                execution_id=result.execution_id,
            )
        )
    return tuple(rows)


OPTIMIZED_PROGRAM = "demo-qa"


def _optimize(
    app: Any, server: Any, prices: Any, n_trials: int, say: Callable[[str], None]
) -> OptimizationDemo:
    """Register a program carrying 8 demos, search its model, temperature, module type and number of
    demos on a dev split with pruning, and compare the default configuration with the best on held-out examples."""
    import time

    from dspex.optimize import Evaluator, exact_match
    from dspex.testing.simtask import expected_accuracy
    from dspex.variables import Variable, VariableSpace, apply, bind

    started = time.perf_counter()
    examples = server.task.examples()
    train, dev, heldout = examples[200:208], examples[120:150], examples[150:200]
    registered = app.programs.register(
        OPTIMIZED_PROGRAM,
        {"module": "predict", "signature": "question -> answer"},
        description="dspex demo: the program the optimizer tunes",
    )
    program = app.programs.build(registered)
    program.demos = list(train)
    production = app.programs.save_version(OPTIMIZED_PROGRAM, program, note="8 demos from the task")
    if production.status != "production":
        app.programs.promote(OPTIMIZED_PROGRAM, production.id)
    rows = [{**e.toDict(), "part": "dev"} for e in dev] + [{**e.toDict(), "part": "train"} for e in train]
    app.datasets.import_records(OPTIMIZED_PROGRAM, rows, inputs=["question"], split="part")
    space = VariableSpace(
        [
            Variable.model("model", [f"openai/{m}" for m in DEMO_MODELS], default="openai/sim-medium"),
            Variable.float("temperature", 0.0, 1.5, step=0.1, default=1.0),
            Variable.module_type("module", ["predict", "chain_of_thought"], default="predict"),
            Variable.int("demos", 0, 8, default=0),
        ]
    )
    bindings = [
        bind.model("model"),
        bind.temperature("temperature"),
        bind.module_type("module"),
        bind.demos("demos"),
    ]
    lms = {f"openai/{m}": server.lm(m, cache=False) for m in DEMO_MODELS}

    def progress(p: Any) -> None:
        say(f"optimizing {OPTIMIZED_PROGRAM}: {p.finished}/{p.n_trials} trials, {p.lm_calls} LM calls")

    result = app.optimize(
        OPTIMIZED_PROGRAM,
        dataset=OPTIMIZED_PROGRAM,
        space=space,
        bindings=bindings,
        n_trials=n_trials,
        lms=lms,
        version_id=production.id,
        on_trial=progress,
    )
    say("scoring before and after on held-out examples")
    evaluator = Evaluator(exact_match, concurrency=8, cache=False)
    before_config = space.defaults()
    before_program = apply(app.programs.build(production), before_config, bindings, lms=lms)
    measured = []
    for configured in (before_program, result.program):
        run = evaluator.run(configured, heldout)
        cost = sum(
            prices.cost(model, u.get("prompt_tokens", 0), u.get("completion_tokens", 0)) or 0.0
            for model, u in run.usage.items()
        )
        measured.append((run.score, cost / max(1, run.n)))
    after_config = result.best_configuration

    def expected(config: Any) -> float:
        reasoning = config["module"] == "chain_of_thought"
        return expected_accuracy(config["model"], config["temperature"], reasoning, config["demos"])

    assert result.version_id is not None  # saved with the registry
    return OptimizationDemo(
        program=OPTIMIZED_PROGRAM,
        optimization_id=result.id,
        trials=result.finished,
        pruned=sum(t.state == "pruned" for t in result.trials),
        lm_calls=result.lm_calls,
        devset=len(dev),
        heldout=len(heldout),
        before=before_config.to_json(),
        after=after_config.to_json(),
        before_quality=measured[0][0],
        after_quality=measured[1][0],
        before_expected=expected(before_config),
        after_expected=expected(after_config),
        before_cost_per_example=measured[0][1],
        after_cost_per_example=measured[1][1],
        version_id=result.version_id,
        duration_s=time.perf_counter() - started,
    )
