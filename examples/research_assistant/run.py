"""Run the research assistant offline: a simulated OpenAI-compatible LM server on 127.0.0.1, real HTTP.

::

    python examples/research_assistant/run.py                        # sim-large, three task questions
    python examples/research_assistant/run.py --model sim-small --tokens
    python examples/research_assistant/run.py -q "Which city is the capital of Australia?"

Each question streams through the pipeline (``Pipeline.stream``): step events and, with ``--tokens``,
the LM's tokens as they arrive over SSE. The simulated server knows the right answer to its task's
questions and answers them right or wrong per the model's quality, so ``correct`` is meaningful.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# DSPy would otherwise try a 5 s remote price-map fetch on its first LM call; this example is offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex.examples.research_assistant import ResearchRow, run_example
from dspex.pipeline import Event, StepFailed, StepRetried, Token
from dspex.testing import SimServer


class _TokenPrinter:
    """Prints tokens as they arrive, with a ``[step.field]`` label whenever the stream switches field
    (the drafts run concurrently, so their tokens interleave)."""

    def __init__(self) -> None:
        self.current: tuple[str, str] | None = None

    def __call__(self, question: str, event: Event) -> None:
        if isinstance(event, Token):
            if (event.step, event.field) != self.current:
                self.current = (event.step, event.field)
                sys.stdout.write(f"\n  [{event.step}.{event.field}] ")
            sys.stdout.write(event.chunk)
            sys.stdout.flush()
        elif isinstance(event, StepRetried | StepFailed):
            print(f"\n  ! {event}")


def _print_row(row: ResearchRow) -> None:
    verdict = {True: "right", False: "wrong", None: "not a task question"}[row.correct]
    print(f"\nQ: {row.question}")
    print(f"   refined query: {row.refined_query}")
    print(f"   answer ({row.answer_source}, {verdict}; gold {row.gold!r}):")
    print("   " + row.text.replace("\n", "\n   "))
    print(f"   {len(row.steps)} steps, {row.tokens} streamed tokens, {row.duration_ms:.0f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start a simulated server, run the questions and print the answers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sim-large", help="sim-small, sim-medium or sim-large")
    parser.add_argument("-q", "--question", action="append", help="a question (repeatable)")
    parser.add_argument("--tokens", action="store_true", help="print the LM tokens as they stream")
    args = parser.parse_args(argv)
    with SimServer() as sim:
        print(f"simulated LM server on {sim.url}, model {args.model}")
        rows = run_example(
            sim.lm(args.model),
            args.question,
            task=sim.task,
            on_event=_TokenPrinter() if args.tokens else None,
        )
    for row in rows:
        _print_row(row)
    graded = [row.correct for row in rows if row.correct is not None]
    if graded:
        print(f"\n{sum(graded)}/{len(graded)} task questions answered right")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
