"""Programs and worker initializers of the pool tests (imported by name in the workers)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import dspy

_HOG: list[bytes] = []


def scripted() -> None:
    """A pool initializer: the worker's LM is a scripted engine answering ``answer to <question>``."""
    from dspex.testing import ScriptedEngine

    engine = ScriptedEngine({"answer": lambda inputs: f"answer to {inputs.get('question', '')}"})
    dspy.configure(lm=engine.lm(cache=False))  # process start-up: the one place configure belongs


class Sleepy(dspy.Module):
    """Answers after ``seconds`` (0 by default) with the worker's pid: for kills, timeouts and affinity."""

    def forward(self, question: str, seconds: float = 0.0) -> dspy.Prediction:
        time.sleep(seconds)
        return dspy.Prediction(answer=f"slept {seconds}", pid=os.getpid())


class Hog(dspy.Module):
    """Keeps ``mb`` more megabytes alive on every call: a leak."""

    def forward(self, mb: int, hold_s: float = 0.0) -> dspy.Prediction:
        _HOG.append(os.urandom(mb * 1024 * 1024))
        time.sleep(hold_s)
        return dspy.Prediction(held_mb=len(_HOG) * mb, pid=os.getpid())


def build_qa() -> Any:
    return dspy.ChainOfThought("question -> answer")


def build_sleepy() -> Sleepy:
    return Sleepy()


def build_hog() -> Hog:
    return Hog()


class Timed(dspy.Module):
    """Waits ``seconds`` (as a run waits on its LM) and says when it began and ended, in the worker."""

    def forward(self, question: str, seconds: float = 0.0) -> dspy.Prediction:
        began = time.time()
        time.sleep(seconds)
        return dspy.Prediction(began=began, ended=time.time(), pid=os.getpid())


def build_timed() -> Timed:
    return Timed()


class Chat(dspy.Module):
    """A chat turn that reports what history it was given (no LM: the answer is the history itself)."""

    def forward(self, question: str, history: dspy.History, seconds: float = 0.0) -> dspy.Prediction:
        time.sleep(seconds)
        asked = [m["question"] for m in history.messages]
        return dspy.Prediction(answer=f"turn {len(asked) + 1} after {asked}", pid=os.getpid())


def build_chat() -> Chat:
    return Chat()


class OptionalChat(dspy.Module):
    """A chat turn whose history is optional (``dspy.History | None``), as many programs declare it."""

    def forward(self, question: str, history: dspy.History | None = None) -> dspy.Prediction:
        asked = [m["question"] for m in history.messages] if history is not None else []
        return dspy.Prediction(answer=f"turn {len(asked) + 1} after {asked}")


def build_optional_chat() -> OptionalChat:
    return OptionalChat()


TURN_STARTED = threading.Event()  # set by GatedChat in the process that runs it (inline: the test's)


class GatedChat(Chat):
    """A chat turn that says when it starts (for tests that need a turn to be under way)."""

    def forward(self, question: str, history: dspy.History, seconds: float = 0.0) -> dspy.Prediction:
        TURN_STARTED.set()
        return super().forward(question, history, seconds)


def build_gated_chat() -> GatedChat:
    return GatedChat()


def build_pot() -> Any:
    import warnings

    with warnings.catch_warnings():  # deprecated in DSPy 3.4, still what users run code with
        warnings.simplefilter("ignore", DeprecationWarning)
        return dspy.ProgramOfThought("question -> answer")


class PromptAware:
    """Rules for a scripted engine whose answers depend on the prompt, so that MIPROv2's candidates score
    differently: ``PromptAware.engine()``. The answer to ``q<i>`` is right when the prompt has demos and
    ``i % 3``, or when the instructions say "carefully" and ``i`` is even; proposed instructions say
    "carefully" or not by a hash of what the proposer was given (deterministic, varied)."""

    @staticmethod
    def engine(*, sampling: bool = False, garbled: bool = False) -> Any:
        """``sampling``: also right on odd questions when sampled at temperature 1.0 (SIMBA's trajectory
        LMs), so SIMBA finds good and bad trajectories. ``garbled``: the answer to ``q5`` is text no
        adapter parses unless the instructions say "carefully" (a parse failure GEPA reflects on)."""
        import threading
        import zlib

        from dspex.testing import ScriptedEngine
        from dspex.testing.engine import ScriptedCall

        class Engine(ScriptedEngine):
            local = threading.local()

            def answer(self, request: Any) -> Any:
                self.local.temperature = request.config.temperature
                call = super().answer(request)
                if (
                    garbled
                    and call.outputs.get("answer") == "wrong"
                    and call.prompt.inputs.get("question") == "q5"
                ):
                    return ScriptedCall(call.prompt, call.outputs, "no fields here, garbled", call.usage)
                return call

            def _value(self, name: str, prompt: Any) -> Any:
                if name == "answer":
                    question = str(prompt.inputs.get("question", ""))
                    i = int(question[1:]) if question[1:].isdigit() else 0
                    right = (prompt.demos > 0 and i % 3 != 0) or (
                        "carefully" in prompt.instructions.lower() and i % 2 == 0
                    )
                    hot = getattr(self.local, "temperature", None) == 1.0
                    right = right or (sampling and hot and i % 2 == 1)
                    return f"answer to {question}" if right else "wrong"
                if name in (
                    "proposed_instruction",
                    "new_instruction",
                    "improved_instruction",
                ):  # proposers, GEPA
                    seed = zlib.crc32(repr(sorted(prompt.inputs.items())).encode())
                    return "Answer carefully." if seed % 2 else "Answer the question."
                return super()._value(name, prompt)

        return Engine({})


def prompt_aware() -> None:
    """A pool initializer: the worker's LM is :class:`PromptAware`'s engine."""
    dspy.configure(
        lm=PromptAware.engine().lm(cache=False)
    )  # process start-up: the one place configure belongs


def prompt_aware_sampling() -> None:
    """A pool initializer: :class:`PromptAware`'s engine with ``sampling``."""
    dspy.configure(lm=PromptAware.engine(sampling=True).lm(cache=False))  # process start-up


def prompt_aware_garbled() -> None:
    """A pool initializer: :class:`PromptAware`'s engine with ``garbled``."""
    dspy.configure(lm=PromptAware.engine(garbled=True).lm(cache=False))  # process start-up


class HeapInfo(dspy.Module):
    """The worker's garbage collector state: how many objects its start-up froze (see dspex._heap)."""

    def forward(self, question: str) -> dspy.Prediction:
        import gc

        return dspy.Prediction(answer=str(gc.get_freeze_count()), tracked=len(gc.get_objects()))


def build_heap_info() -> HeapInfo:
    return HeapInfo()
