"""The cache of evaluation results, per (configuration id, example hash).

A configuration id names everything that decides a prediction (the program's class and state, the
LM and its settings); the example hash is the SHA-256 of the example's canonical JSON, inputs and
labels apart. When both match, the prediction and its scores are reused and the example costs no LM
call, which is what makes re-evaluating a configuration in an optimizer free::

    cache = MemoryCache(maxsize=50_000)
    evaluator = Evaluator(exact_match, cache=cache)
    await evaluator.arun(program, devset, configuration_id="cot-t0.7")   # LM calls
    await evaluator.arun(program, devset, configuration_id="cot-t0.7")   # none

The evaluator reads a whole run's keys with one ``get_many`` and writes the run's new results with one
``put_many``, so a database-backed cache (the :class:`EvalCache` protocol) costs two queries per
evaluation, not two per example. Errors are never cached: a failed example is tried again next time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dspex.errors import ConfigurationError
from dspex.jsonable import canonical_hash, to_jsonable

__all__ = ["CacheKey", "CachedResult", "EvalCache", "MemoryCache", "StoredCache", "example_hash"]

# (configuration id, example hash)
CacheKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CachedResult:
    """What a cache keeps of one evaluated example: the prediction's fields as JSON and the scores.

    ``trace``: for a call made inside a DSPy optimizer (:mod:`dspex.optimize.dspy_run`), the predictor
    calls that made the prediction, ``{"predictor": name, "inputs": {...}, "outputs": {...}}`` each, so
    that a cached call can give a bootstrapping optimizer the trace it collects demos from."""

    prediction: dict[str, Any]
    scores: dict[str, float]
    feedback: dict[str, str] = field(default_factory=dict)
    duration_ms: float = 0.0
    trace: tuple[dict[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored form (a ``"v"`` field, so that it can evolve)."""
        data: dict[str, Any] = {
            "v": 1,
            "prediction": self.prediction,
            "scores": self.scores,
            "feedback": self.feedback,
            "duration_ms": self.duration_ms,
        }
        if self.trace is not None:
            data["trace"] = list(self.trace)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CachedResult:
        trace = data.get("trace")
        return cls(
            prediction=dict(data["prediction"]),
            scores={k: float(v) for k, v in (data.get("scores") or {}).items()},
            feedback=dict(data.get("feedback") or {}),
            duration_ms=float(data.get("duration_ms") or 0.0),
            trace=tuple(trace) if trace is not None else None,
        )


@runtime_checkable
class EvalCache(Protocol):
    """Where evaluation results are kept. Implementations must be safe to share between threads."""

    def get_many(self, keys: Sequence[CacheKey]) -> Mapping[CacheKey, CachedResult]:
        """The results known for ``keys``; unknown keys are simply absent."""
        ...

    def put_many(self, entries: Mapping[CacheKey, CachedResult]) -> None:
        """Store (or replace) results."""
        ...


class MemoryCache:
    """An in-process LRU :class:`EvalCache` holding at most ``maxsize`` results.

    >>> cache = MemoryCache(maxsize=2)
    >>> cache.put_many({("c1", "h1"): CachedResult({"answer": "4"}, {"exact_match": 1.0})})
    >>> len(cache)
    1
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ConfigurationError(f"cache maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[CacheKey, CachedResult] = OrderedDict()
        self._lock = threading.Lock()  # one cache may serve evaluations on several threads/loops

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, CachedResult]:
        found: dict[CacheKey, CachedResult] = {}
        with self._lock:
            for key in keys:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                    found[key] = value
        return found

    def put_many(self, entries: Mapping[CacheKey, CachedResult]) -> None:
        with self._lock:
            for key, value in entries.items():
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()


class _JsonRows(Protocol):
    def get_many(self, keys: Sequence[CacheKey]) -> Mapping[CacheKey, Mapping[str, Any]]: ...

    def put_many(self, entries: Mapping[CacheKey, Mapping[str, Any]]) -> None: ...


class StoredCache:
    """An :class:`EvalCache` over JSON rows in the project database (the ``evaluation_cache`` table,
    :class:`dspex.store.evalcache.EvaluationCacheRepository`): shared by every process on that database
    and kept across restarts, which is what lets a resumed optimization skip evaluations already paid for.

    >>> cache = StoredCache(EvaluationCacheRepository(app.db))      # or app.evaluation_cache
    """

    def __init__(self, rows: _JsonRows) -> None:
        self.rows = rows

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, CachedResult]:
        return {key: CachedResult.from_json(data) for key, data in self.rows.get_many(keys).items()}

    def put_many(self, entries: Mapping[CacheKey, CachedResult]) -> None:
        self.rows.put_many({key: result.to_json() for key, result in entries.items()})


def example_hash(example: Any, inputs: Mapping[str, Any] | None = None) -> str:
    """The content hash of a ``dspy.Example``: its inputs and its labels, as canonical JSON.

    Which fields are inputs is part of the hash: the same data with other inputs is another example.
    ``inputs`` are the example's inputs as JSON (``to_jsonable``), when the caller has made them already:
    the same hash, one ``Example.inputs()`` copy less.

    >>> len(example_hash(dspy.Example(question="2+2?", answer="4").with_inputs("question")))
    64
    """
    if inputs is None:
        inputs = example.inputs().toDict()
    labels = {k: v for k, v in example.toDict().items() if k not in inputs}
    return canonical_hash(to_jsonable({"inputs": inputs, "labels": labels}))
