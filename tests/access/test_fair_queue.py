"""Fair queueing, measured: one key floods a backend (4 slots, 100 ms a request) with 64
requests at a time; another key's requests meanwhile wait at most twice what they wait on the
idle backend. Sent under the flooding key itself (one flow: first come, first served, which is
what every request got before), the same requests wait behind the whole queue."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.access.test_http import gateway_config, make_key
from tests.fakes.timed import Paced, run_paced
from tests.support.servers import run_gateway

pytestmark = pytest.mark.slow

CHAT = {"model": "paced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
SLOTS, FLOOD, DELAY = 4, 64, 0.1


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced(delay=DELAY) as fake:
        yield fake


async def timed(http: aiohttp.ClientSession, base: str, key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.post(
            f"{base}/v1/chat/completions", json=CHAT, headers={"X-API-Key": key}
        ) as resp:
            await resp.read()
            assert resp.status == 200, await resp.text()
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return out


async def test_a_flooding_key_cannot_starve_another(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(
        tmp_path, paced.url, provider={"max_concurrency": SLOTS, "queue_size": 256}
    )
    db = cfg["storage"]["database_url"]
    flood_key, quiet_key = await make_key(db, "flood"), await make_key(db, "quiet")
    with run_gateway(cfg) as base:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            idle = await timed(http, base, quiet_key, 8)
            stop = asyncio.Event()

            async def flood() -> None:
                while not stop.is_set():
                    async with http.post(
                        f"{base}/v1/chat/completions", json=CHAT, headers={"X-API-Key": flood_key}
                    ) as resp:
                        await resp.read()

            workers = [asyncio.create_task(flood()) for _ in range(FLOOD)]
            while paced.active < SLOTS:  # noqa: ASYNC110 - set by the fake's own thread
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # the queue fills
            fair = await timed(http, base, quiet_key, 8)
            fifo = await timed(http, base, flood_key, 4)  # one flow: arrival order
            stop.set()
            await asyncio.gather(*workers)
    idle_s, fair_s, fifo_s = (statistics.median(x) for x in (idle, fair, fifo))
    print(  # the figures for the note
        f"\nquiet key median latency: idle {idle_s * 1000:.0f} ms, beside a 64-request flood "
        f"{fair_s * 1000:.0f} ms ({fair_s / idle_s:.2f}x); same key as the flood (FIFO) "
        f"{fifo_s * 1000:.0f} ms ({fifo_s / idle_s:.2f}x); backend peak {paced.peak} of {SLOTS}"
    )
    assert paced.peak <= SLOTS
    assert fair_s <= 2 * idle_s
    assert fifo_s > 5 * idle_s  # what first come, first served gives: the whole queue ahead
