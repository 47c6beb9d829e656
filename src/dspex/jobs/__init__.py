"""Durable background jobs: optimizations and batch evaluations, run by ``dspex worker`` processes.

The queue is the ``jobs`` table of the project database (:mod:`dspex.store.jobs`): leases, heartbeats,
retries with backoff and cancellation; any number of workers on any machine that shares the database.
"""

from dspex.jobs.submit import EVALUATE, OPTIMIZE, submit_evaluation, submit_optimization

__all__ = ["EVALUATE", "OPTIMIZE", "submit_evaluation", "submit_optimization"]
