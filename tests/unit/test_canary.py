"""Health that proves generation: the canary (one token from each model), and the growing
hold-out of a backend that flaps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_routing import MemoryProvider
from turnout.config import HealthConfig, ProviderConfig
from turnout.errors import BackendError
from turnout.providers.base import Health
from turnout.routing import Catalog, Router
from turnout.routing.canary import Canary, FlapPolicy, Flaps
from turnout.routing.health import HealthMonitor
from turnout.wire.types import JSON, Call


class Generating(MemoryProvider):
    """Answers its probe; its generation answers, fails or hangs as the test sets."""

    def __init__(self, name: str, endpoint: str | None = None, **config: Any) -> None:
        super().__init__(name, ["m", "n"])
        if endpoint is not None or config:
            self.config = ProviderConfig(type="openai", endpoint=endpoint, **config)
        self.generation = "ok"
        self.up = True

    async def probe(self) -> Health:
        return Health(self.up, 1.0)

    async def complete(self, call: Call) -> JSON:
        self.calls.append(call)
        if self.generation == "hang":
            await asyncio.Event().wait()
        if self.generation == "fail":
            raise BackendError(f"backend '{self.name}' failed: llama_decode returned -1")
        return {"choices": [{"message": {"role": "assistant", "content": "OK"}}]}


async def _monitor(*providers: Generating, **health: Any) -> tuple[HealthMonitor, Router]:
    catalog = Catalog({p.name: p for p in providers})
    await catalog.refresh()
    router = Router(catalog)
    config = HealthConfig(**{"canary": True, "canary_timeout": 0.05, **health})
    monitor = HealthMonitor.configured(catalog.providers, config, router.backend, catalog.served)
    router.health = monitor
    return monitor, router


def test_the_cooldown_doubles_with_each_flap_up_to_its_cap() -> None:
    policy = FlapPolicy(cooldown=10, max_cooldown=300, stable=300)
    assert [policy.hold(n) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert FlapPolicy(cooldown=0).hold(3) == 0  # 0: never held out


def test_a_flapping_backend_is_held_out_longer_each_time_and_forgiven_when_stable() -> None:
    flaps = Flaps(FlapPolicy(cooldown=10, max_cooldown=300, stable=300))
    assert flaps.observe(True, 0) and not flaps.observe(False, 1)  # the first fall: no flap
    assert flaps.observe(True, 2) and flaps.flaps == 0  # its first recovery is trusted
    assert not flaps.observe(False, 3) and flaps.flaps == 1  # down again soon: a flap
    assert not flaps.observe(True, 4)  # up, but held out for 10 s
    assert not flaps.observe(True, 13.9) and flaps.observe(True, 14)
    flaps.observe(False, 15)
    assert flaps.flaps == 2
    assert not flaps.observe(True, 16) and flaps.held_until == 36  # 20 s this time
    flaps.observe(False, 20)  # down during its hold: a flap too
    assert flaps.flaps == 3 and not flaps.observe(True, 21) and flaps.held_until == 61
    assert flaps.observe(True, 61) and flaps.flaps == 3
    assert flaps.observe(True, 361) and flaps.flaps == 0  # up 300 s after its hold: forgiven
    assert not flaps.observe(False, 400) and flaps.flaps == 0  # a fall after a long run
    assert flaps.observe(True, 401)  # is no flap, and its recovery is trusted at once


async def test_a_backend_that_answers_its_probe_but_hangs_generating_is_down() -> None:
    hung, good = Generating("hung"), Generating("good")
    hung.generation = "hang"
    monitor, router = await _monitor(hung, good)
    await monitor.check()
    assert monitor.snapshot.ok("hung")  # the cheap probe alone sees nothing wrong
    await monitor.check_canaries()
    health = monitor.snapshot.backends["hung"]
    assert not health.ok and health.detail == "canary: m: no token within 0.05s"
    assert health.to_json()["canary"]["ok"] is False  # type: ignore[index]
    assert monitor.snapshot.backends["good"].ok
    assert monitor.snapshot.backends["good"].canary is not None
    sent = good.calls[0]
    assert sent.body["max_tokens"] == 1 and not sent.stream
    assert [c.model for c in good.calls] == ["m", "n"]  # each model it serves
    assert router.backend(hung).limiter.in_flight == 0  # the slot it held is free again
    # The router tries the hung backend last.
    options = (await router.routes.plan("m"))[0].options
    assert [o.name for o in router._healthy_first(list(options))] == ["good", "hung"]
    hung.generation = "ok"
    await monitor.check_canaries()
    assert monitor.snapshot.ok("hung")


async def test_a_failing_generation_is_down_and_a_busy_backend_is_not_asked() -> None:
    failing, busy = Generating("failing"), Generating("busy", max_concurrency=1)
    failing.generation = "fail"
    monitor, router = await _monitor(failing, busy)
    await monitor.check()
    router.backend(busy).limiter.in_flight = 1  # serving a stream: a canary would cut it
    await monitor.check_canaries()
    assert "llama_decode returned -1" in monitor.snapshot.backends["failing"].detail
    assert not busy.calls and monitor.snapshot.backends["busy"].canary is None


async def test_the_canary_is_off_for_cloud_backends_unless_asked_and_per_provider() -> None:
    local = Generating("local", "http://127.0.0.1:8000")
    cloud = Generating("cloud", "https://api.example.com")
    own = Generating("own", "https://api.example.com", canary=True)
    off = Generating("off", "http://127.0.0.1:8001", canary=False)
    monitor, _ = await _monitor(local, cloud, own, off)
    canary = monitor.canary
    assert canary is not None
    assert [p.name for p in (local, cloud, own, off) if canary.enabled(p)] == ["local", "own"]
    default = Canary(lambda p: None, lambda p: [])  # type: ignore[arg-type,return-value]
    assert not default.enabled(local) and default.enabled(own)  # health.canary off: by default
    assert not default.wanted({"local": local}) and default.wanted({"own": own})
    assert not HealthConfig().canary


async def test_a_flapping_backend_is_held_out_by_the_monitor() -> None:
    flapping = Generating("f")
    catalog = Catalog({"f": flapping})
    now = [0.0]
    monitor = HealthMonitor(
        catalog.providers, flaps=FlapPolicy(cooldown=1, max_cooldown=4), clock=lambda: now[0]
    )
    holds = []
    for _ in range(5):
        for up in (False, True):
            flapping.up = up
            now[0] += 0.5
            health = (await monitor.check()).backends["f"]
            if health.held_until is not None:
                holds.append(health.flaps)
                assert not health.ok and "held out" in health.detail
    assert holds == [1, 2, 3, 4]  # each recovery after a flap is held out
    record = monitor._flaps["f"]
    assert record.held_until - now[0] == pytest.approx(4)  # 1, 2, 4, then the cap
    json = monitor.snapshot.backends["f"].to_json()
    assert json["flaps"] == 4 and json["held_until"] is not None
