"""The parts of an evaluation run that hold state: usage counting, running totals, the configuration id."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspex.errors import ConfigurationError
from dspex.jsonable import to_jsonable
from dspex.optimize.metrics import Metric, MetricLike, as_metric
from dspex.optimize.result import EarlyStop, ExampleRecord
from dspex.programs._json import SECRET_KEYS, canonical_hash
from dspex.telemetry.recorder import error_info as describe_error

__all__ = [
    "Metrics",
    "ProgressCallback",
    "RunState",
    "configuration_fingerprint",
    "error_info",
    "program_state",
    "resolve_metrics",
]

ProgressCallback = Callable[[int, int, float], None]
Metrics = MetricLike | Sequence[MetricLike] | Mapping[str, MetricLike]


def _lm_description(lm: Any) -> Any:
    if lm is None:
        return None
    kwargs = getattr(lm, "kwargs", {}) or {}
    return {
        "class": f"{type(lm).__module__}.{type(lm).__qualname__}",
        "model": getattr(lm, "model", None),
        # Credentials change nothing about the answers; leaving them out keeps keys out of the hash input.
        "kwargs": {k: v for k, v in kwargs.items() if not SECRET_KEYS.search(k)},
    }


def program_state(program: Any, *, describe_lms: bool = True) -> Any:
    """``program.dump_state()``; when a predictor's LM cannot be saved (an LM on a custom engine without
    ``dump_state``, such as a copy SIMBA sets per predictor for sampling), that predictor's ``"lm"`` is
    its description instead (class, model, settings without credentials; None if not ``describe_lms``)."""
    try:
        return program.dump_state()
    except TypeError:
        pass
    import copy

    state = {}
    for name, parameter in program.named_parameters():
        lm = getattr(parameter, "lm", None)
        if lm is None:
            state[name] = parameter.dump_state()
            continue
        bare = copy.copy(parameter)  # the same predictor without its LM; the program is untouched
        bare.lm = None
        part = bare.dump_state()
        part["lm"] = _lm_description(lm) if describe_lms else None
        state[name] = part
    return state


def configuration_fingerprint(program: Any, lm: Any = None) -> str:
    """A configuration id derived from the program's class and saved state and the LM's settings.

    The evaluator uses it when no ``configuration_id`` is given. It cannot see code: after changing a
    program's ``forward`` in a running process, pass an explicit id (or ``cache=False``).

    >>> configuration_fingerprint(dspy.Predict("question -> answer"), lm)[:12]
    """
    effective_lm = lm if lm is not None else dspy.settings.lm
    described = {
        "program": f"{type(program).__module__}.{type(program).__qualname__}",
        "state": program_state(program),
        "lm": _lm_description(effective_lm),
    }
    return canonical_hash(to_jsonable(described))


def resolve_metrics(metric: Metrics, primary: str | None) -> tuple[tuple[Metric, ...], str]:
    if isinstance(metric, Mapping):
        metrics = tuple(as_metric(m, name=name) for name, m in metric.items())
    elif isinstance(metric, Sequence) and not isinstance(metric, str):
        metrics = tuple(as_metric(m) for m in metric)
    else:
        metrics = (as_metric(metric),)
    if not metrics:
        raise ConfigurationError("the evaluator needs at least one metric, e.g. Evaluator(exact_match)")
    names = [m.name for m in metrics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(
            f"metric names must be unique, {', '.join(map(repr, duplicates))} repeats; "
            "name them with a dict: Evaluator({'em': exact_match, 'em_short': exact_match(field='short')})"
        )
    if primary is None:
        return metrics, names[0]
    if primary not in names:
        raise ConfigurationError(f"primary metric {primary!r} is not one of the metrics: {', '.join(names)}")
    return metrics, primary


def error_info(exc: BaseException, stage: str) -> dict[str, Any]:
    """The error as the execution records describe it (type, message, code...), plus where it happened."""
    return {**describe_error(exc), "stage": stage}


@dataclass
class RunState:
    """The mutable state of one evaluation; only touched from the event loop's thread."""

    total: int
    primary: str
    early_stop: EarlyStop | None
    max_errors: int | None
    progress: ProgressCallback | None
    records: dict[int, ExampleRecord] = field(default_factory=dict)
    score_sum: float = 0.0
    errors: int = 0
    first_error: BaseException | None = None
    stop_reason: str | None = None
    aborted: bool = False

    @property
    def finished(self) -> bool:
        return self.stop_reason is not None or self.aborted

    def add(self, record: ExampleRecord, exc: BaseException | None) -> None:
        self.records[record.index] = record
        self.score_sum += record.score
        done = len(self.records)
        if record.error is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = exc
            if self.max_errors is not None and self.errors > self.max_errors:
                self.aborted = True
        if self.progress is not None:
            self.progress(done, self.total, self.score_sum / done)
        if self.early_stop is not None and done < self.total and not self.aborted:
            self.stop_reason = self.early_stop.reason(done=done, total=self.total, score_sum=self.score_sum)
