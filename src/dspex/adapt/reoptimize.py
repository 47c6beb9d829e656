"""Re-optimization: when every arm has degraded, optimize again on recent traffic and add the winners.

::

    app.adapt("qa-live", ..., reoptimize=Reoptimize(below=0.5, n_trials=20))

Checked at each catch-up of an adaptive program (:meth:`AdaptiveProgram.sync`): when every active arm's
posterior mean reward is below ``below`` with at least ``min_rewards`` effective rewards each, and no
re-optimization ran in the last ``cooldown_s``, the most recent ``examples`` runs it served whose quality
(metric or feedback) is at least ``min_score`` become a new version of dataset ``adapt-<name>`` (their
inputs, and their outputs as labels), and an optimization of the program over the adaptive program's
space is queued on the durable job queue (:func:`dspex.jobs.submit_optimization`; ``dspex worker`` runs
it). When that job has succeeded, its best configuration and Pareto front (at most ``add`` of them) are
added as arms (source ``reoptimization``). Processes sharing the program claim a cooldown window with an
idempotent ``reoptimize`` event first, so one job is queued per window, whoever sees the degradation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from dspex.adapt._settings import from_mapping
from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.adapt.program import AdaptiveProgram

__all__ = ["Reoptimize", "Reoptimizer"]

log = logging.getLogger("dspex.adapt")


@dataclass(frozen=True, slots=True)
class Reoptimize:
    """When and how to re-optimize (module docstring)."""

    below: float = 0.5
    min_rewards: float = 20.0
    n_trials: int = 20
    metric: str = "exact_match"
    min_score: float = 0.7
    examples: int = 200
    add: int = 2
    cooldown_s: float = 3600.0

    def __post_init__(self) -> None:
        from dspex.jobs.submit import METRICS

        for name, low, high in (("below", 0.0, 1.0), ("min_score", 0.0, 1.0), ("min_rewards", 1.0, 1e6)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ConfigurationError(
                    f"reoptimize {name!r} is a number in [{low:g}, {high:g}], got {value!r}"
                )
        for name, low, high in (("n_trials", 1, 1000), ("examples", 5, 10_000), ("add", 1, 20)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigurationError(
                    f"reoptimize {name!r} is a whole number in [{low}, {high}], got {value!r}"
                )
        cooldown = self.cooldown_s
        if (
            isinstance(cooldown, bool)
            or not isinstance(cooldown, int | float)
            or not math.isfinite(cooldown)
            or cooldown < 1
        ):
            raise ConfigurationError(f"reoptimize 'cooldown_s' is a number of seconds >= 1, got {cooldown!r}")
        if self.metric not in METRICS:
            raise ConfigurationError(f"reoptimize metric is one of {list(METRICS)}, got {self.metric!r}")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reoptimize:
        return from_mapping(cls, data, "reoptimize", "reoptimize is a mapping of settings")


class Reoptimizer:
    """Watches one adaptive program for degradation, queues the job, adopts its result."""

    def __init__(self, adaptive: AdaptiveProgram) -> None:
        self.adaptive = adaptive
        assert adaptive.reoptimize is not None
        self.rule = adaptive.reoptimize

    def _events(self, kind: str) -> list[Any]:
        return self.adaptive.repository.events(self.adaptive.name, kinds=(kind,), limit=10_000)

    def pending(self) -> list[str]:
        """Ids of queued re-optimization jobs whose result was not adopted yet."""
        submitted = [
            e.detail["job_id"] for e in self._events("reoptimize") if e.detail and e.detail.get("job_id")
        ]
        adopted = {e.detail.get("job_id") for e in self._events("reoptimized") if e.detail}
        return [job for job in submitted if job not in adopted]

    def check(self) -> None:
        """Adopt finished jobs; queue a new one when every arm has degraded (module docstring)."""
        for job_id in self.pending():
            self._adopt(job_id)
        adaptive = self.adaptive
        active = adaptive.active_arms()
        if not adaptive.state.degraded(active, self.rule.below, self.rule.min_rewards):
            return
        if self.pending():
            return
        window = int(time.time() // self.rule.cooldown_s)
        claimed = adaptive.repository.append(
            adaptive.name, "reoptimize", None, key=f"reoptimize:{window}", detail={"state": "claimed"}
        )
        if claimed is None:
            return  # another process (or an earlier check) took this window
        try:
            job = self._submit()
        except ConfigurationError as exc:
            log.warning("adaptive %r: every arm degraded, but no re-optimization: %s", adaptive.name, exc)
            adaptive.repository.append(adaptive.name, "reoptimized", None, detail={"error": str(exc)})
            return
        log.info("adaptive %r: every arm degraded; re-optimization job %s queued", adaptive.name, job.id)
        adaptive.repository.append(
            adaptive.name,
            "reoptimize",
            None,
            key=f"reoptimize-job:{job.id}",
            detail={"job_id": job.id, "optimization_id": job.payload.get("optimization_id")},
        )

    def _submit(self) -> Any:
        from dspex.jobs.submit import submit_optimization
        from dspex.variables.spacefile import space_document

        adaptive = self.adaptive
        host: Any = adaptive.host
        serves = adaptive.repository.recent_events(
            adaptive.name, kinds=("serve", "reward"), limit=20 * self.rule.examples
        )
        good: list[str] = []
        for event in reversed(serves):
            rated = event.quality is not None and event.quality >= self.rule.min_score
            if rated and event.execution_id and event.execution_id not in good:
                good.append(event.execution_id)
            if len(good) >= self.rule.examples:
                break
        records = []
        for execution_id in good:
            record = host.executions.get(execution_id)
            if record is not None and record.status == "succeeded" and record.outputs:
                records.append((record.inputs, record.outputs))
        if len(records) < 5:
            raise ConfigurationError(
                f"only {len(records)} recent runs scored >= {self.rule.min_score:g}; at least 5 are needed "
                "to build a dataset (give feedback on runs, or lower reoptimize.min_score)"
            )
        input_fields = sorted(records[0][0])
        label_fields = sorted(k for k in records[0][1] if k != "reasoning")
        rows = []
        for inputs, outputs in records:
            if sorted(inputs) == input_fields and all(k in outputs for k in label_fields):
                rows.append({**{k: inputs[k] for k in input_fields}, **{k: outputs[k] for k in label_fields}})
        dataset = f"adapt-{adaptive.name}"[:200]
        host.datasets.import_records(dataset, rows, inputs=input_fields, labels=label_fields)
        return submit_optimization(
            host,
            program=adaptive.record.program,
            dataset=dataset,
            space=space_document(adaptive.space, adaptive.bindings),
            n_trials=self.rule.n_trials,
            metric=self.rule.metric,
            version_id=adaptive.record.version_id,
            created_by=f"adaptive:{adaptive.name}",
        )

    def _adopt(self, job_id: str) -> None:
        adaptive = self.adaptive
        host: Any = adaptive.host
        job = host.jobs.get(job_id)
        if job is None or job.status in ("queued", "running"):
            return
        if job.status != "succeeded" or not isinstance(job.result, Mapping):
            adaptive.repository.append(
                adaptive.name,
                "reoptimized",
                None,
                key=f"reoptimized:{job_id}",
                detail={"job_id": job_id, "status": job.status, "added": []},
            )
            return
        configurations = []
        for trial in [job.result.get("best"), *(job.result.get("pareto") or [])]:
            found = trial.get("configuration") if isinstance(trial, Mapping) else None
            if isinstance(found, Mapping) and found not in configurations:
                configurations.append(found)
        added = adaptive.add_arms(configurations[: self.rule.add], source="reoptimization")
        adaptive.repository.append(
            adaptive.name,
            "reoptimized",
            None,
            key=f"reoptimized:{job_id}",
            detail={"job_id": job_id, "status": job.status, "added": added},
        )
        log.info("adaptive %r: re-optimization %s added arms %s", adaptive.name, job_id, added)
