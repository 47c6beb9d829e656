"""What ``dspex demo`` does, as data: the CLI renders it, tests check it.

At this stage the demo builds signatures with the native engine, builds modules from the catalog, and
runs them over the simulated task against the simulated OpenAI-compatible server, reached through the
real ``dspy.LM`` HTTP client on 127.0.0.1. Everything is offline and stops by itself. ::

    report = run_demo(examples=12)
    report.modules[0].accuracy
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEMO_SIGNATURES", "DemoReport", "ModuleRow", "SignatureRow", "run_demo"]

DEMO_SIGNATURES: tuple[str, ...] = (
    "question -> answer",
    "context: list[str], question: str -> answer: str, confidence: float",
    "document -> summary, keywords: list[str], sentiment: Literal['positive', 'negative', 'neutral']",
    "claims: dict[str, list[int]], threshold: Optional[float] -> verdict: bool",
)
DEMO_MODULES: tuple[str, ...] = ("predict", "chain_of_thought")
DEMO_MODELS: tuple[str, ...] = ("sim-small", "sim-medium", "sim-large")


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
class DemoReport:
    """Everything the demo did."""

    signatures: tuple[SignatureRow, ...]
    modules: tuple[ModuleRow, ...]
    server_url: str
    requests: int


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
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Build signatures and modules and run them on the simulated LM server; see the module docstring."""
    import dspy

    from dspex.modules import build_module
    from dspex.testing.server import SimServer
    from dspex.testing.simtask import cost_usd, expected_accuracy, load_task

    say = progress or (lambda _message: None)
    signature_rows = _signature_rows(DEMO_SIGNATURES)
    task = load_task()
    items = task.examples()[:examples]
    rows: list[ModuleRow] = []
    with SimServer() as server:
        say(f"simulated OpenAI-compatible server on {server.url}")
        for module_name in modules:
            for model in models:
                say(f"running {module_name} on {model} over {len(items)} examples")
                program = build_module(module_name, "question -> answer")
                lm = server.lm(model, cache=False)
                correct, elapsed = 0, 0.0
                with dspy.context(lm=lm):
                    for example in items:
                        started = time.perf_counter()
                        prediction = program(**example.inputs())
                        elapsed += time.perf_counter() - started
                        correct += str(prediction.answer).strip() == example.answer
                usage = [entry.get("usage") or {} for entry in lm.history]
                prompt_tokens = sum(u.get("prompt_tokens") or 0 for u in usage)
                completion_tokens = sum(u.get("completion_tokens") or 0 for u in usage)
                rows.append(
                    ModuleRow(
                        module=module_name,
                        model=model,
                        examples=len(items),
                        correct=correct,
                        expected_accuracy=expected_accuracy(
                            model, reasoning=module_name == "chain_of_thought"
                        ),
                        mean_latency_ms=1000 * elapsed / max(1, len(items)),
                        tokens=prompt_tokens + completion_tokens,
                        cost_usd=cost_usd(model, prompt_tokens, completion_tokens),
                    )
                )
        requests = server.stats().total_requests
        url = server.url
    return DemoReport(tuple(signature_rows), tuple(rows), url, requests)
