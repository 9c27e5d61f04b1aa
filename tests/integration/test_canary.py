"""Health that proves generation, over real sockets: a backend whose model list answers but whose
generation hangs is marked down by the canary within ``canary_interval + canary_timeout``, and
requests go to the other target; a backend whose generation fails every other time is held out
for longer each time it comes back.

The backends are `FaultProxy` (tests/support/faults.py) in front of the real llama-cpp-python
server: the proxy answers ``GET /v1/models`` itself (the cheap probe always succeeds), ``hang``
never answers a generation, ``flip`` fails every other one with llama.cpp's 500 and forwards the
rest, ``ok`` forwards everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import client
from tests.support.faults import FaultProxy, faulty_provider, run_fault_proxy
from tests.support.servers import run_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CANARY = {"canary_interval": 0.3, "canary_timeout": 1, "interval": 0.3}


def _provider(endpoint: str, **extra: Any) -> dict[str, Any]:
    return faulty_provider(endpoint, **{"max_concurrency": 1, **extra})


@pytest.fixture(scope="module")
def proxy(llama_server: str) -> Iterator[FaultProxy]:
    with run_fault_proxy(llama_server) as proxy:
        yield proxy


async def _providers(url: str) -> dict[str, Any]:
    listing = (await client.get(url + "/v1/providers")).json()["data"]
    return {p["name"]: p for p in listing}


async def test_a_backend_that_lists_models_but_hangs_generating_is_down(
    proxy: FaultProxy,
) -> None:
    providers = {
        # Asked, a request would wait its first-token timeout of 60 s.
        "hung": _provider(proxy.endpoint("hang"), canary=True, first_token_timeout=60),
        "good": _provider(proxy.endpoint("ok")),  # a local backend: no canary unless asked
    }
    targets = [{"provider": n, "model": "gemma-3-270m"} for n in providers]
    config = {"providers": providers, "routes": {"chat": {"targets": targets}}, "health": CANARY}
    with run_gateway(config) as url:
        started = time.monotonic()
        while (listed := await _providers(url))["hung"]["status"] == "up":
            assert time.monotonic() - started < 0.3 + 1 + 1.5  # interval + timeout, and slack
            await asyncio.sleep(0.05)
        health = listed["hung"]["health"]
        assert health["canary"]["ok"] is False
        assert health["canary"]["detail"] == "gemma-3-270m: no token within 1s"
        assert health["detail"] == "canary: gemma-3-270m: no token within 1s"
        assert listed["good"]["status"] == "up" and listed["good"]["health"]["canary"] is None
        body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        reply = await client.post(url + "/v1/chat/completions", body)
        assert reply.status == 200 and reply.headers["X-Turnout-Backend"] == "good"
        assert reply.elapsed < 30
        stats = (await client.get(url + "/stats")).json()
        assert proxy.counts["hang"] >= 1  # the canaries reached it ...
        assert stats["backends"]["hung"]["requests"] == 0  # ... and are no client's requests
        assert stats["backends"]["good"]["requests"] == 1
        assert stats["requests"]["ok"] == 1


async def test_a_flapping_backend_is_held_out_longer_each_time(proxy: FaultProxy) -> None:
    health = {**CANARY, "flap_cooldown": 0.5, "flap_max_cooldown": 8, "flap_stable": 60}
    config = {
        "providers": {"flaky": _provider(proxy.endpoint("flip"), canary=True)},
        "health": health,
    }
    holds: dict[int, float] = {}  # flaps: the hold left when first seen
    with run_gateway(config) as url:
        until = time.monotonic() + 40
        while len(holds) < 3 and time.monotonic() < until:
            entry = (await _providers(url))["flaky"]["health"]
            if entry["held_until"] is not None and entry["flaps"] not in holds:
                holds[entry["flaps"]] = entry["held_until"] - time.time()
                assert not entry["ok"] and "held out" in entry["detail"]
            await asyncio.sleep(0.05)
    first, second, third = (holds[k] for k in sorted(holds)[:3])
    assert first < second < third  # 0.5 s, 1 s, 2 s ...
    assert third <= 8
    assert proxy.counts["flip"] >= 6
