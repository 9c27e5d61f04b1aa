"""``GET /v1/providers``: every backend with its type, endpoint, health, latency of the last
probe, models, live load (in flight, queued, circuit, requests so far) and, for a backend that
loads its models itself (the embedded engine), each model's lifecycle state.

Health comes from the background monitor's snapshot (turnout/routing/health.py); a backend it has
not probed yet (or every backend, with ``health.enabled: false``) is probed now, concurrently and
bounded by ``health.timeout``. Load and counters come from the router and telemetry
(`Gateway.stats`); clients such as ``turnout monitor`` turn successive ``requests`` counts into
a rate. ``model_states`` comes from the provider's ``status()`` (the scheduler's in-memory
table: loaded, loading with ``progress`` 0..1, queued, draining; ``waiting`` requests;
``expires_at``, when an idle model unloads); it is ``null`` for a backend that manages loading
on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway
from ..providers.base import LocalModels, Provider
from ..routing.health import BackendHealth
from .models import managed_providers
from .pipeline import Route
from .responses import json_response

__all__ = ["provider_list", "routes"]


async def _probe_now(provider: Provider, timeout: float) -> BackendHealth:
    try:
        health = await asyncio.wait_for(provider.probe(), timeout)
    except TimeoutError:
        return BackendHealth(False, None, f"no answer within {timeout:g}s", time.time())
    except Exception as exc:  # a probe failure is a down backend, never a failed listing
        detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return BackendHealth(False, None, str(detail), time.time())
    return BackendHealth(health.ok, health.latency_ms, health.detail, time.time())


async def provider_list(gateway: Gateway) -> list[dict[str, Any]]:
    """What ``GET /v1/providers`` lists, in configured order (discovered ones last)."""
    snapshot = gateway.health.snapshot.backends if gateway.health is not None else {}
    providers = list(gateway.providers.values())
    missing = [p for p in providers if p.name not in snapshot]
    fresh = await asyncio.gather(*(_probe_now(p, gateway.config.health.timeout) for p in missing))
    health = {**snapshot, **{p.name: h for p, h in zip(missing, fresh, strict=True)}}
    stats = gateway.stats().get("backends", {})
    discovered = gateway.discovery.found if gateway.discovery is not None else {}
    managed = managed_providers(gateway)
    out = []
    for provider in providers:
        probed = health[provider.name]
        live = stats.get(provider.name, {})
        concurrency = live.get("concurrency") or {}
        circuit = live.get("circuit") or {}
        found = discovered.get(provider.name)
        out.append(
            {
                "name": provider.name,
                "type": provider.config.type,
                "dialect": provider.config.dialect,
                "endpoint": getattr(provider, "base_url", None),
                "status": "up" if probed.ok else "down",
                "latency_ms": None if probed.latency_ms is None else round(probed.latency_ms, 2),
                "health": probed.to_json(),
                "models": gateway.catalog.served(provider),
                "in_flight": concurrency.get("in_flight", 0),
                "queued": concurrency.get("queued", 0),
                "circuit": circuit.get("state"),
                "requests": live.get("requests", 0),
                "failures": live.get("failures", 0),
                "discovered": found is not None,
                "runtime": found.label if found is not None else None,
                "model_states": _model_states(managed[provider.name])
                if provider.name in managed
                else None,
            }
        )
    return out


_STATE_KEYS = ("name", "state", "progress", "active", "waiting", "expires_at", "keep_alive",
               "loaded_at", "load_seconds", "engine")  # fmt: skip


def _model_states(provider: LocalModels) -> list[dict[str, Any]]:
    """The provider's models in memory or on their way, as ``/v1/local/ps`` has them (an
    in-memory read: nothing here waits on a load or on I/O)."""
    return [{k: entry.get(k) for k in _STATE_KEYS} for entry in provider.status()]


async def list_providers(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return json_response({"object": "list", "data": await provider_list(gateway)})


routes = [Route("/v1/providers", list_providers)]
