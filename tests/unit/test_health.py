"""The health monitor: background probes, an immutable snapshot, and a router that only reads it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.unit.test_routing import MemoryProvider, RecordingRouter, body, ready
from turnout.errors import BackendUnavailableError
from turnout.gateway import Gateway
from turnout.providers.base import Health
from turnout.routing import Catalog, Router
from turnout.routing.health import HealthMonitor


class Probed(MemoryProvider):
    """Counts its probes and answers what the test sets: up, down, an error, or silence."""

    def __init__(self, name: str, answer: str = "up") -> None:
        super().__init__(name, ["m"])
        self.answer = answer
        self.probes = 0

    async def probe(self) -> Health:
        self.probes += 1
        if self.answer == "raise":
            raise BackendUnavailableError(f"backend '{self.name}' is unreachable")
        if self.answer == "crash":
            raise RuntimeError("probe bug")
        if self.answer == "hang":
            await asyncio.Event().wait()
        return Health(self.answer == "up", 2.5, "" if self.answer == "up" else "HTTP 503")


async def test_one_round_probes_everyone_and_publishes_a_snapshot() -> None:
    providers = {n: Probed(n, n) for n in ("up", "down", "raise", "crash", "hang")}
    monitor = HealthMonitor(providers, timeout=0.05)
    snapshot = await monitor.check()
    assert monitor.snapshot is snapshot and snapshot.round == 1
    health = snapshot.backends
    assert [name for name, h in health.items() if h.ok] == ["up"]
    assert health["up"].latency_ms == 2.5
    assert health["down"].detail == "HTTP 503"
    assert health["raise"].detail == "backend 'raise' is unreachable"
    assert health["crash"].detail == "RuntimeError: probe bug"
    assert health["hang"].detail == "no answer within 0.05s"
    assert snapshot.ok("up") and not snapshot.ok("down")
    assert snapshot.ok("never-probed")  # unknown counts as up until a probe says otherwise
    assert health["up"].to_json()["ok"] is True


async def test_the_snapshot_is_immutable_and_replaced_whole() -> None:
    provider = Probed("a")
    monitor = HealthMonitor({"a": provider})
    first = await monitor.check()
    with pytest.raises(TypeError):
        first.backends["a"] = first.backends["a"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.backends["a"].ok = False  # type: ignore[misc]
    provider.answer = "down"
    second = await monitor.check()
    assert first.backends["a"].ok and not second.backends["a"].ok  # the old one never changes
    assert second.round == 2


async def test_the_loop_probes_every_interval_until_closed() -> None:
    provider = Probed("a")
    seen: list[tuple[str, bool]] = []
    monitor = HealthMonitor(
        {"a": provider}, interval=0.01, on_result=lambda n, h: seen.append((n, h.ok))
    )
    monitor.start()
    await asyncio.sleep(0.1)
    await monitor.close()
    probes = provider.probes
    assert probes >= 3 and seen[:2] == [("a", True), ("a", True)]
    await asyncio.sleep(0.05)
    assert provider.probes == probes  # closed: no more probes


async def test_the_router_never_probes_and_puts_a_down_backend_last() -> None:
    a, b = Probed("a", "down"), Probed("b")
    router = RecordingRouter(await ready(a, b))
    monitor = HealthMonitor({"a": a, "b": b})
    await monitor.check()
    probes = a.probes + b.probes
    router.health = monitor
    for _ in range(20):
        _, target = await router.complete("chat", body())
        assert target.provider is b
    assert a.calls == [] and a.probes + b.probes == probes  # only the snapshot was read
    b.outcomes = [BackendUnavailableError("b down")]
    _, target = await router.complete("chat", body())
    assert target.provider is a  # down by its probe, but still better than nothing


async def test_gateway_runs_the_monitor_and_its_snapshot_reopens_circuits() -> None:
    a = Probed("a")
    gateway = Gateway({"default_embedded": False, "health": {"interval": 0.02}}, environ={})
    gateway.providers = {"a": a}
    gateway.catalog = Catalog(gateway.providers)
    gateway.router = Router(gateway.catalog)
    async with gateway:
        assert gateway.router.health is gateway.health
        backend = gateway.router.backend(a)
        for _ in range(5):
            backend.breaker.failure("down")
        assert not backend.breaker.closed and backend.breaker.retry_in() > 1
        for _ in range(100):
            await asyncio.sleep(0.01)
            if backend.breaker.retry_in() == 0:
                break
        assert backend.breaker.retry_in() == 0  # a probe reached it: a trial may go now
        assert gateway.stats()["backends"]["a"]["health"]["ok"] is True
    assert gateway.health is None
