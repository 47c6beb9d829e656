"""Pool state published in the home directory, so ``dspex pools status`` reads it without a server.

Pools belong to the process that starts them (``dspex serve --pool``, ``dspex worker --pool``, a script);
there is no pool daemon to ask. So every such process writes its pools' status to
``<home>/pools/<host>-<pid>.json`` when a pool starts and then every ``PUBLISH_S`` seconds, and removes
the file when its pools close::

    {"v": 1, "host": "...", "pid": 4242, "command": "dspex serve --pool general",
     "updated_at": "2026-...Z", "pools": [PoolStatus.to_json(), ...]}

:func:`read_published` returns every file's content, each marked ``stale`` when its owner is gone (on
this host: no such process) or it was not rewritten for ``STALE_S`` seconds (a hung owner, or another
host's that stopped). A publisher that starts removes the files of processes of its host that are gone
(owners killed before they could remove theirs). Files are written whole (a temporary file renamed over
the old one), owner-only, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspex.jsonable import dumps
from dspex.store._engine import private_dir
from dspex.store._time import utcnow

__all__ = ["PUBLISH_S", "STALE_S", "Publisher", "read_published"]

logger = logging.getLogger("dspex.pools")

PUBLISH_S = 1.0  # how often a pool owner rewrites its file
STALE_S = 10.0  # a file not rewritten for this long is stale
VERSION = 1


def _directory(home: Path) -> Path:
    return home / "pools"


_SECRET_OPTIONS = ("key", "token", "secret", "password")


def _command(argv: list[str]) -> str:
    """The owner's command line, with the values of options that may hold secrets left out."""
    shown: list[str] = []
    hide_next = False
    for index, arg in enumerate(argv):
        if index == 0:
            shown.append(Path(arg).name)
            continue
        if hide_next:
            shown.append("***")
            hide_next = False
            continue
        option, sep, _ = arg.partition("=")
        secret = option.startswith("-") and any(word in option.lower() for word in _SECRET_OPTIONS)
        if secret and sep:
            shown.append(f"{option}=***")
        else:
            shown.append(arg)
            hide_next = secret
    return " ".join(shown)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Publisher:
    """Writes one process's pools' status to its file until :meth:`close` (see the module docstring)."""

    def __init__(self, home: Path, statuses: Callable[[], list[dict[str, Any]]]) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.directory = _directory(home)
        self.path = self.directory / f"{self.host}-{self.pid}.json"
        self._statuses = statuses
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failing: str | None = None  # the last error publishing (logged once)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> Publisher:
        """Publish now and every ``PUBLISH_S`` seconds (once: a second call only publishes)."""
        with self._start_lock:
            if self._thread is not None:
                self.publish()
                return self
            self._start()
        return self

    def _start(self) -> None:
        try:
            private_dir(self.directory)
            self._remove_orphans()
        except OSError as exc:  # a read-only home: the pools run all the same, unpublished
            logger.warning("pool status is not published (dspex pools status will not see it): %s", exc)
        self.publish()
        self._thread = threading.Thread(target=self._loop, name="dspex-pools-publish", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        """Write the file now (a pool started or changed); a failure is logged, the next period retries."""
        data = {
            "v": VERSION,
            "host": self.host,
            "pid": self.pid,
            "command": _command(sys.argv),
            "updated_at": utcnow().isoformat(),
            "pools": self._statuses(),
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with self._lock:
                if self._stop.is_set():
                    return
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                    out.write(dumps(data))
                os.replace(temporary, self.path)
        except OSError as exc:
            if str(exc) != self._failing:  # once per distinct error, not every period
                logger.warning("could not publish pool status to %s: %s", self.path, exc)
            self._failing = str(exc)
        else:
            if self._failing is not None:
                logger.warning("pool status published again to %s", self.path)
            self._failing = None

    def close(self) -> None:
        """Stop publishing and remove the file."""
        with self._lock:
            self._stop.set()
            # Never written (no directory, or a file in its place), or removed by hand: nothing to remove.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                self.path.unlink()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(PUBLISH_S):
            self.publish()

    def _remove_orphans(self) -> None:
        """Remove the files of this host's processes that are gone (killed before removing theirs)."""
        for entry in read_published(self.directory.parent):
            if entry["host"] == self.host and entry["pid"] != self.pid and entry.get("gone"):
                with contextlib.suppress(FileNotFoundError):
                    Path(entry["file"]).unlink()


def read_published(home: Path, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every pool owner's published status under ``home``, oldest process first; each entry also has
    ``file``, ``age_s``, ``gone`` (an owner of this host that no longer runs) and ``stale`` (gone, or not
    rewritten for ``STALE_S`` seconds). A file that cannot be read or parsed is reported as such."""
    directory = _directory(home)
    if not directory.is_dir():
        return []
    now = now or utcnow()
    host = socket.gethostname()
    entries: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            updated = dt.datetime.fromisoformat(data["updated_at"])
            pid, owner_host = int(data["pid"]), str(data["host"])
        except FileNotFoundError:  # its owner closed meanwhile
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            entries.append(
                {"file": str(path), "error": f"unreadable: {exc}", "stale": True, "gone": False, "pools": []}
            )
            continue
        age = (now - updated).total_seconds()
        gone = owner_host == host and not _alive(pid)
        entries.append(
            {**data, "file": str(path), "age_s": round(age, 1), "gone": gone, "stale": gone or age > STALE_S}
        )
    return sorted(entries, key=lambda e: e.get("pid") or 0)
