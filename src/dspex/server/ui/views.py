"""What the pages compute from records, kept apart from HTTP so each is tested on its own: the span
waterfall of a run, the diff of two program versions, the Pareto front of an optimization's trials and
runs per minute."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex.store.optimizations import TrialRecord

__all__ = [
    "Bar",
    "DiffLine",
    "parameter_importance",
    "pareto_points",
    "runs_per_minute",
    "version_diff",
    "waterfall",
]


@dataclass(frozen=True, slots=True)
class Bar:
    """One span of the waterfall: its depth in the tree and where its bar starts and ends (percent of the
    run), with the span itself for the details (messages, outputs, usage)."""

    depth: int
    left: float
    width: float
    duration_ms: float | None
    span: Mapping[str, Any]


def waterfall(trace: Mapping[str, Any] | None) -> list[Bar]:
    """The spans of a trace in tree order (a parent, then its children by start), placed on the run's
    time axis. An unfinished span runs to the end of the axis."""
    spans: list[Mapping[str, Any]] = list((trace or {}).get("spans", []))
    if not spans:
        return []
    end = max(
        [float(s.get("end_ms") or 0.0) for s in spans] + [float(s.get("start_ms") or 0.0) for s in spans]
    )
    total = end or 1.0
    children: dict[int | None, list[Mapping[str, Any]]] = {}
    known = {s["index"] for s in spans}
    for span in spans:
        parent = span.get("parent") if span.get("parent") in known else None
        children.setdefault(parent, []).append(span)
    bars: list[Bar] = []

    def visit(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.get("start_ms") or 0.0, s["index"])):
            start = float(span.get("start_ms") or 0.0)
            stop = span.get("end_ms")
            finish = float(stop) if stop is not None else total
            bars.append(
                Bar(
                    depth=depth,
                    left=round(100.0 * start / total, 3),
                    width=round(max(100.0 * (finish - start) / total, 0.3), 3),
                    duration_ms=(float(stop) - start) if stop is not None else None,
                    span=span,
                )
            )
            visit(span["index"], depth + 1)

    visit(None, 0)
    return bars


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One differing entry between two versions: which part (instructions, demos, variables,
    structure), where in it, and the value on each side (None: absent on that side)."""

    part: str
    path: str
    left: str | None
    right: str | None


def _flatten(value: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping | list) and not value:
        return  # an empty container holds no value: {} against a missing key is no difference
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list) and value and not all(isinstance(v, str | int | float) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    else:
        out[path] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _part(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    if ".demos" in f".{path}" or path.startswith("demos"):
        return "demos"
    if "instructions" in leaf:
        return "instructions"
    return "structure"


def version_diff(
    left_state: Mapping[str, Any],
    right_state: Mapping[str, Any],
    left_variables: Mapping[str, Any] | None,
    right_variables: Mapping[str, Any] | None,
) -> list[DiffLine]:
    """Every entry that differs between two versions' saved states and variable configurations, grouped
    by part: instructions, demos, variables, then the rest of the structure (signatures, LM settings)."""
    lines: list[DiffLine] = []
    for part_of, left, right in (
        (_part, left_state, right_state),
        (lambda _path: "variables", left_variables or {}, right_variables or {}),
    ):
        flat_left: dict[str, str] = {}
        flat_right: dict[str, str] = {}
        _flatten(left, "", flat_left)
        _flatten(right, "", flat_right)
        for path in sorted(set(flat_left) | set(flat_right)):
            a, b = flat_left.get(path), flat_right.get(path)
            if a != b:
                lines.append(DiffLine(part_of(path), path, a, b))
    order = {"instructions": 0, "demos": 1, "variables": 2, "structure": 3}
    return sorted(lines, key=lambda line: (order[line.part], line.path))


def pareto_points(
    trials: Iterable[Mapping[str, Any]], quality: str = "quality", cost: str = "cost_usd"
) -> list[dict[str, Any]]:
    """The complete trials as points ``{"number", "quality", "cost", "front"}``: ``front`` marks those no
    other trial beats on both axes (higher quality and lower cost, one of them strictly). ``cost`` names
    the trial's figure on the second axis: ``cost_usd`` or ``duration_s`` (latency)."""
    points = []
    for trial in trials:
        scores = trial.get("scores") or {}
        if trial.get("state") != "complete" or quality not in scores:
            continue
        # A cost objective's score, when the search measured one, else the trial's own figure.
        value = scores["cost"] if cost == "cost_usd" and "cost" in scores else trial.get(cost)
        if value is None:
            continue
        points.append({"number": trial["number"], "quality": float(scores[quality]), "cost": float(value)})
    for point in points:
        point["front"] = not any(
            other["quality"] >= point["quality"]
            and other["cost"] <= point["cost"]
            and (other["quality"] > point["quality"] or other["cost"] < point["cost"])
            for other in points
        )
    return points


def runs_per_minute(starts: Sequence[dt.datetime], now: dt.datetime, minutes: int = 60) -> list[int]:
    """How many runs started in each of the last ``minutes`` minutes, oldest first."""
    counts = [0] * minutes
    for started in starts:
        age = int((now - started).total_seconds() // 60)
        if 0 <= age < minutes:
            counts[minutes - 1 - age] += 1
    return counts


def parameter_importance(trials: Sequence[TrialRecord], objective: str = "quality") -> dict[str, float]:
    """How much each searched variable explains ``objective`` across the complete trials, summing to 1,
    largest first (Optuna's PED-ANOVA, which needs no scikit-learn); empty below two complete trials.

    The trials are replayed into an in-memory Optuna study with the distributions they were sampled
    from (stored with each trial's params by the variable search).
    """
    import warnings

    import optuna
    from optuna.distributions import json_to_distribution

    done = [t for t in trials if t.state == "complete" and t.scores and objective in t.scores]
    if len(done) < 2:
        return {}
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    for trial in done:
        stored = trial.params
        distributions = {k: json_to_distribution(d) for k, d in stored.get("distributions", {}).items()}
        values = {k: v for k, v in stored.get("values", {}).items() if k in distributions}
        study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions=distributions,
                value=float(trial.scores[objective]),  # type: ignore[index]
            )
        )
    with warnings.catch_warnings():
        # PED-ANOVA is marked experimental by Optuna; its interface, not its answer, may change.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {name: float(value) for name, value in importances.items()}
