"""Two gateway processes on loopback sharing one PostgreSQL and one Redis (both real): limits,
budgets and revocations hold across both, and the ledger has every request once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.access.instances import run_instance, write_config
from tests.access.test_http import gateway_config, make_key
from tests.fakes.timed import Paced, run_paced
from turnout.store import open_store
from turnout.store.keyring import announce, revoke_key

pytestmark = pytest.mark.slow

CHAT = {"model": "paced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


async def test_two_instances_share_limits_budgets_and_revocations(
    tmp_path: Path, paced: Paced, pg_url: str, redis_url: str
) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    cfg["storage"] = {"database_url": pg_url, "redis_url": redis_url}
    ten = await make_key(pg_url, "ten", rpm=10)
    spender = await make_key(pg_url, "spender", budget=0.03)  # 0.017 per request
    doomed = await make_key(pg_url, "doomed")
    path = write_config(tmp_path / "turnout.yaml", cfg)
    with run_instance(path) as one, run_instance(path) as two:
        bases = [one.url, two.url]
        async with aiohttp.ClientSession() as http:

            async def post(base: str, key: str) -> tuple[int, dict[str, str]]:
                headers = {"Authorization": f"Bearer {key}"}
                async with http.post(
                    f"{base}/v1/chat/completions", json=CHAT, headers=headers
                ) as r:
                    await r.read()
                    return r.status, {k.lower(): v for k, v in r.headers.items()}

            results = await asyncio.gather(*(post(bases[i % 2], ten) for i in range(30)))
            statuses = [s for s, _ in results]
            assert statuses.count(200) == 10 and statuses.count(429) == 20
            for status, headers in results:
                assert headers["x-ratelimit-limit-requests"] == "10"
                if status == 429:
                    assert 1 <= int(headers["retry-after"]) <= 60
                else:
                    assert headers["x-turnout-backend"] == "fake"
            spent = []
            for i in range(4):
                spent.append((await post(bases[i % 2], spender))[0])
                await asyncio.sleep(0.8)  # settling follows telemetry's drain
            assert spent == [200, 200, 429, 429]
            assert [(await post(b, doomed))[0] for b in bases] == [200, 200]
            store = open_store(pg_url)
            await store.open()
            await revoke_key(store, "doomed")
            await announce(redis_url)
            revoked_at = time.monotonic()
            await store.close()
            seen: dict[str, float] = {}
            while len(seen) < 2 and time.monotonic() - revoked_at < 1.0:
                for base in bases:
                    if base not in seen and (await post(base, doomed))[0] == 401:
                        seen[base] = time.monotonic() - revoked_at
                await asyncio.sleep(0.02)
            assert len(seen) == 2, f"revocation not seen by both instances within 1 s: {seen}"
        # uvicorn shuts down cleanly, then re-raises the signal: exit by SIGTERM, not a crash
        assert one.terminate() in (0, -15) and two.terminate() in (0, -15)
        assert "Application shutdown complete" in one.output() + two.output()
    store = open_store(pg_url)
    await store.open()
    rows = await store.usage_rows()
    await store.close()
    # A 401 is refused before any key is known and has no row; every other request has one.
    assert len({r["request_id"] for r in rows}) == len(rows)
    by_key = {name: sum(1 for r in rows if r["key_name"] == name) for name in ("ten", "spender")}
    assert by_key == {"ten": 30, "spender": 4}
    assert sum(1 for r in rows if r["key_name"] == "ten" and r["status"] == 429) == 20
