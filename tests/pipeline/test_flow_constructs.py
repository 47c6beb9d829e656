"""``parallel`` with merge rules, ``when`` and ``map``: behaviour and build-time errors."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest

from dspex.errors import ConfigurationError, StepError
from dspex.pipeline import MERGE_RULES, Pipeline, StepSkipped, map, parallel, step, when
from dspex.testing.engine import ScriptedEngine

DEADLOCK = 5.0


def _const(name: str, value: Any, field: str = "passages") -> Any:
    return step(lambda query: value, name=name, outputs=field)


# -- parallel --------------------------------------------------------------------------------------------


async def test_parallel_branches_run_concurrently() -> None:
    started = [asyncio.Event() for _ in range(3)]

    def branch(i: int) -> Any:
        async def run(query: str) -> str:
            started[i].set()
            for event in started:  # every branch waits for all three: only possible if they overlap
                await event.wait()
            return f"{query}{i}"

        return step(run, name=f"b{i}", outputs=f"out{i}")

    pipeline = Pipeline([parallel(branch(0), branch(1), branch(2))])
    result = await asyncio.wait_for(pipeline.acall(query="q"), DEADLOCK)
    assert result.toDict() == {"out0": "q0", "out1": "q1", "out2": "q2"}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("concat", ["a", "b", "c"]), ("first", ["a"]), ("last", "c"), (lambda values: len(values), 2)],
)
def test_merge_rules(rule: Any, expected: Any) -> None:
    pipeline = Pipeline(
        [
            parallel(
                _const("left", ["a"]),
                _const("right", "c" if rule == "last" else ["b", "c"]),
                merge={"passages": rule},
            )
        ],
    )
    assert pipeline(query="q").passages == expected


def test_concat_keeps_branch_order_not_finish_order() -> None:
    async def slow(query: str) -> list[str]:
        await asyncio.sleep(0.05)
        return ["slow"]

    async def fast(query: str) -> list[str]:
        return ["fast"]

    pipeline = Pipeline(
        [
            parallel(
                step(slow, outputs="passages"), step(fast, outputs="passages"), merge={"passages": "concat"}
            )
        ]
    )
    assert pipeline(query="q").passages == ["slow", "fast"]


def test_merge_rule_names_are_the_documented_ones() -> None:
    assert sorted(MERGE_RULES) == ["concat", "first", "last"]


def test_two_branches_writing_a_field_without_a_rule_is_a_build_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        parallel(_const("bm25", ["a"]), _const("keywords", ["b"]), name="retrieve")
    assert str(info.value) == (
        "parallel 'retrieve': branches ['bm25', 'keywords'] all write 'passages'; rename it in all but one "
        "branch (outputs={'passages': ...}) or give a merge rule: merge={'passages': 'concat'} (or 'first', "
        "'last', a callable)"
    )


def test_a_conflict_inside_a_sub_pipeline_branch_is_caught_too() -> None:
    with pytest.raises(
        ConfigurationError, match=r"branches \['left', 'parallel\[1\]'\] all write 'passages'"
    ):
        parallel(_const("left", ["a"]), [_const("inner", ["b"])])


def test_renaming_resolves_a_conflict() -> None:
    lm = ScriptedEngine({"answer": lambda inputs: inputs["question"] + "?"}).lm()
    branches = [step(dspy.Predict("question -> answer"), name=n) for n in ("a", "b")]
    with pytest.raises(ConfigurationError, match=r"branches \['a', 'b'\] all write 'answer'"):
        parallel(*branches)
    renamed = step(dspy.Predict("question -> answer"), name="b", outputs={"answer": "other"})
    pipeline = Pipeline([parallel(branches[0], renamed)])
    with dspy.context(lm=lm):
        assert pipeline(question="q").toDict() == {"answer": "q?", "other": "q?"}


def test_unknown_merge_rule_suggests_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        parallel(_const("a", [1]), _const("b", [2]), merge={"passages": "concatenate"}, name="p")
    message = str(info.value)
    assert message.startswith("parallel 'p': merge rule for 'passages': unknown merge rule 'concatenate'")
    assert "did you mean 'concat'?" in message
    assert "valid: concat, first, last" in message


def test_merge_rule_for_a_field_no_branch_writes_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"merge rules for \['pasages'\], which no branch writes"):
        parallel(_const("a", [1]), _const("b", [2]), merge={"passages": "concat", "pasages": "first"})


def test_parallel_needs_two_branches() -> None:
    with pytest.raises(ConfigurationError, match="needs at least two branches, got 1"):
        parallel(_const("a", [1]))


async def test_a_failing_branch_cancels_its_siblings() -> None:
    sibling_started, sibling_cancelled = asyncio.Event(), asyncio.Event()

    async def slow(query: str) -> str:
        sibling_started.set()
        try:
            await asyncio.Event().wait()  # forever
        finally:
            sibling_cancelled.set()
        return query

    async def broken(query: str) -> str:
        await sibling_started.wait()
        raise ValueError("no index")

    pipeline = Pipeline([parallel(step(slow, outputs="a"), step(broken, outputs="b"), name="both")])
    with pytest.raises(StepError, match=r"step 'broken' failed: ValueError: no index") as info:
        await asyncio.wait_for(pipeline.acall(query="q"), DEADLOCK)
    assert info.value.step == "broken"
    assert sibling_cancelled.is_set()


# -- when ------------------------------------------------------------------------------------------------


def _branching(condition: Any) -> Pipeline:
    return Pipeline(
        [
            when(
                condition,
                then=step(lambda text: text.upper(), name="loud", outputs="loud"),
                otherwise=step(lambda text: text.lower(), name="quiet", outputs="quiet"),
            ),
            step(lambda loud: loud + "!", name="exclaim", outputs="exclaimed"),
        ],
        name="branching",
    )


def test_when_on_a_field_runs_the_chosen_branch_only() -> None:
    pipeline = _branching("shout")
    taken = pipeline(text="Hi", shout=True)
    assert taken.toDict() == {"loud": "HI", "exclaimed": "HI!"}
    assert "step_errors" not in taken

    other = pipeline(text="Hi", shout=0)
    assert other.quiet == "hi"
    assert "loud" not in other  # the untaken branch's fields stay unset
    assert "exclaimed" not in other
    assert other.step_errors == {
        "exclaim": {
            "type": "Skipped",
            "code": "skipped",
            "message": "not run: fields ['loud'] were not produced",
        }
    }


async def test_when_with_a_function_condition_and_events() -> None:
    pipeline = _branching(lambda text: text.isupper())
    assert pipeline.local_inputs == ("text",)
    events = [e async for e in pipeline.stream(text="abc")]
    assert StepSkipped("exclaim", ("loud",)) in events
    assert events[-1].result.quiet == "abc"
    assert "loud" not in events[-1].result
    assert (await pipeline.acall(text="ABC")).exclaimed == "ABC!"


async def test_when_with_an_async_condition_and_no_otherwise() -> None:
    async def wanted(score: float) -> bool:
        return score > 0.5

    pipeline = Pipeline([when(wanted, then=[step(lambda score: score * 2, name="double", outputs="out")])])
    assert (await pipeline.acall(score=0.9)).out == 1.8
    assert (await pipeline.acall(score=0.1)).toDict() == {}


def test_when_takes_a_field_name_or_a_function() -> None:
    with pytest.raises(ConfigurationError, match="the condition is a field name or a function"):
        when(42, then=_const("a", 1))


# -- map -------------------------------------------------------------------------------------------------


async def test_map_respects_its_concurrency_limit_and_keeps_order() -> None:
    in_flight = peak = 0

    async def summarise(passage: str, style: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return f"{style}:{passage}"

    pipeline = Pipeline(
        [
            map(
                step(summarise, outputs="summary"),
                over="passages",
                item="passage",
                into="summaries",
                concurrency=3,
            )
        ]
    )
    assert pipeline.local_inputs == ("passages", "style")
    items = [f"p{i}" for i in range(10)]
    result = await pipeline.acall(passages=items, style="s")
    assert result.summaries == [f"s:p{i}" for i in range(10)]
    assert peak == 3


def test_map_collects_a_dict_per_item_when_the_step_writes_several_fields() -> None:
    pipeline = Pipeline(
        [
            map(
                step(lambda item: {"n": item, "sq": item * item}, name="sq", outputs=["n", "sq"]),
                over="numbers",
                into="rows",
            )
        ],
    )
    assert pipeline(numbers=[1, 2]).rows == [{"n": 1, "sq": 1}, {"n": 2, "sq": 4}]


def test_map_over_a_dspy_module() -> None:
    lm = ScriptedEngine({"answer": lambda inputs: inputs["question"][::-1]}).lm()
    pipeline = Pipeline([map(dspy.Predict("question -> answer"), over="questions", item="question")])
    with dspy.context(lm=lm):
        assert pipeline(questions=["ab", "cd"]).answer == ["ba", "dc"]


async def test_a_failing_item_fails_the_map_with_the_step_named() -> None:
    async def check(item: int) -> int:
        if item == 3:
            raise ValueError(f"bad item {item}")
        return item

    pipeline = Pipeline([map(step(check, outputs="ok"), over="items", name="checks")])
    with pytest.raises(StepError, match="step 'check' failed: ValueError: bad item 3") as info:
        await pipeline.acall(items=[1, 2, 3, 4])
    assert info.value.step == "check"


async def test_map_over_a_non_list_fails_the_map_step() -> None:
    pipeline = Pipeline([map(step(lambda item: item, name="echo", outputs="x"), over="items", name="fan")])
    with pytest.raises(StepError, match=r"step 'fan' failed: TypeError: .*'items' must be a list, got str"):
        await pipeline.acall(items="abc")


async def test_map_items_can_continue_on_error() -> None:
    async def check(item: int) -> int:
        if item % 2:
            raise ValueError("odd")
        return item

    pipeline = Pipeline([map(step(check, outputs="ok", continue_on_error=True), over="items", into="oks")])
    result = await pipeline.acall(items=[0, 1, 2])
    assert result.oks == [0, None, 2]
    assert result.step_errors["check"]["message"] == "odd"


def test_map_build_errors() -> None:
    with pytest.raises(
        ConfigurationError, match=r"does not read the item field 'item'; it reads \['passage'\]"
    ):
        map(step(lambda passage: passage, name="s", outputs="x"), over="passages")
    with pytest.raises(ConfigurationError, match=r"writes \['a', 'b'\]; name the result field: into="):
        map(step(lambda item: {}, name="s", outputs=["a", "b"]), over="items")
    with pytest.raises(ConfigurationError, match="concurrency must be >= 1, got 0"):
        map(step(lambda item: item, name="s", outputs="x"), over="items", concurrency=0)
