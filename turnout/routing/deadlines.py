"""Deadlines on the request path, cheap when they are far away.

Every backend call runs under a deadline (the call's total timeout, 600 s by default), and every
chunk of a stream under another (the idle limit between chunks, 60 s by default). With
`asyncio.timeout_at` each is a timer of the event loop, set up and torn down per call and per
chunk; under uvloop that is a libuv timer handle made, started, stopped and closed each time,
measured at about 15 µs of CPU a request at c=64 (bench: ``total_timeout: null`` against the
default, alternating runs). Yet a deadline minutes away needs no timer of its own: here it joins
a per-second bucket of one shared wheel (a set insertion), which a single repeating timer sweeps
every `SWEEP` seconds, cancelling the tasks whose deadline has passed. Such a deadline fires up
to half a second late, which nobody can tell from a 60 or 600 second limit; a deadline nearer than
`COARSE_AFTER` seconds keeps `asyncio.timeout_at`'s precision.

`timeout_at` returns either; both raise `TimeoutError` in the task when the deadline passes and
answer ``expired()`` afterwards, exactly as `asyncio.Timeout` does (a cancellation from
elsewhere stays a cancellation).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Protocol

__all__ = ["COARSE_AFTER", "SWEEP", "CoarseTimeout", "Deadline", "timeout_at"]

#: deadlines at least this many seconds away go on the wheel
COARSE_AFTER = 30.0
#: how often the wheel is swept: how late a far deadline may fire, at most
SWEEP = 0.5
_PENDING, _EXPIRING, _EXPIRED = 0, 1, 2


class Deadline(Protocol):
    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def expired(self) -> bool: ...


def timeout_at(when: float) -> Deadline:
    """A context manager that raises `TimeoutError` in the current task at loop time ``when``
    (up to `SWEEP` seconds after it when ``when`` is `COARSE_AFTER` seconds away or more)."""
    loop = asyncio.get_running_loop()
    if when - loop.time() < COARSE_AFTER:
        return asyncio.timeout_at(when)
    return CoarseTimeout(when, _wheel(loop))


class CoarseTimeout:
    """`asyncio.Timeout`'s behaviour for a far deadline, on the shared `_Wheel`."""

    __slots__ = ("_cancelling", "_state", "_task", "_wheel", "slot", "when")

    def __init__(self, when: float, wheel: _Wheel) -> None:
        self.when = when
        self.slot = math.floor(when)
        self._wheel = wheel
        self._state = _PENDING
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def expired(self) -> bool:
        return self._state != _PENDING

    async def __aenter__(self) -> CoarseTimeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a timeout needs to run inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._wheel.add(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._wheel.discard(self)
        if self._state == _EXPIRING:
            self._state = _EXPIRED
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from exc  # ours, not someone else's cancellation
        return None

    def expire(self) -> None:
        if self._state == _PENDING and self._task is not None:
            self._state = _EXPIRING
            self._task.cancel()


class _Wheel:
    """The far deadlines of one event loop, in buckets of one second of loop time."""

    __slots__ = ("_handle", "buckets", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, set[CoarseTimeout]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, timeout: CoarseTimeout) -> None:
        bucket = self.buckets.get(timeout.slot)
        if bucket is None:
            bucket = self.buckets[timeout.slot] = set()
        bucket.add(timeout)
        if self._handle is None:
            self._handle = self.loop.call_later(SWEEP, self._sweep)

    def discard(self, timeout: CoarseTimeout) -> None:
        bucket = self.buckets.get(timeout.slot)
        if bucket is not None:
            bucket.discard(timeout)  # an emptied bucket goes at the next sweep

    def _sweep(self) -> None:
        now = self.loop.time()
        for slot in [slot for slot in self.buckets if slot <= now]:
            bucket = self.buckets[slot]  # deadlines in [slot, slot + 1)
            for timeout in [t for t in bucket if t.when <= now]:
                bucket.discard(timeout)
                timeout.expire()
        for slot in [slot for slot, bucket in self.buckets.items() if not bucket]:
            del self.buckets[slot]
        if self.buckets:
            self._handle = self.loop.call_later(SWEEP, self._sweep)
        else:
            self._handle = None
            if _wheels.get(id(self.loop)) is self:
                del _wheels[id(self.loop)]  # idle: nothing kept for a loop that may close


#: one wheel per running loop that has far deadlines pending (by id: uvloop's loops take no
#: weak references); a wheel leaves this map when its last deadline is gone
_wheels: dict[int, _Wheel] = {}


def _wheel(loop: asyncio.AbstractEventLoop) -> _Wheel:
    wheel = _wheels.get(id(loop))
    if wheel is None or wheel.loop is not loop:  # none yet, or a closed loop's at the same id
        wheel = _wheels[id(loop)] = _Wheel(loop)
    return wheel
