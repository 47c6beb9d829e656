"""Every catalog module builds through the catalog and runs offline on the scripted engine.

Code-executing modules run with ``interpreter="local"`` here: the default sandbox needs Deno and a Pyodide
download, which an offline test cannot have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dspy
import pytest

from dspex.modules import ToolRegistry, build_module, module_names
from dspex.testing.engine import ScriptedEngine


def _run_predict(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    module = build_module("predict", "question -> answer", temperature=0.2, config={"n": 1})
    assert isinstance(module, dspy.Predict)
    assert module.config == {"temperature": 0.2, "n": 1}
    with dspy.context(lm=engine.lm()):
        assert module(question="hi").answer == "HI"


def _run_chain_of_thought(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"reasoning": "Paris is the capital.", "answer": "Paris"})
    module = build_module("chain_of_thought", "question -> answer", max_tokens=200)
    with dspy.context(lm=engine.lm()):
        pred = module(question="Capital of France?")
    assert (pred.reasoning, pred.answer) == ("Paris is the capital.", "Paris")
    assert module.predict.config == {"max_tokens": 200}


def _run_multi_chain_comparison(registry: ToolRegistry) -> None:
    seen: list[dict[str, Any]] = []

    def answer(inputs: dict[str, Any]) -> str:
        seen.append(inputs)
        return "4"

    engine = ScriptedEngine({"rationale": "Both attempts add 2 and 2.", "answer": answer})
    # DSPy's MultiChainComparison builds its fields with the deprecated prefix= argument.
    with pytest.warns(DeprecationWarning, match="'prefix' argument"):
        module = build_module("multi_chain_comparison", "question -> answer", M=2, temperature=0.3)
    completions = [{"reasoning": "2 plus 2", "answer": "4"}, {"reasoning": "two twos", "answer": "5"}]
    with dspy.context(lm=engine.lm()):
        pred = module(completions=completions, question="2+2?")
    assert pred.answer == "4"
    assert "my prediction is 5" in seen[0]["reasoning_attempt_2"]
    assert module.predict.config == {"temperature": 0.3}


def _run_react(registry: ToolRegistry) -> None:
    engine = ScriptedEngine(
        {
            "next_tool_name": ["add", "finish"],
            "next_tool_args": [{"a": 2, "b": 3}, {}],
            "answer": lambda inputs: "5" if "5" in inputs["trajectory"] else "?",
        }
    )
    module = build_module("react", "question -> answer", registry=registry, tools=["add"], max_iters=3)
    with dspy.context(lm=engine.lm()):
        pred = module(question="What is 2 + 3?")
    assert pred.trajectory["observation_0"] == 5
    assert pred.answer == "5"


def _run_react_v2(registry: ToolRegistry) -> None:
    calls = [
        {"tool_calls": [{"name": "add", "args": {"a": 2, "b": 3}}]},
        {"tool_calls": [{"name": "submit", "args": {"answer": "5"}}]},
    ]
    engine = ScriptedEngine({"tool_calls": calls})
    module = build_module("react_v2", "question -> answer", registry=registry, tools=["add"])
    with dspy.context(lm=engine.lm()):
        pred = module(question="What is 2 + 3?")
    assert (pred.answer, pred.termination_reason) == ("5", "submit")
    first_results = pred.history.messages[0]["tool_calls"].tool_call_results.tool_call_results
    assert first_results[0].value == 5


def _run_program_of_thought(registry: ToolRegistry) -> None:
    engine = ScriptedEngine(
        {
            "generated_code": "```python\nresult = 6 * 7\nresult\n```",
            "answer": lambda inputs: inputs["code_output"],
        }
    )
    with pytest.warns(DeprecationWarning, match="ProgramOfThought is deprecated"):
        module = build_module("program_of_thought", "question -> answer", interpreter="local")
    with dspy.context(lm=engine.lm()):
        pred = module(question="What is 6 * 7?")
    assert pred.answer == "42"


def _run_code_act(registry: ToolRegistry) -> None:
    engine = ScriptedEngine(
        {"generated_code": ["```python\nprint(add(2, 3))\n```"], "finished": True, "answer": "5"}
    )
    with pytest.warns(DeprecationWarning, match="CodeAct is deprecated"):
        module = build_module(
            "code_act", "question -> answer", registry=registry, tools=["add"], interpreter="local"
        )
    with dspy.context(lm=engine.lm()):
        pred = module(question="What is 2 + 3?")
    # The code really ran: the interpreter printed the tool's result.
    assert json.loads(pred.trajectory["code_output_0"]).strip() == "5"
    assert pred.answer == "5"


def _run_rlm(registry: ToolRegistry) -> None:
    # RLM exposes tools to the generated code as keyword-only functions.
    engine = ScriptedEngine({"code": "```python\nSUBMIT(answer=shout(text=question))\n```"})
    module = build_module(
        "rlm", "question -> answer", registry=registry, tools=["shout"], max_iters=2, interpreter="local"
    )
    with dspy.context(lm=engine.lm()):
        pred = module(question="quiet")
    assert pred.answer == "QUIET"
    assert pred.trajectory[0]["code"] == "SUBMIT(answer=shout(text=question))"


def _run_flex(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: f"flex:{inputs['question']}"})
    module = build_module("flex", "question -> answer", interpreter="local", max_predictor_calls=5)
    # DSPy's own Flex bridge still calls the LM with messages=, which DSPy 3.4 deprecates.
    with dspy.context(lm=engine.lm()), pytest.warns(DeprecationWarning, match="messages= is deprecated"):
        assert module(question="q").answer == "flex:q"


def _run_best_of_n(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": ["bad", "good", "unused"]})
    module = build_module(
        "best_of_n",
        "question -> answer",
        registry=registry,
        module="predict",
        N=3,
        reward_fn="one_if_good",
        threshold=1.0,
    )
    with dspy.context(lm=engine.lm()):
        pred = module(question="q")
    assert pred.answer == "good"
    assert engine.calls == 2  # stopped at the first attempt reaching the threshold


def _run_refine(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": ["bad", "good"], "advice": {"self": "Answer 'good'."}})
    module = build_module(
        "refine",
        registry=registry,
        module={"module": "predict", "signature": "question -> answer"},
        N=2,
        reward_fn=lambda inputs, pred: 1.0 if pred.answer == "good" else 0.0,
        threshold=1.0,
    )
    with dspy.context(lm=engine.lm()):
        pred = module(question="q")
    assert pred.answer == "good"
    # After the low reward, the LM was asked for advice (DSPy's OfferFeedback step).
    assert [c.prompt.output_names for c in engine.history][1] == ("discussion", "advice")


def _run_parallel(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"] * 2})
    runner = build_module("parallel", num_threads=2, disable_progress_bar=True)
    qa = build_module("predict", "question -> answer")
    pairs = [(qa, {"question": q}) for q in ("a", "b", "c")]
    with dspy.context(lm=engine.lm()):
        results = runner(pairs)
    assert [r.answer for r in results] == ["aa", "bb", "cc"]


def _run_consensus(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": ["4", "5", "4"]})
    module = build_module("consensus", "question -> answer", modules=["predict", "predict", "predict"])
    with dspy.context(lm=engine.lm()):
        pred = module(question="2+2?")
    assert (pred.answer, pred.agreement) == ("4", 2 / 3)


def _run_self_correcting_cot(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"answer": ["5", "4"]})
    module = build_module(
        "self_correcting_cot", "question -> answer", validator=lambda i, p: p.answer == "4", temperature=0.1
    )
    with dspy.context(lm=engine.lm()):
        pred = module(question="2+2?")
    assert (pred.answer, pred.attempts, pred.passed) == ("4", 2, True)
    assert module.solve.predict.config == {"temperature": 0.1}


def _run_tree_of_thoughts(registry: ToolRegistry) -> None:
    engine = ScriptedEngine({"thought": "add", "score": 0.5, "answer": "4"})
    module = build_module("tree_of_thoughts", "question -> answer", breadth=2, depth=1, beam=1)
    with dspy.context(lm=engine.lm()):
        pred = module(question="2+2?")
    assert (pred.answer, pred.path, len(pred.tree)) == ("4", ["add"], 3)


SCENARIOS: dict[str, Callable[[ToolRegistry], None]] = {
    "consensus": _run_consensus,
    "self_correcting_cot": _run_self_correcting_cot,
    "tree_of_thoughts": _run_tree_of_thoughts,
    "predict": _run_predict,
    "chain_of_thought": _run_chain_of_thought,
    "multi_chain_comparison": _run_multi_chain_comparison,
    "react": _run_react,
    "react_v2": _run_react_v2,
    "program_of_thought": _run_program_of_thought,
    "code_act": _run_code_act,
    "rlm": _run_rlm,
    "flex": _run_flex,
    "best_of_n": _run_best_of_n,
    "refine": _run_refine,
    "parallel": _run_parallel,
}


def test_every_catalog_module_has_a_run_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(module_names())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_module_builds_and_runs_offline(name: str, registry: ToolRegistry) -> None:
    SCENARIOS[name](registry)
