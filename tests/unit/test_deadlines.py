"""Deadlines on the request path (turnout/routing/deadlines.py): a far deadline joins the shared
per-second wheel instead of a timer of its own, fires within a sweep after it is due, and keeps
`asyncio.Timeout`'s contract (TimeoutError for its own expiry, a cancellation from elsewhere
stays one); a near deadline is `asyncio.timeout_at` itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from turnout.routing import deadlines
from turnout.routing.deadlines import CoarseTimeout, timeout_at


async def test_a_near_deadline_is_asyncios_own() -> None:
    loop = asyncio.get_running_loop()
    timer = timeout_at(loop.time() + 0.05)
    assert isinstance(timer, asyncio.Timeout)
    with pytest.raises(TimeoutError):
        async with timer:
            await asyncio.sleep(5)
    assert timer.expired()


async def test_a_far_deadline_fires_within_a_second_after_it_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deadlines, "COARSE_AFTER", 0.0)  # every deadline is "far"
    loop = asyncio.get_running_loop()
    timer = timeout_at(loop.time() + 0.3)
    assert isinstance(timer, CoarseTimeout)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with timer:
            await asyncio.sleep(10)
    waited = time.monotonic() - start
    assert timer.expired() and 0.3 <= waited < 0.3 + deadlines.SWEEP + 0.3, waited


async def test_a_default_deadline_goes_on_the_wheel() -> None:
    loop = asyncio.get_running_loop()
    timer = timeout_at(loop.time() + 600)
    assert isinstance(timer, CoarseTimeout)
    async with timer:
        await asyncio.sleep(0)
    assert not timer.expired()


async def test_work_done_in_time_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadlines, "COARSE_AFTER", 0.0)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> int:
        async with timeout_at(loop.time() + 2 + i % 5):
            await asyncio.sleep(0.01)
        return i

    assert await asyncio.gather(*(one(i) for i in range(1000))) == list(range(1000))
    wheel = deadlines._wheels[id(loop)]
    assert all(not bucket for bucket in wheel.buckets.values())
    await asyncio.sleep(2 * deadlines.SWEEP + 0.2)  # a sweep: empty buckets and the idle wheel go
    assert id(loop) not in deadlines._wheels


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deadlines, "COARSE_AFTER", 0.0)
    loop = asyncio.get_running_loop()
    timer = timeout_at(loop.time() + 30)

    async def guarded() -> None:
        async with timer:
            await asyncio.sleep(10)

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not timer.expired()


async def test_an_expiry_inside_an_outer_timeout_is_the_inner_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nested as the attempt nests them (a call's deadline inside the request's): the one that
    passed raises, the other stays unexpired."""
    monkeypatch.setattr(deadlines, "COARSE_AFTER", 0.0)
    loop = asyncio.get_running_loop()
    outer = timeout_at(loop.time() + 60)
    inner = timeout_at(loop.time() + 0.2)
    with pytest.raises(TimeoutError):
        async with outer, inner:
            await asyncio.sleep(10)
    assert inner.expired() and not outer.expired()
