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

__all__ = ["DEMO_SIGNATURES", "DemoReport", "ModuleRow", "ResearchDemoRow", "SignatureRow", "run_demo"]

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
