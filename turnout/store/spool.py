"""A bounded local file for ledger rows the database could not take: JSON lines, appended while
the database is away, replayed (and then removed) once it is back. A row is only ever removed
from the spool after the database has committed it; rows carry their request id and the ledger
skips ids it has, so a replay cut short and replayed again writes nothing twice.

Bounded by ``max_bytes``: past it, rows are dropped, counted and logged; that is the only way the
ledger loses a row (with the default 64 MiB, about 200,000 rows of outage).

Several processes may share one spool (the workers of ``turnout serve --workers N``, or
instances with one data directory): appends and the move aside hold a lock on ``<spool>.lock``,
and one process at a time replays (it holds ``<spool>.replay.lock`` until `release`), so no row
is appended to a file being replayed and removed, and no file is replayed twice at once."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Spool"]

log = logging.getLogger("turnout.store")


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.replaying = self.path.with_name(self.path.name + ".replaying")
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = self.path.with_name(self.path.name + ".lock")
        self._replay_lock = self.path.with_name(self.path.name + ".replay.lock")
        self._claim: int | None = None  # the replay lock's descriptor, while replaying

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the spool against the other processes that share it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and the lock with it

    def size(self) -> int:
        total = 0
        for path in (self.path, self.replaying):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def pending(self) -> bool:
        return self.path.exists() or self.replaying.exists()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write ``rows``; how many fitted (the rest are dropped and logged)."""
        with self._locked():
            return self._append(rows)

    def _append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        room = self.max_bytes - self.size()
        lines = []
        for row in rows:
            line = orjson.dumps(row) + b"\n"
            if len(line) > room:
                break
            room -= len(line)
            lines.append(line)
        if lines:
            with open(self.path, "ab") as out:
                out.write(b"".join(lines))
                out.flush()
                os.fsync(out.fileno())
        lost = len(rows) - len(lines)
        if lost:
            self.dropped += lost
            log.error(
                "usage spool %s is full (%d bytes): %d ledger rows dropped",
                self.path,
                self.max_bytes,
                lost,
            )
        return len(lines)

    def take(self) -> Path | None:
        """The file to replay: one cut short before, else the spool itself (moved aside so new
        rows go to a fresh one). Remove it with `done` once its rows are committed, and call
        `release` when done replaying. None when there is nothing, or when another process is
        replaying."""
        if not self._claim_replay():
            return None
        with self._locked():
            if self.replaying.exists():
                return self.replaying
            if self.path.exists():
                os.replace(self.path, self.replaying)
                return self.replaying
        self.release()
        return None

    def _claim_replay(self) -> bool:
        if self._claim is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._replay_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._claim = fd
        return True

    def release(self) -> None:
        """Let another process replay (the replay is over, or stopped)."""
        if self._claim is not None:
            os.close(self._claim)
            self._claim = None

    @staticmethod
    def read(path: Path, batch: int = 1000) -> Iterator[list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        with open(path, "rb") as source:
            for line in source:
                if line.strip():
                    try:
                        rows.append(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        log.error("skipping a damaged line in usage spool %s", path)
                        continue
                if len(rows) >= batch:
                    yield rows
                    rows = []
        if rows:
            yield rows

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)
