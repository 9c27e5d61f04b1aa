"""Per-backend concurrency: counted slots, a bounded queue, spill-over, and 429 when full."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_routing import MemoryProvider, RecordingRouter, body, read_all, ready
from turnout.routing.limits import Limiter, QueueFullError


async def test_limiter_counts_holders_and_waiters() -> None:
    provider = MemoryProvider("a", ["m"], max_concurrency=1)
    limiter = Limiter(1, 1)
    assert (limiter.full(), limiter.saturated(), limiter.load()) == (False, False, 0.0)
    await limiter.enter(provider)
    assert (limiter.in_flight, limiter.saturated(), limiter.full()) == (1, True, False)
    waiter = asyncio.ensure_future(limiter.enter(provider))
    await asyncio.sleep(0)
    assert (limiter.waiting, limiter.full(), limiter.load()) == (1, True, 2.0)
    limiter.leave(provider)
    await waiter
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    limiter.leave(provider)
    assert limiter.snapshot() == {
        "in_flight": 0,
        "queued": 0,
        "max_concurrency": 1,
        "queue_size": 1,
        "rejected": 0,
    }


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    provider = MemoryProvider("a", ["m"], max_concurrency=1)
    limiter = Limiter(1, 4)
    await limiter.enter(provider)
    waiter = asyncio.ensure_future(limiter.enter(provider))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (limiter.waiting, limiter.in_flight) == (0, 1)


def test_unlimited_backends_are_never_full() -> None:
    limiter = Limiter(None, 0)
    limiter.in_flight = 10_000
    assert not limiter.full() and not limiter.saturated() and limiter.load() == 10_000


def test_retry_after_follows_the_backends_pace() -> None:
    limiter = Limiter(2, 3)
    limiter.in_flight, limiter.waiting = 2, 3
    err = limiter.refuse("a", 1.5)
    assert isinstance(err, QueueFullError)
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "queue_full")
    assert err.retry_after == 3  # ceil(1.5 s per call * 4 ahead / 2 slots)
    assert err.headers() == {"Retry-After": "3"}
    assert "2 running (max_concurrency 2) and 3 queued (queue_size 3)" in err.message
    assert limiter.refuse("a", None).retry_after == 2 and limiter.rejected == 2


async def hold_stream(router: RecordingRouter) -> object:
    chunks, _ = await router.stream("chat", body())
    return chunks


def busy(name: str, queue_size: int) -> MemoryProvider:
    provider = MemoryProvider(name, ["m"], max_concurrency=1, outcomes=[["held"]])
    provider.config = provider.config.model_copy(update={"queue_size": queue_size})
    return provider


async def test_a_full_queue_is_a_429_with_retry_after() -> None:
    a = busy("a", 1)
    router = RecordingRouter(await ready(a))
    held = await hold_stream(router)  # the one slot
    queued = asyncio.ensure_future(router.complete("chat", body()))  # the one queue place
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError) as info:
        await router.complete("chat", body())
    assert info.value.status == 429 and info.value.retry_after is not None
    assert info.value.backend == "a" and len(a.calls) == 1
    await read_all(held)  # type: ignore[arg-type]
    (result, target) = await asyncio.wait_for(queued, 1)
    assert target.provider is a and result["served_by"] == "a"
    stats = router.live()["a"]["concurrency"]
    assert stats == {
        "in_flight": 0,
        "queued": 0,
        "max_concurrency": 1,
        "queue_size": 1,
        "rejected": 1,
    }


async def test_a_full_backend_spills_over_to_the_next() -> None:
    a, b = busy("a", 0), MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b))
    held = await hold_stream(router)
    for _ in range(3):
        _, target = await router.complete("chat", body())
        assert target.provider is b  # queue_size 0: never waits behind a busy a
    assert len(a.calls) == 1
    await read_all(held)  # type: ignore[arg-type]
    _, target = await router.complete("chat", body())
    assert target.provider is a


async def test_queue_full_is_not_a_failure_of_the_backend() -> None:
    a = busy("a", 0)
    router = RecordingRouter(await ready(a))
    held = await hold_stream(router)
    for _ in range(10):
        with pytest.raises(QueueFullError):
            await router.complete("chat", body())
    assert router.backend(a).breaker.closed and router.backend(a).breaker.consecutive == 0
    await read_all(held)  # type: ignore[arg-type]
