"""Ledger exactness: 1,000 requests through a gateway process (a third streamed, some streams cut
by the client, some refused by a limit, the last 20 streams in flight when SIGTERM arrives) give
exactly one ledger row each, in SQLite and in PostgreSQL; with PostgreSQL stopped for 20 s in the
middle of the run and started again, still none lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.access.instances import run_instance, write_config
from tests.access.test_http import gateway_config, make_key
from tests.fakes.timed import Paced, run_paced
from tests.support.databases import Postgres
from turnout.store import open_store

pytestmark = pytest.mark.slow

TOTAL = 1000
IN_FLIGHT_AT_SIGTERM = 20


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced(chunk_delay=0.02, chunks=10) as fake:
        yield fake


class Run:
    def __init__(self, base: str, keys: dict[str, str]) -> None:
        self.base, self.keys = base, keys
        self.seen: Counter[tuple[str, int]] = Counter()  # (what, status)
        self.sent = 0

    async def one(self, http: aiohttp.ClientSession, i: int, last: bool = False) -> None:
        key = "limited" if i % 10 == 0 and not last else "main"
        stream = i % 3 == 0 or last
        cut = stream and i % 15 == 0 and not last
        body: dict[str, Any] = {
            "model": "paced",
            "messages": [{"role": "user", "content": f"request {i}"}],
            "max_tokens": 10,
            "stream": stream,
        }
        headers = {"Authorization": f"Bearer {self.keys[key]}", "X-Turnout-User": f"u{i % 7}"}
        self.sent += 1
        async with http.post(f"{self.base}/v1/chat/completions", json=body, headers=headers) as r:
            if cut and r.status == 200:
                await r.content.readline()  # the first event, then the client goes away
                r.close()
                self.seen[("cut", r.status)] += 1
                return
            await r.read()
            self.seen[("stream" if stream else "plain", r.status)] += 1

    async def batch(
        self, http: aiohttp.ClientSession, start: int, end: int, width: int = 16
    ) -> None:
        queue = iter(range(start, end))

        async def worker() -> None:
            for i in queue:
                await self.one(http, i)

        await asyncio.gather(*(worker() for _ in range(width)))


async def exercise(tmp_path: Path, paced: Paced, url: str, postgres: Postgres | None) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    cfg["storage"]["database_url"] = url
    keys = {
        "main": await make_key(url, "main"),
        "limited": await make_key(url, "limited", rpm=30),
    }
    path = write_config(tmp_path / "turnout.yaml", cfg)
    with run_instance(path) as gateway:
        run = Run(gateway.url, keys)
        body_end = TOTAL - IN_FLIGHT_AT_SIGTERM
        async with aiohttp.ClientSession() as http:
            await run.batch(http, 0, 300)
            if postgres is not None:
                postgres.stop()
                down = time.monotonic()
                try:
                    await run.batch(http, 300, 600, width=4)
                    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - down)))
                finally:
                    postgres.start()
            else:
                await run.batch(http, 300, 600)
            await run.batch(http, 600, body_end)
            # The last 20: long streams, in flight when the gateway is told to stop.
            paced.chunk_delay = 0.1
            tasks = [
                asyncio.create_task(run.one(http, i, last=True)) for i in range(body_end, TOTAL)
            ]
            deadline = time.monotonic() + 30
            while paced.active < IN_FLIGHT_AT_SIGTERM:
                assert time.monotonic() < deadline, f"only {paced.active} streams in flight"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(gateway.terminate)
            await asyncio.gather(*tasks, return_exceptions=True)
        if postgres is not None:  # the outage really reached the ledger, and it recovered
            log = gateway.output()
            assert "spooling to" in log and "database back" in log, log[-3000:]
    assert run.sent == TOTAL
    store = open_store(url)
    await store.open()
    rows = await store.usage_rows()
    await store.close()
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)) == TOTAL, (len(ids), len(set(ids)), run.seen)
    statuses = Counter(r["status"] for r in rows)
    observed_429 = sum(n for (what, status), n in run.seen.items() if status == 429)
    assert statuses[429] == observed_429 > 0
    cut = sum(n for (what, _), n in run.seen.items() if what == "cut")
    assert statuses[499] == cut > 0
    assert statuses[200] == TOTAL - observed_429 - cut
    streamed = sum(1 for r in rows if r["streamed"])
    assert streamed == len([i for i in range(TOTAL) if i % 3 == 0 or i >= TOTAL - 20])
    assert all(r["key_name"] in ("main", "limited") and r["end_user"] for r in rows)
    assert {r["front"] for r in rows} == {"openai"}


async def test_sqlite_ledger_has_one_row_per_request(tmp_path: Path, paced: Paced) -> None:
    await exercise(tmp_path, paced, f"sqlite:///{tmp_path / 'ledger.db'}", None)


async def test_postgres_ledger_survives_an_outage(
    tmp_path: Path, paced: Paced, postgres: Postgres, pg_url: str
) -> None:
    await exercise(tmp_path, paced, pg_url, postgres)
