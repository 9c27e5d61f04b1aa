"""The model scheduler with a stand-in engine: loads on demand, LRU eviction, batching against
thrash, idle unload, the memory budget, never unloading under a running request, cancelled loads.

The engine here is a few lines that take ``load_time`` to load and record every load and
unload; the same scheduler drives llama.cpp in tests/integration/test_models_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from turnout.errors import BackendError
from turnout.providers.embedded.scheduler import ModelTooLargeError, Scheduler
from turnout.wire.durations import FOREVER

MB = 1024 * 1024


class Engine:
    """Records loads and unloads; a load takes ``load_time`` and honours its cancel flag."""

    def __init__(self, load_time: float = 0.02, sizes: dict[str, int] | None = None) -> None:
        self.load_time = load_time
        self.sizes = sizes or {}
        self.events: list[tuple[str, str]] = []
        self.loaded: set[str] = set()
        self.fail: set[str] = set()
        self.progress_seen: list[float] = []

    async def load(
        self, name: str, progress: Callable[[float], None], cancel: threading.Event
    ) -> str:
        self.events.append(("load", name))
        steps = 10
        for i in range(steps):
            if cancel.is_set():
                self.events.append(("aborted", name))
                raise RuntimeError("aborted")
            progress(i / steps)
            await asyncio.sleep(self.load_time / steps)
        if name in self.fail:
            raise RuntimeError("bad magic")
        self.loaded.add(name)
        return f"handle:{name}"

    async def unload(self, name: str, handle: Any) -> None:
        assert handle == f"handle:{name}"
        self.events.append(("unload", name))
        self.loaded.discard(name)

    def estimate(self, name: str) -> int:
        return self.sizes.get(name, 100 * MB)

    def loads(self) -> list[str]:
        return [name for kind, name in self.events if kind == "load"]


def scheduler(engine: Engine, keep_alive: float = FOREVER, **kw: Any) -> Scheduler:
    return Scheduler(
        engine.load, engine.unload, engine.estimate, keep_alive=lambda _: keep_alive, **kw
    )


async def use(s: Scheduler, name: str, hold: float = 0.0, **kw: Any) -> str:
    """One request: lease the model, 'generate' for ``hold`` seconds, release."""
    lease = await s.acquire(name, **kw)
    try:
        await asyncio.sleep(hold)
        return str(lease.handle)
    finally:
        lease.release()


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_model_loads_on_first_use_and_stays() -> None:
    engine = Engine()
    s = scheduler(engine)
    assert await use(s, "a") == "handle:a"
    assert await use(s, "a") == "handle:a"
    assert engine.loads() == ["a"]
    assert s.stats["loads"] == 1
    await s.close()
    assert engine.events[-1] == ("unload", "a")


async def test_requests_waiting_for_a_load_share_it() -> None:
    engine = Engine(load_time=0.1)
    s = scheduler(engine)
    handles = await asyncio.gather(*(use(s, "a") for _ in range(5)))
    assert handles == ["handle:a"] * 5
    assert engine.loads() == ["a"]
    await s.close()


async def test_max_loaded_one_evicts_the_other_model() -> None:
    engine = Engine()
    s = scheduler(engine, max_loaded=1)
    await use(s, "a")
    await use(s, "b")
    assert engine.events == [("load", "a"), ("unload", "a"), ("load", "b")]
    assert s.stats["evicted"] == 1
    await s.close()


async def test_the_least_recently_used_idle_model_goes_first() -> None:
    engine = Engine()
    s = scheduler(engine, max_loaded=2)
    await use(s, "a")
    await use(s, "b")
    await use(s, "a")  # b is now the least recently used
    await use(s, "c")
    assert ("unload", "b") in engine.events and ("unload", "a") not in engine.events
    assert engine.loaded == {"a", "c"}
    await s.close()


@pytest.mark.parametrize(("room", "optimum"), [(2, 3), (1, 3)])
async def test_thrash_workload_is_batched(room: int, optimum: int) -> None:
    """A, B, A, A, C at once (llama-swap#612): every request is answered, and the loads are at
    most the optimum plus one (3 loads is the optimum with room for one or two models)."""
    engine = Engine(load_time=0.05)
    s = scheduler(engine, max_loaded=room, swap_after=0.0)
    order = ["a", "b", "a", "a", "c"]
    handles = await asyncio.gather(*(use(s, name, hold=0.02) for name in order))
    assert handles == [f"handle:{n}" for n in order]
    assert len(engine.loads()) <= optimum + 1
    assert len(engine.loads()) == optimum  # batching gets the optimum here
    await s.close()


async def test_a_busy_model_is_never_unloaded() -> None:
    engine = Engine()
    s = scheduler(engine, max_loaded=1, swap_after=0.0)
    lease = await s.acquire("a")
    waiting = asyncio.create_task(use(s, "b"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert engine.loaded == {"a"}, "a was unloaded while its request ran"
    lease.release()
    assert await waiting == "handle:b"
    assert engine.events == [("load", "a"), ("unload", "a"), ("load", "b")]
    await s.close()


async def test_a_busy_model_keeps_taking_requests_until_swap_after() -> None:
    """While b waits for room, a (busy) still takes new requests for ``swap_after`` seconds;
    after that it drains: new requests for a queue behind b."""
    engine = Engine()
    s = scheduler(engine, max_loaded=1, swap_after=0.3)
    first = await s.acquire("a")
    b = asyncio.create_task(use(s, "b"))
    await asyncio.sleep(0.05)
    second = await asyncio.wait_for(s.acquire("a"), 0.1)  # within swap_after: served at once
    second.release()
    await asyncio.sleep(0.4)  # past swap_after: a drains
    late = asyncio.create_task(use(s, "a"))
    await asyncio.sleep(0.1)
    assert not late.done(), "a draining model took a new request"
    first.release()
    assert await b == "handle:b"
    assert await late == "handle:a"
    assert engine.loads() == ["a", "b", "a"]
    await s.close()


async def test_idle_model_unloads_after_keep_alive() -> None:
    engine = Engine()
    s = scheduler(engine, keep_alive=0.15)
    await use(s, "a")
    assert engine.loaded == {"a"}
    (entry,) = s.status()
    assert entry["state"] == "loaded" and entry["expires_at"] is not None
    await until(lambda: not engine.loaded, within=1.0)
    assert s.stats["idle"] == 1
    assert s.status() == []
    await s.close()


async def test_a_request_in_time_renews_keep_alive() -> None:
    engine = Engine()
    s = scheduler(engine, keep_alive=0.3)
    await use(s, "a")
    for _ in range(3):
        await asyncio.sleep(0.15)
        await use(s, "a")
    assert engine.loaded == {"a"}
    await until(lambda: not engine.loaded, within=1.0)
    await s.close()


async def test_request_keep_alive_wins_over_the_model_default() -> None:
    engine = Engine()
    s = scheduler(engine, keep_alive=FOREVER)
    await use(s, "a", keep_alive=0.0)  # Ollama's keep_alive: 0 unloads right after
    await until(lambda: not engine.loaded, within=1.0)
    await use(s, "b", keep_alive=0.1)
    await until(lambda: not engine.loaded, within=1.0)
    await use(s, "c")  # the default: kept
    await asyncio.sleep(0.2)
    assert engine.loaded == {"c"}
    await s.close()


async def test_memory_budget_evicts_to_make_room() -> None:
    engine = Engine(sizes={"a": 300 * MB, "b": 300 * MB, "c": 500 * MB})
    s = scheduler(engine, budget=800 * MB)
    await use(s, "a")
    await use(s, "b")
    assert engine.loaded == {"a", "b"}  # 600 MB fits
    await use(s, "c")  # 1100 MB would not: a (least recent) goes
    assert engine.loaded == {"b", "c"}
    await s.close()


async def test_a_model_larger_than_the_budget_fails_clearly() -> None:
    engine = Engine(sizes={"huge": 2048 * MB})
    s = scheduler(engine, budget=1024 * MB, owner="local")
    with pytest.raises(ModelTooLargeError) as caught:
        await use(s, "huge")
    assert "huge" in caught.value.message and "max_memory_mb" in caught.value.message
    assert caught.value.status == 503 and caught.value.code == "insufficient_memory"
    assert engine.loads() == []
    await s.close()


async def test_a_load_nobody_waits_for_is_cancelled() -> None:
    engine = Engine(load_time=1.0)
    s = scheduler(engine)
    requests = [asyncio.create_task(use(s, "a")) for _ in range(2)]
    await until(lambda: ("load", "a") in engine.events)
    requests[0].cancel()
    await asyncio.sleep(0.05)
    assert ("aborted", "a") not in engine.events, "cancelled while a request still waited"
    requests[1].cancel()
    await until(lambda: ("aborted", "a") in engine.events, within=0.5)
    await until(lambda: s.status() == [])
    assert s.stats["cancelled"] == 1 and s.stats["loads"] == 0
    assert await use(s, "a") == "handle:a"  # a new request loads it afresh
    await s.close()


async def test_a_queued_load_is_dropped_when_its_request_goes() -> None:
    """b waits for room behind a busy a; its request goes away: b is never loaded."""
    engine = Engine()
    s = scheduler(engine, max_loaded=1, swap_after=0.0)
    lease = await s.acquire("a")
    b = asyncio.create_task(use(s, "b"))
    await until(lambda: any(e["state"] == "queued" for e in s.status()))
    b.cancel()
    await asyncio.sleep(0.05)
    lease.release()
    await asyncio.sleep(0.1)
    assert engine.loads() == ["a"] and engine.loaded == {"a"}
    await s.close()


async def test_a_failed_load_fails_its_requests_and_is_retried_later() -> None:
    engine = Engine()
    engine.fail.add("a")
    s = scheduler(engine, owner="local")
    results = await asyncio.gather(use(s, "a"), use(s, "a"), return_exceptions=True)
    for result in results:
        assert isinstance(result, BackendError)
        assert "could not load model 'a'" in result.message and "bad magic" in result.message
    engine.fail.clear()
    assert await use(s, "a") == "handle:a"
    assert s.stats["failed"] == 1
    await s.close()


async def test_explicit_unload_waits_for_the_running_request() -> None:
    engine = Engine()
    s = scheduler(engine)
    lease = await s.acquire("a")
    unloading = asyncio.create_task(s.unload("a"))
    await asyncio.sleep(0.1)
    assert not unloading.done() and engine.loaded == {"a"}
    lease.release()
    assert await unloading is True
    assert engine.loaded == set()
    assert await s.unload("a") is False
    await s.close()


async def test_status_shows_loading_progress_and_queued_models() -> None:
    engine = Engine(load_time=0.5)
    s = scheduler(engine, max_loaded=1)
    a = asyncio.create_task(use(s, "a"))
    b = asyncio.create_task(use(s, "b"))
    await until(lambda: any(e.get("progress", 0) > 0 for e in s.status()))
    by_name = {e["name"]: e for e in s.status()}
    assert by_name["a"]["state"] == "loading" and 0 < by_name["a"]["progress"] < 1
    assert by_name["b"]["state"] == "queued" and by_name["b"]["waiting"] == 1
    await asyncio.gather(a, b)
    await s.close()


async def test_close_fails_waiting_requests() -> None:
    engine = Engine()
    s = scheduler(engine, max_loaded=1, swap_after=60)
    lease = await s.acquire("a")
    b = asyncio.create_task(use(s, "b"))
    await asyncio.sleep(0.05)
    lease.release()
    await s.close()
    with pytest.raises(BackendError):
        await b
    assert engine.loaded == set()
