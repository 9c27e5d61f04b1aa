"""Weighted fair queueing for a backend whose concurrency slots are full.

Start-time fair queueing: each waiting request gets a tag, ``max(V, F[key])``, where ``V`` is
the tag of the request last let in and ``F[key]`` is where the key's previous request ended
(its tag plus ``1 / priority``). Requests are let in by smallest tag, so a key that has just
queued 64 requests has tags V, V+1, ... V+63, and another key's request, tagged V, goes next:
one key flooding a backend cannot starve the others, a key of priority 2 gets twice the share
of a key of priority 1, and a key that was busy recently (its ``F`` still ahead of ``V``) waits
behind one that was not. Without a gateway key every request counts as one anonymous key, which
is first come, first served, as before. O(log n) per waiting request; nothing when a slot is
free.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FairQueue"]


class FairQueue:
    __slots__ = ("_finish", "_heap", "_seq", "virtual")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._finish: dict[str, float] = {}
        self._seq = itertools.count()
        self.virtual = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, key: str, weight: float) -> asyncio.Future[None]:
        """Queue one request of ``key``; the future is set when it may go in."""
        start = max(self.virtual, self._finish.get(key, 0.0))
        self._finish[key] = start + 1.0 / max(weight, 1e-3)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (start, next(self._seq), future))
        return future

    def pop(self) -> bool:
        """Let the next waiting request in; False when nobody (still) waits."""
        heap = self._heap
        while heap:
            start, _, future = heapq.heappop(heap)
            if not future.done():
                self.virtual = start
                future.set_result(None)
                if not heap and len(self._finish) > 1024:
                    self._finish.clear()  # nobody waits: every key is level again
                return True
        return False
