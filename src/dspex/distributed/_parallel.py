"""How many trials one optimization driver runs at once: the bound every entry point checks (the API's
body, the CLI, job payloads, :class:`~dspex.distributed.optimize.ParallelOptimizer`). Light on purpose:
the REST models import it without importing Optuna."""

from __future__ import annotations

from dspex.errors import ConfigurationError

__all__ = ["MAX_DRIVERS", "MAX_PARALLEL", "check_drivers", "check_parallel"]

MAX_PARALLEL = 64
"""The most trials one driver runs at once: each holds a thread and an evaluation's concurrency, and
past a few dozen the sampler's asks (under one lock) dominate; more parallelism is more drivers."""


def check_parallel(parallel: object, what: str = "parallel") -> int:
    """``parallel`` as a trial count from 1 to :data:`MAX_PARALLEL`, or a ConfigurationError saying so."""
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigurationError(
            f"{what} must be a whole number from 1 to {MAX_PARALLEL} (trials evaluated at once), "
            f"got {parallel!r}"
        )
    return parallel


MAX_DRIVERS = 16
"""The most worker processes one optimization job asks for (the owner and its joiners): each is a job a
worker claims, and all of them claim trials under the run's one lock."""


def check_drivers(drivers: object, what: str = "drivers") -> int:
    """``drivers`` as a process count from 1 to :data:`MAX_DRIVERS`, or a ConfigurationError saying so."""
    if not isinstance(drivers, int) or isinstance(drivers, bool) or not 1 <= drivers <= MAX_DRIVERS:
        raise ConfigurationError(
            f"{what} must be a whole number from 1 to {MAX_DRIVERS} (worker processes driving the "
            f"optimization), got {drivers!r}"
        )
    return drivers
