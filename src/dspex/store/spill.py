"""The spill file: execution records the database did not take, kept as JSON lines until it does.

Each line is ``{"v": 1, "reason": "...", "row": {...}}`` (the row's columns as JSON, times ISO 8601); lines
from before reasons were kept hold the row itself, and a line that is not a record is kept as
``{"v": 1, "reason": "not a record: ...", "line": "..."}``. The file is owner-only (it holds inputs and
outputs). Several processes may share one (the App's home directory): appends and replays hold an
advisory ``flock`` on ``<name>.lock``, because a replay rewrites the file and would otherwise lose a
line appended meanwhile. A replay writes the records in file order, 500 per statement, and never lets
a late ``running`` record replace an ended one (see :meth:`~dspex.store.executions.ExecutionRepository.upsert`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dspex.jsonable import dumps
from dspex.store._engine import database_unavailable, describe_error
from dspex.store.executions import ExecutionRepository

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spill file, no lock
    fcntl = None  # type: ignore[assignment]  # the module is optional there

__all__ = ["append_spill", "error_reason", "replay", "replay_spill"]

logger = logging.getLogger("dspex.store")


def error_reason(exc: BaseException) -> str:
    """Why a record was not stored, as kept in the spill file and in a reduced record's ``error``: the
    driver's message without the SQL statement and its parameters."""
    return describe_error(exc)


@contextlib.contextmanager
def _spill_lock(path: Path) -> Iterator[None]:
    """Hold the spill file's lock (``<name>.lock``, an advisory ``flock``) against the other processes
    sharing it: a replay rewrites the file, and a line appended meanwhile would be lost."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_spill(path: Path, rows: list[tuple[dict[str, Any], str]]) -> None:
    """Append ``rows`` (each with the reason it was not stored) to the spill file ``path`` (owner-only)."""
    text = "".join(dumps({"v": 1, "reason": reason, "row": row}) + "\n" for row, reason in rows)
    with _spill_lock(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as spill:
            spill.write(text)


def _parse_row(line: str) -> dict[str, Any]:
    entry = json.loads(line)
    row: dict[str, Any] = entry.get("row", entry)  # older files: the row itself
    for key in ("started_at", "ended_at"):
        if isinstance(row.get(key), str):
            row[key] = dt.datetime.fromisoformat(row[key])
    return row


def _coalesced(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per execution (an upsert statement takes each id once): the last, unless it would put an
    ended run back to ``running``."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        before = latest.get(row["id"])
        if before is None or before.get("status") == "running" or row.get("status") != "running":
            latest[row["id"]] = row
    return list(latest.values())


def replay_spill(repository: ExecutionRepository, path: Path) -> tuple[int, int]:
    """Write the spilled records of ``path`` into the store; returns (written, still failing).

    The file is removed once everything is written; records that still fail stay in it, each with the
    reason (a line that is not a record is kept as it is, with its reason). If the database becomes
    unreachable midway, the records not yet tried stay in the file as they were.
    """
    written, kept, _ = replay(repository, path)
    return written, kept


def replay(
    repository: ExecutionRepository, path: Path, *, chunk: int = 500
) -> tuple[int, int, BaseException | None]:
    """:func:`replay_spill`, plus the outage that stopped it early (None when every line was tried)."""
    if not path.exists():  # the usual case: no lock file made, nothing to read
        return 0, 0, None
    with _spill_lock(path):
        if not path.exists():  # another process replayed it meanwhile
            return 0, 0, None
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept: list[str] = []
        written = 0
        stopped: BaseException | None = None
        parsed: list[tuple[str, dict[str, Any]]] = []
        for line in lines:
            try:
                parsed.append((line, _parse_row(line)))
            except (ValueError, KeyError, TypeError) as exc:
                kept.append(dumps({"v": 1, "reason": f"not a record: {error_reason(exc)}", "line": line}))
        for start in range(0, len(parsed), chunk):
            part = parsed[start : start + chunk]
            if stopped is not None:
                kept.extend(line for line, _ in part)
                continue
            try:
                repository.upsert(_coalesced([row for _, row in part]))
            except Exception as exc:
                if database_unavailable(exc):
                    logger.warning(
                        "replaying %s stopped: the database is unavailable (%s)", path, describe_error(exc)
                    )
                    stopped = exc
                    kept.extend(line for line, _ in part)
                    continue
                # Some row is refused: find it (them) one by one, in order.
                for _line, row in part:
                    try:
                        repository.upsert([row])
                    except Exception as row_exc:
                        logger.error(
                            "replaying execution record %s from %s failed: %s",
                            row.get("id"),
                            path,
                            describe_error(row_exc),
                        )
                        kept.append(dumps({"v": 1, "reason": error_reason(row_exc), "row": row}))
                    else:
                        written += 1
            else:
                written += len(part)
        if kept:
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(kept) + "\n")
            os.replace(tmp, path)
        else:
            path.unlink()
    if written:
        logger.info("replayed %d spilled execution records from %s", written, path)
    return written, len(kept), stopped
