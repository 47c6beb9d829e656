"""Live signals on scripted series: anomalies are flagged and noise is not; trends are classified; the
monitor reads the store incrementally (SQLite and PostgreSQL); the statistics behind them."""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import ConfigurationError
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.telemetry.detect import (
    Cusum,
    chi2_homogeneity,
    chi2_z,
    kruskal_wallis_h,
    mann_kendall_z,
    robust_z,
    siegmund_arl,
    two_proportion_z,
    welch_z,
)
from dspex.telemetry.signals import (
    RatedRun,
    RunOutcome,
    SignalEngine,
    SignalEvent,
    Thresholds,
    Where,
    config_id,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _run(
    i: int,
    ms: float = 100.0,
    *,
    status: str = "succeeded",
    cost: float | None = 0.001,
    program: str = "qa",
    version: str | None = "v1",
    models: tuple[str, ...] = ("openai/gpt-4o-mini",),
    variables: dict[str, Any] | None = None,
) -> RunOutcome:
    at = T0 + dt.timedelta(seconds=i)
    return RunOutcome(
        id=f"run-{i}",
        program=program,
        version_id=version,
        status=status,
        started_at=at,
        ended_at=at,
        duration_ms=ms,
        total_tokens=120,
        cost_usd=cost,
        models=models,
        variables=variables,
    )


def _drive(
    make: Callable[[int, random.Random], RunOutcome], n: int, *, seed: int = 7, every: int = 1
) -> tuple[SignalEngine, list[SignalEvent]]:
    """Feed ``n`` runs, evaluating every ``every`` runs as a poller would; all events, in order."""
    rng = random.Random(seed)
    engine = SignalEngine()
    events: list[SignalEvent] = []
    for i in range(n):
        engine.observe(make(i, rng))
        if i % every == every - 1:
            events += engine.evaluate(T0 + dt.timedelta(seconds=i))
    return engine, events


def _anomalies(events: list[SignalEvent], kind: str, dimension: str = "program") -> list[SignalEvent]:
    return [e for e in events if e.type == "anomaly" and e.kind == kind and e.where.dimension == dimension]


def _noise(i: int, rng: random.Random) -> RunOutcome:
    """Lognormal latency (sigma 0.3) around 100 ms, 5% failures, lognormal cost (sigma 0.2)."""
    failed = rng.random() < 0.05
    return _run(
        i,
        100.0 * rng.lognormvariate(0.0, 0.3),
        status="failed" if failed else "succeeded",
        cost=0.001 * rng.lognormvariate(0.0, 0.2),
    )


# -- anomalies ------------------------------------------------------------------------------------------


def test_noise_raises_no_anomaly() -> None:
    _, events = _drive(_noise, 1500, every=5)
    assert [e.message for e in events if e.type == "anomaly"] == []


def test_a_latency_spike_is_flagged_once_within_a_few_runs() -> None:
    def series(i: int, rng: random.Random) -> RunOutcome:
        return _run(i, 100.0 * rng.lognormvariate(0.0, 0.3) * (3.0 if i >= 200 else 1.0))

    _, events = _drive(series, 300)
    spikes = _anomalies(events, "latency_spike")
    assert len(spikes) == 1, [e.message for e in spikes]
    spike = spikes[0]
    assert spike.at <= T0 + dt.timedelta(seconds=206)  # within 6 runs of the step
    assert spike.value > 2.0 * spike.baseline
    assert spike.statistic >= 3.5
    assert spike.threshold == {"z": 3.5, "ratio": 1.5}
    assert spike.where == Where("qa")
    # The version and the model saw the same spike.
    assert len(_anomalies(events, "latency_spike", "version")) == 1
    assert len(_anomalies(events, "latency_spike", "model")) == 1


def test_single_slow_runs_are_not_a_spike() -> None:
    def series(i: int, rng: random.Random) -> RunOutcome:
        return _run(i, 5000.0 if i % 37 == 0 else 100.0 * rng.lognormvariate(0.0, 0.2))

    _, events = _drive(series, 400)
    assert _anomalies(events, "latency_spike") == []


def test_constant_latency_does_not_make_tiny_changes_infinite() -> None:
    # A scripted LM: every run takes exactly 10 ms (MAD 0), then 10.5 ms: a 5% change is no spike.
    _, events = _drive(lambda i, _: _run(i, 10.0 if i < 100 else 10.5), 150)
    assert _anomalies(events, "latency_spike") == []
    _, events = _drive(lambda i, _: _run(i, 10.0 if i < 100 else 30.0), 150)
    assert len(_anomalies(events, "latency_spike")) == 1


def test_an_error_rate_jump_is_flagged_and_a_single_error_is_not() -> None:
    def jump(i: int, rng: random.Random) -> RunOutcome:
        rate = 0.02 if i < 200 else 0.4
        return _run(i, status="failed" if rng.random() < rate else "succeeded")

    _, events = _drive(jump, 260)
    jumps = _anomalies(events, "error_rate_jump")
    assert len(jumps) == 1
    assert jumps[0].at <= T0 + dt.timedelta(seconds=215)  # within 15 runs of the jump
    assert jumps[0].value >= 0.1
    assert jumps[0].baseline < 0.05
    assert jumps[0].statistic >= 3.72

    def one_error(i: int, _: random.Random) -> RunOutcome:
        return _run(i, status="failed" if i == 150 else "succeeded")

    _, events = _drive(one_error, 200)
    assert _anomalies(events, "error_rate_jump") == []

    def two_errors(i: int, _: random.Random) -> RunOutcome:
        return _run(i, status="failed" if i in (150, 151) else "succeeded")

    _, events = _drive(two_errors, 200)
    assert _anomalies(events, "error_rate_jump") == []  # fewer than 3 failures


def test_cancelled_runs_are_not_failures() -> None:
    engine, events = _drive(lambda i, _: _run(i, status="cancelled" if i >= 100 else "succeeded"), 150)
    assert _anomalies(events, "error_rate_jump") == []
    stats = engine.report(T0 + dt.timedelta(seconds=150)).groups[0]
    assert (stats.cancelled, stats.failed, stats.success_rate) == (50, 0, 1.0)


def test_a_quality_drop_from_feedback_is_flagged() -> None:
    engine = SignalEngine()
    rng = random.Random(3)
    events: list[SignalEvent] = []
    for i in range(60):
        run = _run(i)
        engine.observe(run)
        score = min(1.0, max(0.0, rng.gauss(0.85 if i < 40 else 0.4, 0.08)))
        engine.rate(RatedRun(f"fb-{i}", score, run.started_at + dt.timedelta(seconds=1), run))
        events += engine.evaluate(T0 + dt.timedelta(seconds=i + 1))
    drops = _anomalies(events, "quality_drop")
    assert len(drops) == 1
    assert drops[0].metric == "quality"
    assert drops[0].baseline > 0.75
    assert drops[0].value < 0.6
    report = engine.report(T0 + dt.timedelta(seconds=61))
    program = report.groups[0]
    assert program.where == Where("qa")
    assert program.ratings == 60
    assert program.quality is not None
    assert 0.6 < program.quality < 0.8
    assert "quality_drop" in program.anomalies


def test_steady_feedback_is_not_a_drop() -> None:
    engine = SignalEngine()
    rng = random.Random(5)
    events: list[SignalEvent] = []
    for i in range(200):
        run = _run(i)
        engine.observe(run)
        engine.rate(RatedRun(f"fb-{i}", 1.0 if rng.random() < 0.8 else 0.0, run.started_at, run))
        events += engine.evaluate(run.started_at)
    assert _anomalies(events, "quality_drop") == []


def test_cost_drift_is_flagged_and_the_new_level_becomes_normal() -> None:
    def drift(i: int, rng: random.Random) -> RunOutcome:
        level = 0.001 if i < 300 else 0.0013  # +30%: a longer prompt, a pricier model
        return _run(i, cost=level * rng.lognormvariate(0.0, 0.1))

    _, events = _drive(drift, 800)
    drifts = _anomalies(events, "cost_drift")
    assert len(drifts) == 1, [e.message for e in drifts]
    assert drifts[0].at <= T0 + dt.timedelta(seconds=330)
    assert drifts[0].value == pytest.approx(0.0013, rel=0.15)
    assert drifts[0].baseline == pytest.approx(0.001, rel=0.05)
    assert "drifted up" in drifts[0].message


def test_steady_costs_and_fixed_prices_do_not_drift() -> None:
    _, events = _drive(lambda i, rng: _run(i, cost=0.002 * rng.lognormvariate(0.0, 0.2)), 2000, every=10)
    assert _anomalies(events, "cost_drift") == []
    _, events = _drive(lambda i, _: _run(i, cost=0.002), 500, every=10)
    assert _anomalies(events, "cost_drift") == []
    _, events = _drive(lambda i, _: _run(i, cost=0.002 if i < 200 else 0.0021), 500, every=10)
    assert _anomalies(events, "cost_drift") == []  # 5%: under the 15% that matters


# -- trends ---------------------------------------------------------------------------------------------


def _trend_of(engine: SignalEngine, metric: str, where: Where | None = None) -> str:
    groups = engine.report(T0 + dt.timedelta(days=1)).groups
    group = next(g for g in groups if g.where == (where or Where("qa")))
    return group.trends[metric]  # type: ignore[index]  # metric is one of METRICS in these tests


def test_trends_are_classified() -> None:
    rising, _ = _drive(lambda i, rng: _run(i, (100.0 + i) * rng.lognormvariate(0.0, 0.1)), 200)
    assert _trend_of(rising, "latency") == "degrading"
    falling, _ = _drive(lambda i, rng: _run(i, (400.0 - i) * rng.lognormvariate(0.0, 0.1)), 200)
    assert _trend_of(falling, "latency") == "improving"
    steady, _ = _drive(_noise, 300)
    assert {_trend_of(steady, m) for m in ("latency", "errors", "cost")} == {"stable"}
    assert _trend_of(steady, "quality") == "unknown"  # no feedback

    def flapping(i: int, rng: random.Random) -> RunOutcome:
        return _run(i, (100.0 if (i // 20) % 2 == 0 else 300.0) * rng.lognormvariate(0.0, 0.1))

    unstable, events = _drive(flapping, 200)
    assert _trend_of(unstable, "latency") == "unstable"
    changes = [e for e in events if e.type == "trend" and e.where == Where("qa") and e.metric == "latency"]
    assert changes
    assert changes[-1].trend == "unstable"


def test_quality_improving_and_errors_degrading() -> None:
    engine = SignalEngine()
    for i in range(200):
        run = _run(i, status="failed" if i % 10 < i // 40 else "succeeded")
        engine.observe(run)
        engine.rate(RatedRun(f"fb-{i}", 0.3 + 0.6 * i / 200, run.started_at, run))
        engine.evaluate(run.started_at)
    assert _trend_of(engine, "quality") == "improving"
    assert _trend_of(engine, "errors") == "degrading"


# -- groups, window, report -----------------------------------------------------------------------------


def test_groups_by_program_version_model_and_configuration() -> None:
    engine = SignalEngine()
    engine.observe(_run(1, 100.0, models=("a", "b"), variables={"temperature": 0.5}))
    engine.observe(_run(2, 300.0, version="v2", models=("a",), variables={"temperature": 0.9}))
    engine.observe(_run(3, 200.0, status="failed", program="other", version=None, models=()))
    engine.evaluate(T0 + dt.timedelta(seconds=4))
    report = engine.report(T0 + dt.timedelta(seconds=4))
    labels = [g.where.label for g in report.groups]
    configs = sorted([config_id({"temperature": 0.5}) or "", config_id({"temperature": 0.9}) or ""])
    assert labels == [
        "other",
        "qa",
        "qa@v1",
        "qa@v2",
        "qa model=a",
        "qa model=b",
        *(f"qa config={c}" for c in configs),
    ]
    qa = next(g for g in report.groups if g.where == Where("qa"))
    assert (qa.runs, qa.succeeded, qa.success_rate) == (2, 2, 1.0)
    assert qa.p50_ms == 200.0
    assert qa.tokens_per_run == 120.0
    assert qa.cost_usd == pytest.approx(0.002)
    assert qa.cost_per_run == pytest.approx(0.001)
    model_a = next(g for g in report.groups if g.where == Where("qa", model="a"))
    assert model_a.runs == 2
    other = next(g for g in report.groups if g.where.program == "other")
    assert (other.success_rate, other.p50_ms) == (0.0, None)  # failed runs have no latency
    assert [g.where for g in engine.report(T0, program="other").groups] == [Where("other")]
    assert config_id({"b": 1, "a": 2}) == config_id({"a": 2, "b": 1})
    assert len(configs[0]) == 12
    json = qa.to_json()
    assert json["label"] == "qa"
    assert json["where"]["dimension"] == "program"


def test_the_window_forgets_old_runs_and_bounds_its_size() -> None:
    engine = SignalEngine(Thresholds(window_s=60.0, window_runs=50))
    for i in range(100):
        engine.observe(_run(i))
    engine.evaluate(T0 + dt.timedelta(seconds=100))
    qa = engine.report(T0 + dt.timedelta(seconds=100)).groups[0]
    assert qa.runs == 50  # 60 s would keep 60; 50 runs is the tighter bound
    engine.evaluate(T0 + dt.timedelta(seconds=130))
    qa = engine.report(T0 + dt.timedelta(seconds=130)).groups[0]
    assert qa.runs == 30  # runs 70..99 ended within the last 60 s
    engine.evaluate(T0 + dt.timedelta(hours=1))
    assert engine.report(T0 + dt.timedelta(hours=1)).groups == ()


def test_thresholds_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="window_s must be > 0"):
        Thresholds(window_s=0)
    with pytest.raises(ConfigurationError, match="finite"):
        Thresholds(latency_z=math.nan)
    with pytest.raises(ConfigurationError, match="trend_buckets"):
        Thresholds(trend_buckets=2)


def test_thresholds_come_from_the_signals_table_of_dspex_toml(tmp_path: Path) -> None:
    project = tmp_path / "dspex.toml"
    project.write_text("[signals]\nlatency_z = 5.0\nwindow_runs = 200\n")
    settings = Settings.load(project, home=tmp_path, database_url=f"sqlite:///{tmp_path}/dspex.db")
    with App(settings, record=False) as app:
        thresholds = app.signals.thresholds
    assert thresholds.latency_z == 5.0
    assert thresholds.window_runs == 200
    assert thresholds.error_z == Thresholds().error_z  # the rest keep their defaults
    project.write_text("[signals]\nlatency = 5.0\n")
    with pytest.raises(
        ConfigurationError, match=r"unknown signal threshold\(s\) latency; valid: .*latency_z"
    ):
        Settings.load(project, home=tmp_path)
    project.write_text("[signals]\nwindow_runs = 2.5\n")
    with pytest.raises(ConfigurationError, match="window_runs is a whole number"):
        Settings.load(project, home=tmp_path)


# -- the statistics -------------------------------------------------------------------------------------


def test_statistics_match_their_textbook_values() -> None:
    assert robust_z(10.0, [10.0] * 5) == 0.0
    assert robust_z(11.0, [10.0] * 5) == math.inf
    assert robust_z(11.0, [10.0] * 5, floor=0.1) == pytest.approx(10.0)
    assert two_proportion_z(5, 50, 5, 50) == 0.0
    assert two_proportion_z(0, 10, 0, 10) == 0.0
    assert welch_z([1.0], [2.0, 3.0]) == 0.0
    assert chi2_z(24.322, 7) == pytest.approx(3.09, abs=0.03)  # the 0.999 quantile of chi2(7)
    assert chi2_homogeneity([0, 10], [10, 10]) == pytest.approx(20.0)
    assert kruskal_wallis_h([[1.0, 1.0], [1.0, 1.0]]) == pytest.approx(0.0)
    assert mann_kendall_z([3.0, 2.0, 1.0]) < 0 < mann_kendall_z([1.0, 2.0, 3.0, 4.0])
    assert siegmund_arl(0.0, 0.5, 10.0) > 50_000
    assert siegmund_arl(2.0, 0.5, 10.0) < 10


def test_cusum_learns_a_new_reference_after_an_alarm() -> None:
    cusum = Cusum(warmup=10, k=0.5, h=5.0, sd_floor=0.1, min_shift=0.2)
    assert all(cusum.add(1.0) is None for _ in range(10))
    assert cusum.reference == 1.0
    alarms = [cusum.add(0.0) for _ in range(5)]
    alarm = next(a for a in alarms if a is not None)
    assert alarm.direction == -1
    assert alarm.estimate < 0.5
    assert cusum.reference is None  # learning again
    assert all(cusum.add(0.0) is None for _ in range(30))
    assert cusum.reference == 0.0


# -- the monitor on a real store --------------------------------------------------------------------------


def _row(at: dt.datetime, status: str = "succeeded", ms: float = 100.0, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "program": "qa",
        "version_id": "v" * 64,
        "status": status,
        "inputs": {"question": "q"},
        "outputs": {"answer": "a"} if status == "succeeded" else None,
        "error": None,
        "started_at": at - dt.timedelta(milliseconds=ms),
        "ended_at": None if status == "running" else at,
        "duration_ms": None if status == "running" else ms,
        "usage": {"openai/sim": {"total_tokens": 50, "calls": 1}},
        "total_tokens": 50,
        "cost_usd": 0.0005,
        "variables": {"temperature": 0.2},
        "trace": None,
        "cache_hit": False,
        "runner": "test:1",
        **extra,
    }


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def store_app(database_url: str) -> Iterator[App]:
    with App(Settings(database_url=database_url), record=False) as app:
        yield app


def test_the_monitor_reads_the_store_incrementally(store_app: App) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = Clock(now)
    executions = store_app.executions
    executions.upsert([_row(now - dt.timedelta(minutes=90))])  # outside the window
    executions.upsert([_row(now - dt.timedelta(seconds=60 - i)) for i in range(40)])
    signals = store_app.open_signals(clock=clock, lag_s=5.0)
    assert signals.poll() == []
    qa = signals.report(program="qa").groups[0]
    assert qa.where == Where("qa")
    assert qa.runs == 40
    assert qa.p50_ms == 100.0
    assert {g.where.dimension for g in signals.report().groups} == {"program", "version", "model", "config"}
    first_read = signals.rows_read

    # A burst of slow runs, one still running, and a late record within the lag.
    clock.now = now + dt.timedelta(seconds=30)
    slow = [_row(now + dt.timedelta(seconds=i), ms=900.0) for i in range(1, 13)]
    running = _row(now + dt.timedelta(seconds=14), status="running")
    executions.upsert([*slow, running])
    events = signals.poll()
    assert [e.kind for e in events if e.where == Where("qa") and e.type == "anomaly"] == ["latency_spike"]
    # Only the new rows and the 6 started within lag_s of the newest one seen were read again.
    assert signals.rows_read - first_read == 13 + 6
    assert signals.report(program="qa").groups[0].runs == 52

    # The running run ends; it is read again by id, counted once.
    clock.now = now + dt.timedelta(seconds=60)
    ended = {
        **running,
        "status": "succeeded",
        "ended_at": now + dt.timedelta(seconds=20),
        "duration_ms": 900.0,
    }
    executions.upsert([ended])
    signals.poll()
    signals.poll()
    assert signals.report(program="qa").groups[0].runs == 53
    logged = signals.events()
    assert [seq for seq, _ in logged] == list(range(1, len(logged) + 1))
    assert signals.events(after=signals.last_seq) == []
    assert signals.report().anomaly_counts[("qa", "program", "latency_spike")] == 1


def test_feedback_counts_in_quality_through_the_store(store_app: App) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [_row(now - dt.timedelta(seconds=30 - i)) for i in range(25)]
    store_app.executions.upsert(rows)
    signals = store_app.open_signals(lag_s=5.0)
    signals.poll()
    for i, row in enumerate(rows):
        store_app.feedback(row["id"], score=0.9 if i < 15 else 0.2, label="auto")
    events = signals.poll()
    assert [e.kind for e in events if e.where == Where("qa") and e.type == "anomaly"] == ["quality_drop"]
    qa = signals.report(program="qa").groups[0]
    assert qa.ratings == 25
    assert qa.quality == pytest.approx((15 * 0.9 + 10 * 0.2) / 25)
    store_app.feedback(rows[0]["id"], comment="no score: not counted in quality")
    signals.poll()
    assert signals.report(program="qa").groups[0].ratings == 25
