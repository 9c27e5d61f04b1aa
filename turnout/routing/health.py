"""The health monitor: probes every backend in the background and publishes an immutable snapshot.

The router only ever reads `HealthMonitor.snapshot` (one attribute load); no request waits for a
probe. Each round probes all backends concurrently with each provider's own cheapest check
(`Provider.probe`: ``/health``, ``/api/version``, the model list...), bounded by ``timeout``. A
provider that must not be disturbed while it serves (llama-cpp-python cuts its running stream when
any other request arrives) answers its probe without asking the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .. import tasks
from ..errors import GatewayError
from ..providers.base import Provider

__all__ = ["BackendHealth", "HealthMonitor", "HealthSnapshot"]

log = logging.getLogger("turnout.health")


@dataclass(frozen=True, slots=True)
class BackendHealth:
    ok: bool
    latency_ms: float | None
    detail: str
    checked_at: float  # wall-clock time of the probe

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "detail": self.detail or None,
            "checked_at": round(self.checked_at, 3),
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
    ) -> None:
        self.providers = providers
        self.interval = interval
        self.timeout = timeout
        self.snapshot: HealthSnapshot = EMPTY
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="turnout-health")

    async def close(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def check(self) -> HealthSnapshot:
        """Probe every backend once and publish the result."""
        names = list(self.providers)
        results = await asyncio.gather(*(self._probe(self.providers[n]) for n in names))
        snapshot = HealthSnapshot(
            MappingProxyType(dict(zip(names, results, strict=True))), self.snapshot.round + 1
        )
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
