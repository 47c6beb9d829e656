"""The simulated server through DSPy's real client path: dspy.LM(api_base=...) -> lm15 HTTP -> uvicorn."""

from __future__ import annotations

import sys
import time
from typing import Literal

import dspy
import pytest

from dspex.testing.server import SimServer
from dspex.testing.simtask import expected_accuracy, get_profile

CAPITAL = "What is the capital of Peru?"


def _task_question(sim: SimServer, kind: str = "arithmetic") -> tuple[str, str]:
    ex = next(e for e in sim.task.items if e.kind == kind)
    return ex.question, ex.answer


def test_predict_call_is_answered_over_http(sim_lm_server: SimServer) -> None:
    question, _ = _task_question(sim_lm_server)
    lm = sim_lm_server.lm("sim-medium")
    with dspy.context(lm=lm):
        pred = dspy.Predict("question -> answer")(question=question)
    [record] = sim_lm_server.requests()
    assert (record.model, record.status, record.format, record.question) == (
        "sim-medium",
        200,
        "chat",
        question,
    )
    assert (record.reasoning, record.demos, record.temperature) == (False, 0, None)
    assert record.correct is not None
    assert (pred.answer == _task_question(sim_lm_server)[1]) is record.correct
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 50
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    stats = sim_lm_server.stats().models["sim-medium"]
    assert (stats.input_tokens, stats.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert stats.cost_usd == pytest.approx(
        get_profile("sim-medium").cost_usd(stats.input_tokens, stats.output_tokens)
    )
    assert "litellm" not in sys.modules  # the native lm15 route carried it, not the LiteLLM fallback


def test_chain_of_thought_with_typed_output_demos_and_temperature(sim_lm_server: SimServer) -> None:
    question, _ = _task_question(sim_lm_server)
    demos = [dspy.Example(question=e.question, answer=e.answer) for e in sim_lm_server.task.items[10:13]]
    program = dspy.ChainOfThought("question -> answer: int")
    program.predict.demos = demos
    seen: set[bool] = set()
    with dspy.context(lm=sim_lm_server.lm("sim-medium", temperature=0.5)):
        for q in [question, *(e.question for e in sim_lm_server.task.items[20:40] if e.kind == "arithmetic")]:
            pred = program(question=q)
            assert isinstance(pred.answer, int)
            record = sim_lm_server.requests()[-1]
            assert (record.reasoning, record.demos, record.temperature) == (True, 3, 0.5)
            seen.add(bool(record.correct))
            gold = sim_lm_server.task.lookup(q)
            assert gold is not None
            assert (pred.answer == int(gold.answer)) is record.correct
            if record.correct:
                assert pred.reasoning == gold.rationale
    assert seen == {True, False}  # wrong answers are plausible numbers, parsed as ints too


@pytest.mark.parametrize("adapter", [dspy.JSONAdapter(), dspy.XMLAdapter()], ids=["json", "xml"])
def test_other_adapters_get_their_own_format(sim_lm_server: SimServer, adapter: dspy.Adapter) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-small"), adapter=adapter):
        pred = dspy.ChainOfThought("question -> answer, confidence: float")(question=CAPITAL)
    assert isinstance(pred.answer, str)
    assert pred.answer
    assert pred.confidence == 0.0
    [record] = sim_lm_server.requests()
    assert record.format == ("json" if isinstance(adapter, dspy.JSONAdapter) else "xml")
    assert record.question == CAPITAL


def test_questions_outside_the_task_still_get_answers(sim_lm_server: SimServer) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-small")):
        pred = dspy.Predict("topic, audience -> summary, keywords: list[str]")(topic="tides", audience="kids")
        pred2 = dspy.Predict("topic, audience -> summary, keywords: list[str]")(
            topic="tides", audience="kids"
        )
    assert pred.summary == pred2.summary == "Simulated answer about: tides kids"
    assert pred.keywords == []
    assert sim_lm_server.requests()[-1].correct is None


async def test_async_call(sim_lm_server: SimServer) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-medium")):
        pred = await dspy.Predict("question -> answer").acall(question=CAPITAL)
    assert pred.answer
    assert sim_lm_server.stats().statuses == {200: 1}


async def test_streamed_call_arrives_in_several_chunks(sim_lm_server: SimServer) -> None:
    question = "Why do tides happen twice a day on most coasts?"
    program = dspy.streamify(
        dspy.Predict("question -> answer"), stream_listeners=[dspy.streaming.StreamListener("answer")]
    )
    chunks: list[str] = []
    final = None
    with dspy.context(lm=sim_lm_server.lm("sim-medium")):
        async for item in program(question=question):
            if isinstance(item, dspy.streaming.StreamResponse):
                assert item.signature_field_name == "answer"
                chunks.append(item.chunk)
            elif isinstance(item, dspy.Prediction):
                final = item
    assert final is not None
    assert len([c for c in chunks if c]) >= 3
    assert "".join(chunks).strip() == final.answer == f"Simulated answer about: {question}"
    [record] = sim_lm_server.requests()
    assert record.stream


@pytest.mark.sim_lm(fail_first=[429], retry_after=0.2)
def test_429_is_retried_by_dspy_after_retry_after(sim_lm_server: SimServer) -> None:
    lm = sim_lm_server.lm("sim-medium", num_retries=2)
    start = time.perf_counter()
    with dspy.context(lm=lm):
        pred = dspy.Predict("question -> answer")(question=CAPITAL)
    elapsed = time.perf_counter() - start
    assert pred.answer
    stats = sim_lm_server.stats()
    assert stats.total_requests == 2
    assert stats.statuses == {429: 1, 200: 1}
    assert elapsed >= 0.2
    assert elapsed < 0.2 + 1.0  # DSPy's own backoff without a hint would be 1 s


@pytest.mark.sim_lm(fail_first=[429], retry_after=0.1)
async def test_429_before_a_stream_is_retried(sim_lm_server: SimServer) -> None:
    program = dspy.streamify(dspy.Predict("question -> answer"))
    with dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=1)):
        items = [item async for item in program(question=CAPITAL)]
    assert isinstance(items[-1], dspy.Prediction)
    assert [(r.status, r.stream) for r in sim_lm_server.requests()] == [(429, True), (200, True)]


def test_429_without_retries_is_a_typed_rate_limit_error(sim_lm_server: SimServer) -> None:
    sim_lm_server.configure(rate_limit_rate=1.0, retry_after=7)
    with (
        dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=0)),
        pytest.raises(dspy.LMRateLimitError) as info,
    ):
        dspy.Predict("question -> answer")(question=CAPITAL)
    assert info.value.retry_after == 7.0
    assert info.value.status == 429


@pytest.mark.sim_lm(error_rate=1.0, error_retry_after=0.05)
def test_500_surfaces_as_server_error_when_retries_are_exhausted(sim_lm_server: SimServer) -> None:
    with (
        dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=2)),
        pytest.raises(dspy.LMServerError) as info,
    ):
        dspy.Predict("question -> answer")(question=CAPITAL)
    assert info.value.status == 500
    assert "simulated error 500" in str(info.value)
    assert sim_lm_server.stats().statuses == {500: 3}
    assert dspy.is_retryable_lm_error(info.value)


@pytest.mark.sim_lm(fail_first=[500, 503], error_retry_after=0)
def test_transient_errors_then_success(sim_lm_server: SimServer) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=2)):
        assert dspy.Predict("question -> answer")(question=CAPITAL).answer
    assert [r.status for r in sim_lm_server.requests()] == [500, 503, 200]


@pytest.mark.sim_lm(timeout_rate=1.0, timeout_seconds=30)
def test_timeout_surfaces_as_a_transport_error_quickly(sim_lm_server: SimServer) -> None:
    start = time.perf_counter()
    with (
        dspy.context(lm=sim_lm_server.lm("sim-small", num_retries=0, timeout=0.3)),
        pytest.raises(dspy.LMTransportError, match="timed out"),
    ):
        dspy.Predict("question -> answer")(question=CAPITAL)
    assert 0.3 <= time.perf_counter() - start < 3
    assert sim_lm_server.stats().statuses == {504: 1}


@pytest.mark.sim_lm(malformed_rate=1.0)
def test_malformed_output_gives_adapter_parse_error(sim_lm_server: SimServer) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-medium")), pytest.raises(dspy.AdapterParseError):
        dspy.Predict("question -> answer")(question=CAPITAL)
    # ChatAdapter failed to parse, then DSPy retried once with JSONAdapter, which failed too.
    assert [r.format for r in sim_lm_server.requests()] == ["chat", "json"]
    assert sim_lm_server.stats().models["sim-medium"].malformed == 2


@pytest.mark.sim_lm(fail_first=["malformed"])
def test_one_malformed_reply_is_recovered_by_the_json_fallback(sim_lm_server: SimServer) -> None:
    with dspy.context(lm=sim_lm_server.lm("sim-medium")):
        assert dspy.Predict("question -> answer")(question=CAPITAL).answer
    assert [(r.format, r.outcome) for r in sim_lm_server.requests()] == [
        ("chat", "malformed"),
        ("json", "ok"),
    ]


def test_unknown_model_is_a_404_listing_the_models(sim_lm_server: SimServer) -> None:
    with (
        dspy.context(lm=sim_lm_server.lm("sim-mediun", num_retries=3)),
        pytest.raises(dspy.LMUnsupportedModelError) as info,
    ):
        dspy.Predict("question -> answer")(question=CAPITAL)
    assert info.value.status == 404
    assert "did you mean 'sim-medium'" in str(info.value)
    assert "sim-large, sim-medium, sim-small" in str(info.value)
    assert sim_lm_server.stats().models["sim-mediun"].statuses == {404: 1}  # not retried


def test_latency_is_applied_per_model(sim_lm_server: SimServer) -> None:
    sim_lm_server.configure(latency_scale=1.0, latency=0.05)
    lm = sim_lm_server.lm("sim-large")
    with dspy.context(lm=lm):
        start = time.perf_counter()
        dspy.Predict("question -> answer")(question=CAPITAL)
    assert time.perf_counter() - start >= get_profile("sim-large").latency + 0.05


def test_accuracy_per_model_matches_the_profiles(sim_lm_server: SimServer) -> None:
    examples = sim_lm_server.task.examples()[:150]

    def metric(example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> bool:
        return bool(str(pred.answer).strip() == example.answer)

    evaluate = dspy.Evaluate(devset=examples, metric=metric, num_threads=8, display_progress=False)
    scores = {}
    for model in ("sim-small", "sim-medium", "sim-large"):
        with dspy.context(lm=sim_lm_server.lm(model)):
            scores[model] = evaluate(dspy.Predict("question -> answer")).score / 100
        server_side = sim_lm_server.stats().models[model]
        assert server_side.graded == len(examples)
        assert server_side.correct / server_side.graded == pytest.approx(scores[model], abs=1e-3)
        # 150 Bernoulli draws: 4 standard deviations is at most 0.17; the draws are fixed by the seed
        assert scores[model] == pytest.approx(expected_accuracy(model), abs=0.1)
    assert scores["sim-small"] < scores["sim-medium"] < scores["sim-large"]


def test_a_literal_output_is_a_classification_among_its_labels(sim_lm_server: SimServer) -> None:
    capitals = [e for e in sim_lm_server.task.items if e.kind == "capital"][:20]
    labels = tuple(sorted({"Paris", "Berlin", "Rome", "Madrid", *(e.answer for e in capitals)}))
    program = dspy.Predict(
        dspy.Signature(
            {"question": (str, dspy.InputField()), "answer": (Literal[labels], dspy.OutputField())}  # type: ignore[valid-type]
        )
    )
    seen: set[bool] = set()
    with dspy.context(lm=sim_lm_server.lm("sim-small", temperature=1.0)):
        for item in capitals:
            pred = program(question=item.question)
            record = sim_lm_server.requests()[-1]
            assert pred.answer in labels
            assert (pred.answer == item.answer) is record.correct
            seen.add(bool(record.correct))
    assert seen == {True, False}
