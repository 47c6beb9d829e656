"""What the dashboard computes, without HTTP: the waterfall, the version diff, the Pareto front, runs per
minute, and the session cookie's signature, expiry and CSRF tokens."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from dspex.server.ui.session import SessionSigner
from dspex.server.ui.views import (
    parameter_importance,
    pareto_points,
    runs_per_minute,
    version_diff,
    waterfall,
)


def _span(
    index: int, parent: int | None, start: float, end: float | None, kind: str = "module"
) -> dict[str, object]:
    return {
        "index": index,
        "parent": parent,
        "kind": kind,
        "name": f"s{index}",
        "start_ms": start,
        "end_ms": end,
    }


def test_waterfall_orders_the_tree_and_places_bars_on_the_run_axis() -> None:
    trace = {
        "v": 1,
        "spans": [
            _span(0, None, 0.0, 100.0),
            _span(2, 0, 60.0, 90.0, "lm"),
            _span(1, 0, 10.0, 50.0),
            _span(3, 1, 20.0, None, "tool"),  # unfinished: runs to the end of the axis
        ],
    }
    bars = waterfall(trace)
    assert [(b.span["index"], b.depth) for b in bars] == [(0, 0), (1, 1), (3, 2), (2, 1)]
    assert (bars[0].left, bars[0].width, bars[0].duration_ms) == (0.0, 100.0, 100.0)
    assert (bars[1].left, bars[1].width) == (10.0, 40.0)
    assert (bars[2].left, bars[2].width, bars[2].duration_ms) == (20.0, 80.0, None)
    assert waterfall(None) == []
    assert waterfall({"v": 1, "spans": []}) == []


def test_version_diff_groups_instructions_demos_variables_and_structure() -> None:
    left = {
        "predict": {"signature": {"instructions": "Answer.", "fields": ["q", "a"]}, "demos": [], "lm": None}
    }
    right = {
        "predict": {
            "signature": {"instructions": "Answer briefly.", "fields": ["q", "a"]},
            "demos": [{"q": "1+1", "a": "2"}],
            "lm": {"temperature": 0.5},
        }
    }
    lines = version_diff(left, right, {"temperature": 0.0}, {"temperature": 0.5})
    by_part = {(line.part, line.path): (line.left, line.right) for line in lines}
    assert by_part[("instructions", "predict.signature.instructions")] == ("Answer.", "Answer briefly.")
    assert by_part[("demos", "predict.demos[0].q")] == (None, "1+1")
    assert by_part[("variables", "temperature")] == ("0.0", "0.5")
    assert ("structure", "predict.lm.temperature") in by_part
    assert [line.part for line in lines] == sorted(
        (line.part for line in lines), key=["instructions", "demos", "variables", "structure"].index
    )
    assert version_diff(left, left, None, None) == []
    # Empty containers are no values: {} against a missing key, [] against none, show nothing.
    assert version_diff({"config": {}}, {}, {}, None) == []


def test_pareto_front_on_cost_or_latency() -> None:
    trials = [
        {"number": 0, "state": "complete", "scores": {"quality": 0.5}, "cost_usd": 1.0, "duration_s": 3.0},
        {"number": 1, "state": "complete", "scores": {"quality": 0.8}, "cost_usd": 2.0, "duration_s": 1.0},
        {"number": 2, "state": "complete", "scores": {"quality": 0.4}, "cost_usd": 3.0, "duration_s": 2.0},
        {"number": 3, "state": "pruned", "scores": None, "cost_usd": 0.1, "duration_s": 0.1},
    ]
    on_cost = {p["number"]: p["front"] for p in pareto_points(trials)}
    assert on_cost == {0: True, 1: True, 2: False}
    on_latency = {p["number"]: p["front"] for p in pareto_points(trials, cost="duration_s")}
    assert on_latency == {0: False, 1: True, 2: False}
    measured = [
        {"number": 0, "state": "complete", "scores": {"quality": 1.0, "cost": 0.25}, "cost_usd": None}
    ]
    assert pareto_points(measured)[0]["cost"] == 0.25


def test_runs_per_minute_buckets_the_last_hour() -> None:
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    starts = [now - dt.timedelta(seconds=s) for s in (5, 30, 61, 3599, 3601)]
    counts = runs_per_minute(starts, now)
    assert len(counts) == 60
    assert (counts[-1], counts[-2], counts[0], sum(counts)) == (2, 1, 1, 4)


def test_session_cookies_are_signed_expire_and_carry_a_csrf_seed() -> None:
    signer = SessionSigner(ttl_s=60)
    cookie, session = signer.issue("abc123def456")
    assert signer.read(cookie) == session
    payload, mac = cookie.split(".")
    assert signer.read(f"{payload}.{'0' * len(mac)}") is None
    assert signer.read(payload[:-2] + "xx." + mac) is None
    assert SessionSigner().read(cookie) is None  # another server's secret
    assert signer.read(None) is None
    assert signer.read("a.b.c") is None
    expired, _ = SessionSigner(ttl_s=-1, secret=b"k" * 32).issue("abc123def456")
    assert SessionSigner(secret=b"k" * 32).read(expired) is None
    token = signer.csrf(session)
    assert signer.check_csrf(session, token)
    assert not signer.check_csrf(session, None)
    assert not signer.check_csrf(signer.issue("abc123def456")[1], token)  # bound to its session
    assert time.time() < session.expires


def test_raw_event_data_goes_out_line_by_line() -> None:
    from dspex.server.sse import RawData, format_event

    assert format_event("row", RawData("<tr>\n<td>1</td>\n</tr>")) == (
        b"event: row\ndata: <tr>\ndata: <td>1</td>\ndata: </tr>\n\n"
    )
    assert format_event("row", "<tr>") == b'event: row\ndata: "<tr>"\n\n'  # other data stays JSON


def _trial(number: int, temperature: float, style: str, quality: float | None) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json

    from dspex.store.optimizations import TrialRecord

    distributions = {
        "temperature": distribution_to_json(FloatDistribution(0.0, 1.0)),
        "style": distribution_to_json(CategoricalDistribution(("short", "long"))),
    }
    return TrialRecord(
        optimization_id="opt-x",
        number=number,
        state="complete" if quality is not None else "pruned",
        params={"values": {"temperature": temperature, "style": style}, "distributions": distributions},
        configuration=None,
        configuration_id=None,
        scores={"quality": quality} if quality is not None else None,
        intermediate={},
        lm_calls=1,
        cost_usd=None,
        duration_s=1.0,
        error=None,
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        finished_at=None,
    )


def test_parameter_importance_finds_the_variable_that_matters() -> None:
    # Quality follows temperature; the style is noise.
    trials = [
        _trial(i, temperature=i / 20, style=("short", "long")[i % 2], quality=i / 20 + 0.01 * (i % 2))
        for i in range(20)
    ]
    importance = parameter_importance([*trials, _trial(20, 0.9, "short", None)])
    assert list(importance) == ["temperature", "style"]
    assert importance["temperature"] > 0.5
    assert abs(sum(importance.values()) - 1.0) < 1e-6
    assert parameter_importance(trials[:1]) == {}
