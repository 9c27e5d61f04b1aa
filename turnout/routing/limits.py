"""Per-backend concurrency: requests in flight, a bounded queue behind ``max_concurrency``, and
the 429 a full queue earns. Waiting requests go in by weighted fair queueing (`FairQueue`: by
their gateway key's priority and recent use), not in arrival order.

The slots themselves are the provider's (`Provider.acquire`/`release`), because a provider also
takes them for calls of its own; this module counts who holds and who waits, refuses to queue
beyond ``queue_size``, and tells the router how busy each backend is (``least_busy``,
``prefix_affinity``). Counters only: O(1), no locks (one event loop).
"""

from __future__ import annotations

import asyncio
import math

from ..errors import BackendRateLimitedError
from ..providers.base import Provider
from .fairq import FairQueue

__all__ = ["Limiter", "QueueFullError"]


class QueueFullError(BackendRateLimitedError):
    """Every slot of a backend is taken and its queue is full."""

    code = "queue_full"


class Limiter:
    __slots__ = ("in_flight", "limit", "queue", "queue_size", "rejected", "waiting")

    def __init__(self, limit: int | None, queue_size: int) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self.in_flight = 0
        self.waiting = 0
        self.rejected = 0
        self.queue = FairQueue()

    def full(self) -> bool:
        """True when one more request would have to queue beyond ``queue_size``."""
        return self.limit is not None and self.in_flight + self.waiting >= (
            self.limit + self.queue_size
        )

    def saturated(self) -> bool:
        """True when one more request would have to wait for a slot."""
        return self.limit is not None and self.in_flight + self.waiting >= self.limit

    def load(self) -> float:
        """Requests held or waiting, per slot when the backend has a limit."""
        busy = self.in_flight + self.waiting
        return busy / self.limit if self.limit else float(busy)

    async def enter(self, provider: Provider, key: str = "", weight: float = 1.0) -> None:
        """Take one of the backend's slots, waiting in the fair queue while all are held. A slot
        freed while others wait passes straight to the next of them (`_hand_on`), so nobody
        arriving meanwhile can jump the queue."""
        if self.limit is not None and (self.in_flight >= self.limit or len(self.queue)):
            future = self.queue.push(key, weight)
            self.waiting += 1
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._hand_on()  # let in, then cancelled before running: pass it on
                raise
            finally:
                self.waiting -= 1
        else:
            self.in_flight += 1
        try:
            await provider.acquire()  # the provider's own semaphore, shared with its own calls
        except BaseException:
            self._hand_on()
            raise

    def _hand_on(self) -> None:
        if not self.queue.pop():
            self.in_flight -= 1

    def leave(self, provider: Provider) -> None:
        provider.release()
        self._hand_on()

    def refuse(self, name: str, seconds_per_call: float | None) -> QueueFullError:
        """The 429 for a full queue, with a Retry-After guessed from the backend's pace."""
        self.rejected += 1
        limit = self.limit or 1
        pace = seconds_per_call if seconds_per_call else 1.0
        retry = max(1.0, math.ceil(pace * (self.waiting + 1) / limit))
        return QueueFullError(
            f"backend '{name}' is busy: {self.in_flight} running (max_concurrency {limit}) and "
            f"{self.waiting} queued (queue_size {self.queue_size})",
            retry_after=retry,
            backend=name,
        )

    def snapshot(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "queued": self.waiting,
            "max_concurrency": self.limit,
            "queue_size": self.queue_size if self.limit is not None else None,
            "rejected": self.rejected,
        }
