"""Load as a test (issue 15, item 8): 200 concurrent clients for ``TURNOUT_LOAD_SECONDS``
(default 30) against a real ``turnout serve`` over a fast fake backend (tests/fakes/fast.py),
loopback only, half of them streaming: zero errors, every request counted once in ``/stats``,
and the latency percentiles printed (p50, p99, max)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.fast import MODEL, run_fast
from tests.support.gateway_process import serve_process

pytestmark = pytest.mark.slow

CLIENTS = 200
SECONDS = float(os.environ.get("TURNOUT_LOAD_SECONDS", "30"))
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _client(
    http: aiohttp.ClientSession, url: str, stream: bool, until: float, out: list[float]
) -> list[str]:
    errors: list[str] = []
    body = {**BODY, "stream": stream}
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            async with http.post(url + "/v1/chat/completions", json=body) as response:
                raw = await response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {raw[:200]!r}")
                elif stream and not raw.endswith(b"data: [DONE]\n\n"):
                    errors.append(f"stream not ended: {raw[-200:]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors.append(repr(exc))
        out.append(time.perf_counter() - started)
    return errors


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


async def _load(url: str) -> tuple[list[float], list[str], dict[str, int]]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        until = time.monotonic() + SECONDS
        results = await asyncio.gather(
            *(_client(http, url, i % 2 == 1, until, latencies) for i in range(CLIENTS))
        )
        async with http.get(url + "/stats") as response:
            counted = (await response.json())["requests"]
    return latencies, [e for errors in results for e in errors], counted


def test_200_clients_for_the_set_time_without_an_error(tmp_path: Path) -> None:
    with run_fast() as fast:
        config = {
            "providers": {"fast": {"type": "openai", "endpoint": fast.url, "models": [MODEL]}},
            "health": {"enabled": False},
            "discovery": {"enabled": False},
            "server": {"log_level": "warning"},
        }
        with serve_process(tmp_path, config) as served:
            latencies, errors, counted = asyncio.run(_load(served.url))
            log = served.log_text()
    ordered = sorted(latencies)
    p50, p99 = _percentile(ordered, 50), _percentile(ordered, 99)
    print(
        f"\nload: {CLIENTS} clients, {SECONDS:g} s: {len(ordered)} requests "
        f"({len(ordered) / SECONDS:.0f}/s), p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms, errors {len(errors)}"
    )
    assert not errors, errors[:10]
    assert len(ordered) >= CLIENTS
    assert counted["total"] == counted["ok"] == len(ordered), counted
    assert "Traceback" not in log, log[-4000:]
