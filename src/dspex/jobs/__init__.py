"""Durable background jobs: optimizations and batch evaluations, run by ``dspex worker`` processes.

The queue is the ``jobs`` table of the project database (:mod:`dspex.store.jobs`): leases, heartbeats,
retries with backoff and cancellation; any number of workers on any machine that shares the database.
::

    job = submit_optimization(app, program="qa", dataset="qa-set", space=document, n_trials=30)
    Worker(app).run(stop_when_idle=True)        # or `dspex worker` in as many processes as you like
    app.jobs.get(job.id).result                 # {"optimization_id": ..., "best": {...}, ...}

The worker and its handlers (and the database code under them) load on first use of their names.
"""

import typing as _typing

from dspex import _lazy
from dspex.jobs._context import JobContext, JobInterrupted, StopReason
from dspex.jobs.submit import (
    EVALUATE,
    OPTIMIZE,
    submit_dspy_optimization,
    submit_evaluation,
    submit_optimization,
)

if _typing.TYPE_CHECKING:
    from dspex.jobs.handlers import HANDLERS, Handler, join_optimization
    from dspex.jobs.worker import Outcome, Worker, WorkerEvent

_LAZY = {
    "HANDLERS": "dspex.jobs.handlers",
    "Handler": "dspex.jobs.handlers",
    "join_optimization": "dspex.jobs.handlers",
    "Outcome": "dspex.jobs.worker",
    "Worker": "dspex.jobs.worker",
    "WorkerEvent": "dspex.jobs.worker",
}

__all__ = [
    "EVALUATE",
    "HANDLERS",
    "OPTIMIZE",
    "Handler",
    "JobContext",
    "JobInterrupted",
    "Outcome",
    "StopReason",
    "Worker",
    "WorkerEvent",
    "join_optimization",
    "submit_dspy_optimization",
    "submit_evaluation",
    "submit_optimization",
]

__getattr__, __dir__ = _lazy.attach("dspex.jobs", _LAZY, globals(), __all__)
