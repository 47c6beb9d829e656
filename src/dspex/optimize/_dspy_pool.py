"""What of a DSPy optimizer's program call may cross to a pool's worker, and how many calls may go under
the run's cap (:mod:`dspex.optimize.dspy_run` on a pool).

- :func:`lm_sampling`: the LM of a call crosses only as sampling numbers
  (:data:`~dspex.pools.remote.SAMPLING_KWARGS`) of a copy of the run's task LM; anything else keeps the
  call in the driver.
- :func:`admit`: an evaluation on the pool sends only as many examples not cached as the run's
  ``max_lm_calls`` has calls left, one reserved per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspex.optimize._dspy_lm import CallCap, CapReached, Stop

__all__ = ["admit", "lm_sampling"]

_LM_RUNTIME = frozenset({"kwargs", "history", "callbacks"})  # what ``lm.copy`` makes anew


def lm_sampling(lm: Any, task: Any) -> dict[str, Any] | None:
    """``lm``'s sampling settings where they differ from ``task``'s (``{}``: the same), when ``lm`` is
    ``task`` or a copy of it (``task.copy(temperature=..., rollout_id=...)``: same class, same model and
    every other attribute the same object) whose keyword arguments differ only in numbers of
    :data:`~dspex.pools.remote.SAMPLING_KWARGS`; None otherwise (another model, an endpoint, a key, a
    callback, any other setting)."""
    import math

    from dspex.pools.remote import SAMPLING_KWARGS

    if lm is task:
        return {}
    if lm is None or type(lm) is not type(task):
        return None
    mine, theirs = vars(lm), vars(task)
    if set(mine) != set(theirs):
        return None
    for name, value in theirs.items():
        if name not in _LM_RUNTIME and mine[name] is not value:
            return None
    kwargs, base = dict(lm.kwargs), dict(task.kwargs)
    if set(base) - set(kwargs):
        return None
    changed = {k: v for k, v in kwargs.items() if k not in base or base[k] != v}
    for key, value in changed.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if key not in SAMPLING_KWARGS or not numeric or not math.isfinite(value):
            return None
    return changed


def admit(
    cap: CallCap | None, cache: Any, remote: Any, devset: list[Any]
) -> tuple[list[Any], Callable[[bool], None]]:
    """The examples of an evaluation on ``remote`` that ``cap`` lets go (every cached one, and one LM
    call reserved per example not cached, as many as are left), and what to call when the evaluation
    ended: it releases the reservation (the results' calls are counted by then) and, when some
    examples were held back and the evaluation finished, stops the run at its cap."""
    from dspex.optimize.cache import EvalCache, example_hash

    if cap is None:
        return devset, lambda finished: None
    hashes = [example_hash(example) for example in devset]
    fingerprint = str(remote.fingerprint)
    hits = cache.get_many([(fingerprint, h) for h in hashes]) if isinstance(cache, EvalCache) else {}
    missing = [i for i, h in enumerate(hashes) if (fingerprint, h) not in hits]
    if not missing:
        return devset, lambda finished: None
    granted = cap.reserve(len(missing))  # Stop when none is left
    held = set(missing[granted:])

    def done(finished: bool) -> None:
        cap.release(granted)
        if held and finished:
            raise Stop(CapReached(f"max_lm_calls={cap.limit} reached"))

    return [e for i, e in enumerate(devset) if i not in held], done
