"""The health monitor: probes every backend in the background and publishes an immutable snapshot.

The router only ever reads `HealthMonitor.snapshot` (one attribute load); no request waits for a
probe. Each round probes all backends concurrently with each provider's own cheapest check
(`Provider.probe`: ``/health``, ``/api/version``, the model list...), bounded by ``timeout``. A
provider that must not be disturbed while it serves (llama-cpp-python cuts its running stream when
any other request arrives) answers its probe without asking the backend.

Where it is on, the canary (turnout/routing/canary.py) runs in a loop of its own and proves that
a backend still generates; a backend whose probe answers but whose canary failed is down. A
backend that flaps is held out for a growing cooldown (`Flaps`). Each backend's entry carries its
last canary, its flaps and how long it is held out (``GET /v1/providers`` and ``/stats`` show
them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .. import tasks
from ..config import HealthConfig
from ..errors import GatewayError
from ..providers.base import Provider
from .attempt import Backend
from .canary import Canary, CanaryResult, FlapPolicy, Flaps, probe_json

__all__ = ["BackendHealth", "HealthMonitor", "HealthSnapshot"]

log = logging.getLogger("turnout.health")


@dataclass(frozen=True, slots=True)
class BackendHealth:
    ok: bool
    latency_ms: float | None
    detail: str
    checked_at: float  # wall-clock time of the probe
    canary: CanaryResult | None = None  # the last canary, where it runs
    flaps: int = 0  # times it went down again soon after it came back
    held_until: float | None = None  # wall-clock time a flapping backend is held out until

    def to_json(self) -> dict[str, object]:
        return {
            **probe_json(self.ok, self.latency_ms, self.detail, self.checked_at),
            "canary": None if self.canary is None else self.canary.to_json(),
            "flaps": self.flaps,
            "held_until": None if self.held_until is None else round(self.held_until, 3),
        }


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    backends: Mapping[str, BackendHealth]
    round: int = 0

    def ok(self, name: str) -> bool:
        """Down only if the last probe said so: a backend never probed counts as up."""
        health = self.backends.get(name)
        return health is None or health.ok


EMPTY = HealthSnapshot(MappingProxyType({}))


class HealthMonitor:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        interval: float = 10.0,
        timeout: float = 2.0,
        on_result: Callable[[str, BackendHealth], None] | None = None,
        canary: Canary | None = None,
        canary_interval: float = 60.0,
        flaps: FlapPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = providers
        self.interval = interval
        self.timeout = timeout
        self.canary = canary
        self.canary_interval = canary_interval
        self.snapshot: HealthSnapshot = EMPTY
        self._on_result = on_result
        self._policy = flaps
        self._clock = clock
        self._probed: dict[str, BackendHealth] = {}  # the last probe of each backend
        self._canaries: dict[str, CanaryResult] = {}  # the last canary of each backend
        self._flaps: dict[str, Flaps] = {}
        self._task: asyncio.Task[None] | None = None
        self._canary_task: asyncio.Task[None] | None = None

    @classmethod
    def configured(
        cls,
        providers: Mapping[str, Provider],
        config: HealthConfig,
        backend: Callable[[Provider], Backend],
        served: Callable[[Provider], list[str]],
        on_result: Callable[[str, BackendHealth], None] | None = None,
    ) -> HealthMonitor:
        """The monitor the ``health`` section describes; ``backend`` and ``served``: the router's
        live state of a backend and the catalog's models of it, which the canary reads."""
        return cls(
            providers,
            interval=config.interval,
            timeout=config.timeout,
            on_result=on_result,
            canary=Canary(backend, served, local=config.canary, timeout=config.canary_timeout),
            canary_interval=config.canary_interval,
            flaps=FlapPolicy(config.flap_cooldown, config.flap_max_cooldown, config.flap_stable),
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="turnout-health")
        canary = self.canary
        if self._canary_task is None and canary is not None and canary.wanted(self.providers):
            self._canary_task = asyncio.create_task(self._canary_loop(), name="turnout-canary")

    async def close(self) -> None:
        await tasks.stop(self._canary_task)
        await tasks.stop(self._task)
        self._task = self._canary_task = None

    async def check(self) -> HealthSnapshot:
        """Probe every backend once and publish the result."""
        names = list(self.providers)
        results = await asyncio.gather(*(self._probe(self.providers[n]) for n in names))
        self._probed = dict(zip(names, results, strict=True))
        return self._publish()

    async def check_canaries(self) -> HealthSnapshot:
        """Ask every backend with a canary for its token once, and publish the result."""
        canary = self.canary
        if canary is None:
            return self.snapshot
        asked = [p for p in list(self.providers.values()) if canary.enabled(p) and self._up(p)]
        results = await asyncio.gather(*(canary.ask(p) for p in asked))
        for provider, result in zip(asked, results, strict=True):
            if result is not None:
                self._canaries[provider.name] = result
        return self._publish() if asked else self.snapshot

    def _up(self, provider: Provider) -> bool:
        """Whether its last probe answered (a canary of a backend that is down says nothing)."""
        probed = self._probed.get(provider.name)
        return probed is None or probed.ok

    def _publish(self) -> HealthSnapshot:
        now = self._clock()
        backends = {name: self._verdict(name, probed, now) for name, probed in self._probed.items()}
        snapshot = HealthSnapshot(MappingProxyType(backends), self.snapshot.round + 1)
        for name, health in snapshot.backends.items():
            before = self.snapshot.backends.get(name)
            if before is not None and before.ok != health.ok:
                log.info(
                    "backend %s is %s%s",
                    name,
                    "up" if health.ok else "down",
                    f": {health.detail}" if health.detail else "",
                )
            if self._on_result is not None:
                self._on_result(name, health)
        self.snapshot = snapshot
        return snapshot

    def _verdict(self, name: str, probed: BackendHealth, now: float) -> BackendHealth:
        """A backend's entry: its probe, its last canary, and its flaps."""
        ok, detail = probed.ok, probed.detail
        canary = self._canaries.get(name)
        if ok and canary is not None and not canary.ok:
            ok, detail = False, f"canary: {canary.detail}"
        if self._policy is None:
            return BackendHealth(ok, probed.latency_ms, detail, probed.checked_at, canary)
        record = self._flaps.get(name)
        if record is None:
            record = self._flaps[name] = Flaps(self._policy)
        trusted = record.observe(ok, now)
        held = None
        if ok and not trusted:
            left = record.held_until - now
            held = time.time() + left
            detail = f"held out {left:.3g}s more: down again soon after it came back"
            detail += f" ({record.flaps} times)"
        return BackendHealth(
            trusted, probed.latency_ms, detail, probed.checked_at, canary, record.flaps, held
        )

    async def _probe(self, provider: Provider) -> BackendHealth:
        try:
            health = await asyncio.wait_for(provider.probe(), self.timeout)
        except TimeoutError:
            return BackendHealth(False, None, f"no answer within {self.timeout:g}s", time.time())
        except GatewayError as exc:
            return BackendHealth(False, None, exc.detail, time.time())
        except Exception as exc:  # a probe must never end the monitor
            return BackendHealth(False, None, f"{type(exc).__name__}: {exc}", time.time())
        return BackendHealth(health.ok, health.latency_ms, health.detail, time.time())

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # pragma: no cover - _probe catches what providers raise
                log.exception("health check round failed")
            await asyncio.sleep(self.interval)

    async def _canary_loop(self) -> None:
        while True:
            try:
                await self.check_canaries()
            except Exception:  # pragma: no cover - Canary.ask catches what providers raise
                log.exception("canary round failed")
            failing = any(not c.ok for c in self._canaries.values())
            await asyncio.sleep(
                min(self.interval, self.canary_interval) if failing else self.canary_interval
            )
