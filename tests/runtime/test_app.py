from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.lm15 import AuthError, RateLimitError

from dspex import ConfigurationError, ExecutionError, LMError, Settings, ValidationError
from dspex.lm.pricing import Price, Prices
from dspex.runtime import App
from dspex.testing.engine import ScriptedEngine


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"answer": lambda inputs: str(inputs["question"]).upper()})


@pytest.fixture
def app(database_url: str, engine: ScriptedEngine, tmp_path: Path) -> Any:
    settings = Settings.load(home=tmp_path / "home", database_url=database_url)
    with App(settings, lm=engine.lm("qa"), prices=Prices({"qa": Price(1.0, 2.0)})) as app:
        yield app


def test_a_run_is_recorded_with_outputs_usage_cost_and_trace(app: App) -> None:
    result = app.run(dspy.ChainOfThought("question -> answer"), {"question": "hi"})
    assert result.outputs["answer"] == "HI"
    assert app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.status == "succeeded"
    assert record.inputs == {"question": "hi"}
    assert record.outputs is not None
    assert record.outputs["answer"] == "HI"
    assert record.duration_ms is not None
    assert record.duration_ms > 0
    assert record.ended_at is not None
    assert record.ended_at >= record.started_at
    usage = record.usage or {}
    assert usage["scripted/qa"]["calls"] == 1
    assert record.total_tokens == usage["scripted/qa"]["total_tokens"] > 0
    expected_cost = (
        usage["scripted/qa"]["prompt_tokens"] * 1.0 + usage["scripted/qa"]["completion_tokens"] * 2.0
    ) / 1e6
    assert record.cost_usd == pytest.approx(expected_cost)
    spans = (record.trace or {})["spans"]
    kinds = [span["kind"] for span in spans]
    assert kinds == ["module", "module", "lm"]  # the default trace level, lean: no adapter spans
    lm_span = next(span for span in spans if span["kind"] == "lm")
    assert lm_span["parent"] == 1  # the Predict inside ChainOfThought
    assert lm_span["inputs"]["messages"][-1]["role"] == "user"
    assert "HI" in lm_span["outputs"][0]
    assert lm_span["usage"]["total_tokens"] == record.total_tokens


def test_bad_inputs_raise_and_leave_a_failed_record(app: App) -> None:
    with pytest.raises(ValidationError, match="k: expected int") as info:
        app.run(dspy.Predict("question, k: int -> answer"), {"question": "x", "k": "abc"})
    app.flush()
    record = app.executions.get(info.value.execution_id)  # type: ignore[attr-defined]
    assert record is not None
    assert record.status == "failed"
    assert record.error is not None
    assert record.error["code"] == "validation_error"


def test_program_errors_are_wrapped_with_the_record_id(app: App) -> None:
    class Broken(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            raise ZeroDivisionError("boom")

    with pytest.raises(ExecutionError, match="program raised ZeroDivisionError: boom") as info:
        app.run(Broken(), {"question": "q"})
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    app.flush()
    record = app.executions.get(info.value.execution_id or "")
    assert record is not None
    assert record.status == "failed"
    assert record.error == {"type": "ZeroDivisionError", "message": "boom", "code": "execution_error"}


@pytest.mark.parametrize(
    ("error", "retryable"), [(AuthError("bad key"), False), (RateLimitError("slow"), True)]
)
def test_lm_failures_become_lm_errors(app: App, error: Exception, retryable: bool) -> None:
    def fail(inputs: dict[str, Any]) -> str:
        raise error

    lm = ScriptedEngine({"answer": fail}).lm("failing", num_retries=0)
    with pytest.raises(LMError) as info:
        app.run(dspy.Predict("question -> answer"), {"question": "q"}, lm=lm)
    assert info.value.retryable is retryable
    app.flush()
    record = app.executions.get(info.value.execution_id or "")
    assert record is not None
    assert record.status == "failed"
    assert record.error is not None
    assert record.error["code"] == "lm_error"
    assert record.error["retryable"] is retryable


def test_async_runs_native_and_asyncified(app: App) -> None:
    class NoAsync(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            return self.predict(question=question)

    async def main() -> list[str]:
        results = await asyncio.gather(
            app.arun(dspy.Predict("question -> answer"), {"question": "native"}),
            app.arun(NoAsync(), {"question": "threaded"}),
        )
        return [r.outputs["answer"] for r in results]

    assert asyncio.run(main()) == ["NATIVE", "THREADED"]
    app.flush()
    records = app.executions.find()
    assert sorted(r.status for r in records) == ["succeeded", "succeeded"]
    assert all(r.trace is None for r in records)  # summaries by default
    assert all(r.total_tokens for r in records)


def test_cancelled_runs_are_recorded(app: App) -> None:
    slow = ScriptedEngine({"answer": "late"}, latency=5.0)

    async def main() -> None:
        task = asyncio.ensure_future(
            app.arun(dspy.Predict("question -> answer"), {"question": "q"}, lm=slow.lm())
        )
        while not slow.calls:  # the LM call has started
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    app.flush()
    (record,) = app.executions.find()
    assert record.status == "cancelled"
    assert record.error is not None
    assert record.error["code"] == "cancelled"


def test_runs_never_configure_dspy_globally(app: App) -> None:
    app.run(dspy.Predict("question -> answer"), {"question": "q"})
    assert dspy.settings.lm is None
    assert not dspy.settings.callbacks


def test_an_outer_usage_tracker_still_sees_usage(app: App) -> None:
    with dspy.track_usage() as tracker:
        app.run(dspy.Predict("question -> answer"), {"question": "q"})
    assert tracker.get_total_tokens()["scripted/qa"]["total_tokens"] > 0


def test_prune_uses_retention_settings_unless_told_otherwise(database_url: str, tmp_path: Path) -> None:
    engine = ScriptedEngine({"answer": "a"})
    settings = Settings.load(home=tmp_path / "home", database_url=database_url, retention_per_program=2)
    with App(settings, lm=engine.lm()) as app:
        program = dspy.Predict("question -> answer")
        for i in range(5):
            app.run(program, {"question": str(i)}, program_name="qa")
        assert app.prune(traces_only=True) == 3
        assert app.executions.count() == 5
        assert app.prune() == 3
        assert app.executions.count() == 2
        assert app.prune(older_than_days=1) == 0  # everything left is recent


def test_tool_calls_are_spans_in_the_trace(app: App) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    engine = ScriptedEngine(
        {
            "next_thought": ["add them", "done"],
            "next_tool_name": ["add", "finish"],
            "next_tool_args": [{"a": 2, "b": 3}, {}],
            "answer": "5",
        }
    )
    agent = dspy.ReAct("question -> answer", tools=[add], max_iters=3)
    result = app.run(agent, {"question": "2 + 3?"}, lm=engine.lm("agent"))
    assert result.outputs["answer"] == "5"
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    spans = (record.trace or {})["spans"]
    tool = next(span for span in spans if span["kind"] == "tool" and span["name"] == "add")
    assert tool["inputs"]["kwargs"] == {"a": 2, "b": 3}
    assert tool["outputs"] == 5
    assert spans[tool["parent"]]["kind"] == "module"  # called from inside ReAct
    assert sum(1 for span in spans if span["kind"] == "lm") >= 3  # two steps and the extraction


def test_predictors_with_their_own_lm_need_no_default(database_url: str, tmp_path: Path) -> None:
    engine = ScriptedEngine({"answer": "own"})
    program = dspy.Predict("question -> answer")
    program.lm = engine.lm("own")
    with App(Settings.load(home=tmp_path / "home", database_url=database_url)) as app:
        assert app.run(program, {"question": "q"}).outputs["answer"] == "own"
        with pytest.raises(ConfigurationError, match="no language model configured"):
            app.run(dspy.Predict("question -> answer"), {"question": "q"})


def test_default_lm_comes_with_resilience_unless_asked_bare(app: App) -> None:
    from dspex.lm.resilient import ResilientLM

    program = dspy.Predict("question -> answer")
    bare = app.default_lm(program, wrap=False)
    assert not isinstance(bare, ResilientLM)
    assert bare is app.lm()
    wrapped = app.default_lm(program)
    assert isinstance(wrapped, ResilientLM)
    assert wrapped.primary is bare
    # A run on the App's LM still goes through resilience (its LM span says what served it).
    result = app.run(program, {"question": "q"})
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    lm_span = next(s for s in record.trace["spans"] if s["kind"] == "lm")
    assert lm_span["attrs"]["resilience"]["served_by"] == "scripted/qa"


def test_pipelines_are_validated_by_their_own_inputs(app: App) -> None:
    from dspex.pipeline import Pipeline, step

    pipeline = Pipeline(
        [step(dspy.Predict("question -> answer"), inputs={"question": "text"})], name="renamed"
    )
    assert app.run(pipeline, {"text": "hi"}).outputs["answer"] == "HI"
    with pytest.raises(ConfigurationError, match="needs input 'text'"):
        app.run(pipeline, {"question": "hi"})


def test_a_pipeline_of_functions_needs_no_lm(database_url: str, tmp_path: Path) -> None:
    from dspex.pipeline import Pipeline, step

    pipeline = Pipeline([step(lambda text: text[::-1], name="reverse", outputs="reversed")], name="plain")
    with App(Settings.load(home=tmp_path / "home", database_url=database_url)) as app:
        assert app.run(pipeline, {"text": "abc"}).outputs == {"reversed": "cba"}


def test_runs_using_dspy_parallel_record_every_worker(app: App) -> None:
    class FanOut(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            pairs = [
                (self.predict, dspy.Example(question=f"{question}{i}").with_inputs("question"))
                for i in range(3)
            ]
            outputs = dspy.Parallel(num_threads=3)(pairs)
            return dspy.Prediction(answer=",".join(o.answer for o in outputs))

    result = app.run(FanOut(), {"question": "q"})
    assert result.outputs["answer"] == "Q0,Q1,Q2"
    assert result.usage["scripted/qa"]["calls"] == 3  # usage from the worker threads belongs to the run
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    spans = (record.trace or {})["spans"]
    assert sum(1 for span in spans if span["kind"] == "lm") == 3
    assert [span["parent"] for span in spans].count(None) == 1  # one tree: worker spans hang under the root


def test_a_configuration_is_stored_with_the_execution(app: App) -> None:
    from dspex import Variable, VariableSpace
    from dspex.jsonable import canonical_hash

    space = VariableSpace([Variable.float("temperature", 0.0, 1.5, default=0.7), Variable.int("demos", 0, 8)])
    config = space.validate({"temperature": 0.3})
    result = app.run(dspy.Predict("question -> answer"), {"question": "q"}, variables=config)
    app.flush()
    record = app.executions.get(result.execution_id)
    assert record is not None
    assert record.variables == config.to_json()
    assert canonical_hash(record.variables) == config.id  # the stored JSON identifies the configuration


def test_runs_of_a_registered_version_share_its_loaded_instance_and_build_gives_a_copy(
    app: App, engine: ScriptedEngine
) -> None:
    """A version is loaded once; its runs call that instance from any thread (as dspy.Parallel and
    dspy.Evaluate share one module). A build() copy is the caller's own: changing it changes no run."""
    import threading

    version = app.programs.register(
        "shared", {"module": "chain_of_thought", "signature": "question -> answer"}
    )
    shared = app.programs.runnable(version)
    assert app.programs.runnable(version) is shared
    copy = app.programs.build(version)
    assert copy is not shared
    copy.predict.signature = copy.predict.signature.with_instructions("Answer in French.")
    copy.predict.demos = [dspy.Example(question="q", reasoning="r", answer="a")]
    assert shared.predict.demos == []
    assert "French" not in shared.predict.signature.instructions

    failures: list[str] = []

    def runs(worker: int) -> None:
        for i in range(15):
            question = f"w{worker} q{i}"
            result = app.run("shared", {"question": question})
            if result.outputs["answer"] != question.upper():
                failures.append(f"{question!r} got {result.outputs['answer']!r}")

    threads = [threading.Thread(target=runs, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert app.flush()
    records = app.executions.find(limit=200)
    assert sum(1 for r in records if r.program == "shared" and r.status == "succeeded") == 90
    # What was changed on the copy never reached a run: no prompt the LM saw had its demos or instructions.
    seen = list(engine.history)[-90:]
    assert len(seen) == 90
    assert all(call.prompt.demos == 0 and "French" not in call.prompt.instructions for call in seen)


def test_run_results_are_frozen_values(app: App) -> None:
    import dataclasses

    from dspex.runtime.run import RunResult

    result = app.run(dspy.Predict("question -> answer"), {"question": "q"})
    assert result.outputs == {"answer": "Q"}
    assert result.usage["scripted/qa"]["calls"] == 1
    assert (result.cache_hit, result.trace_id) == (False, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.outputs = {}  # type: ignore[misc]  # what this checks
    same = RunResult(
        result.execution_id,
        result.outputs,
        result.prediction,
        result.duration_ms,
        result.usage,
        result.cost_usd,
    )
    assert same == result
    assert dataclasses.replace(result, cache_hit=True).cache_hit is True
    assert [f.name for f in dataclasses.fields(RunResult)] == [
        "execution_id",
        "outputs",
        "prediction",
        "duration_ms",
        "usage",
        "cost_usd",
        "cache_hit",
        "trace_id",
    ]
