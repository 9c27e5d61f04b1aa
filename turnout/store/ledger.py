"""The usage ledger: one row per request, written in batches off the request path.

Telemetry's drain hands every batch of finished requests to `Ledger.sink` (a list append); a
task of its own writes them to the store. A batch the store refuses goes to the spool
(turnout/store/spool.py) and is replayed when the store answers again; at shutdown whatever is
queued is written, or spooled. Rows are keyed by request id, so nothing is written twice.

Rows older than ``storage.usage_retention_days`` (90 by default; never less than the longest
budget period, 30 days) are deleted by the same task, a minute after start and then hourly, so
the ledger does not grow without bound (a busy gateway writes about 250 bytes a request).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..telemetry import Trace
from .spool import Spool

__all__ = ["Ledger", "UsageWriter", "row_of"]

log = logging.getLogger("turnout.store")

_BOOT = os.urandom(6).hex()
_SEQ = itertools.count(1)


class UsageWriter(Protocol):
    async def write_usage(self, rows: Sequence[dict[str, Any]]) -> None: ...

    async def prune_usage(self, before: float) -> int: ...


#: how often old rows are pruned, and how long after start the first time
PRUNE_EVERY, FIRST_PRUNE = 3600.0, 60.0


def row_of(trace: Trace) -> dict[str, Any]:
    """The ledger row of a finished request (drained: tokens and cost are filled in)."""
    ttft = trace.ttft_s
    return {
        "request_id": f"{_BOOT}-{next(_SEQ)}",
        "ts": trace.wall,
        "key_name": trace.key or None,
        "end_user": trace.user,
        "front": trace.front,
        "model": trace.model,
        "backend": trace.backend,
        "served_model": trace.served or None,
        "status": trace.status,
        "error_code": trace.code,
        "tokens_in": trace.tokens_in or 0,
        "tokens_out": trace.tokens_out or 0,
        "estimated": trace.estimated,
        "cost": trace.cost,
        "latency_ms": round(trace.latency_s * 1000, 3),
        "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
        "streamed": trace.stream,
    }


class Ledger:
    def __init__(
        self,
        store: UsageWriter,
        spool: Spool,
        *,
        interval: float = 0.5,
        batch: int = 1000,
        retry: float = 2.0,
        retention_s: float | None = None,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.pruned = 0
        self._next_prune = time.monotonic() + FIRST_PRUNE
        self.spool = spool
        self.interval = interval
        self.batch = batch
        self.retry = retry
        self.written = 0
        self.spooled = 0
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._next_try = 0.0

    def sink(self, traces: Sequence[Trace]) -> None:
        """Telemetry's sink: queue a row for every request that asked for a model."""
        self._queue.extend(row_of(t) for t in traces if t.kind is not None)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="turnout-ledger")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._next_try = 0.0
        await self.flush()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if self.retention_s is not None and time.monotonic() >= self._next_prune:
                    await self.prune()
            except Exception:  # the writer must outlive any one failure
                log.exception("usage ledger flush failed")

    async def prune(self) -> int:
        """Delete the rows older than the retention; a store that is down is tried next hour."""
        self._next_prune = time.monotonic() + PRUNE_EVERY
        if self.retention_s is None or self._down_since is not None:
            return 0
        try:
            gone = await self.store.prune_usage(time.time() - self.retention_s)
        except Exception as exc:
            log.warning("usage ledger: old rows not pruned (%s); trying again in an hour", exc)
            return 0
        self.pruned += gone
        if gone:
            days = self.retention_s / 86400
            log.info("usage ledger: %d rows older than %g days deleted", gone, days)
        return gone

    async def flush(self) -> None:
        """Write what is queued (to the spool while the store is down); replay the spool when
        the store is back."""
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            self._to_spool()
            return
        if self.spool.pending() and not await self._replay():
            self._to_spool()
            return
        while self._queue:
            rows, self._queue = self._queue[: self.batch], self._queue[self.batch :]
            if not await self._write(rows):
                self._queue = rows + self._queue
                self._to_spool()
                return

    def _to_spool(self) -> None:
        rows, self._queue = self._queue, []
        if rows:
            self.spooled += self.spool.append(rows)

    async def _write(self, rows: list[dict[str, Any]]) -> bool:
        try:
            await self.store.write_usage(rows)
        except Exception as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "usage ledger: the database refused a batch (%s); spooling to %s",
                    exc,
                    self.spool.path,
                )
            self._next_try = time.monotonic() + self.retry
            return False
        if self._down_since is not None:
            log.warning(
                "usage ledger: database back after %.1f s", time.monotonic() - self._down_since
            )
            self._down_since = None
        self.written += len(rows)
        return True

    async def _replay(self) -> bool:
        """Write every spooled row; False (the rest kept) if the store refuses. True at once
        when another process is replaying the spool."""
        try:
            while (path := self.spool.take()) is not None:
                for rows in Spool.read(path, self.batch):
                    if not await self._write(rows):
                        return False
                self.spool.done(path)
            return True
        finally:
            self.spool.release()
