"""Driver processes of one optimization: who runs a trial, whether that process is still there, and the
lease it renews while it is.

A driver is one ``optimize()`` call of a :class:`~dspex.distributed.optimize.ParallelOptimizer`. Its id,
written on every trial row it runs, is ``host/pid/place/nonce``:

- ``host`` and ``pid`` for the people reading the trials;
- ``place``: a short hash of the kernel's boot id and the process's pid namespace (Linux). Two
  processes with the same place see the same pids, so a driver can tell at once that another one on its
  machine (or in its container) is gone, without waiting for its lease: the usual case of a driver
  killed and started again on the same machine. Elsewhere the place is unique to the process, so only
  the lease decides;
- ``nonce``: random, so a reused pid is never taken for the driver that had it.

A trial row also holds ``lease_expires_at``, renewed by a :class:`Heartbeat` thread every third of the
lease while the trial runs; a ``running`` trial past its lease (its driver hung, lost the network or
died on another machine) is marked failed by the next driver that claims a trial, and redone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["Driver", "Heartbeat", "gone", "this_driver"]

logger = logging.getLogger("dspex.distributed")


def _place() -> str:
    """Processes with the same place share a pid namespace on one running kernel (see the module doc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux (or no /proc): pids cannot be compared, only leases decide
        return "x" + uuid.uuid4().hex[:11]
    return hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Driver:
    """One driver process of an optimization (see the module docstring)."""

    host: str
    pid: int
    place: str
    nonce: str

    @property
    def id(self) -> str:
        return f"{self.host}/{self.pid}/{self.place}/{self.nonce}"

    @classmethod
    def parse(cls, driver_id: str) -> Driver | None:
        """The driver an id names, or None for an id this module did not write."""
        parts = driver_id.rsplit("/", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(host=parts[0], pid=int(parts[1]), place=parts[2], nonce=parts[3])


def this_driver() -> Driver:
    """A new driver id for this process (one per ``optimize()`` call)."""
    host = socket.gethostname().replace("/", "_")[:120] or "localhost"
    return Driver(host=host, pid=os.getpid(), place=_place(), nonce=uuid.uuid4().hex[:8])


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: gone all the same
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def gone(driver_id: str, *, me: Driver) -> bool:
    """Whether ``driver_id``'s process is known to have ended: it ran in ``me``'s place (same machine and
    pid namespace) and its pid is gone. False when that cannot be known here: its lease decides."""
    other = Driver.parse(driver_id)
    if other is None or other.place != me.place or other.pid == me.pid:
        return False  # elsewhere, or this very process (another optimize() call may be running here)
    return _process_gone(other.pid)


class Heartbeat:
    """Calls ``renew`` every ``interval_s`` on a daemon thread until stopped (``with Heartbeat(...):``).

    A failed renewal is logged and tried again at the next beat: if they keep failing, the lease lapses,
    another driver marks the trials failed, and this driver learns it when it records them.
    """

    def __init__(self, renew: Callable[[], object], interval_s: float, *, name: str) -> None:
        self._renew = renew
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._renew()
            except Exception as exc:  # logged and retried; a lapsed lease is handled where trials end
                logger.warning(
                    "renewing the trial lease failed (%s: %s); trying again", type(exc).__name__, exc
                )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
