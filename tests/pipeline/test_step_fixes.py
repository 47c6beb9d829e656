from __future__ import annotations

import asyncio
from typing import Any

from dspex.pipeline import Pipeline, parallel, step


def test_a_fallback_sees_the_fields_it_reads() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "context"

    def failing(question: str) -> str:
        raise RuntimeError("down")

    def backup(question: str, ctx: str) -> str:
        return f"{question} from {ctx}"

    guarded = step(failing, outputs="answer", fallback=step(backup, outputs="answer"))
    assert "ctx" in guarded.reads
    assert "ctx" not in guarded.required_reads
    pipeline = Pipeline([step(slow, outputs="ctx"), guarded], name="fallback_order")
    assert (
        pipeline(question="q").answer == "q from context"
    )  # waits for ctx although the step does not read it

    inside = Pipeline(
        [
            step(slow, outputs="ctx"),
            parallel(
                step(
                    failing,
                    name="a",
                    outputs="answer",
                    fallback=step(backup, name="a_backup", outputs="answer"),
                ),
                step(lambda question: "other", name="b", outputs="other"),
            ),
        ],
        name="fallback_in_parallel",
    )
    assert inside(question="q").answer == "q from context"


def test_callable_objects_with_async_call_are_awaited() -> None:
    class Shout:
        async def __call__(self, text: str) -> str:
            await asyncio.sleep(0)
            return text.upper()

    result: Any = Pipeline([step(Shout(), name="shout", outputs="loud")], name="objects")(text="hi")
    assert result.loud == "HI"
