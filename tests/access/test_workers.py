"""``turnout serve --workers 2``, as real processes: one port, requests spread over both workers,
``/stats`` and ``/metrics`` totals from any single answer, a rate limit shared through a real
Redis, streams in flight finished on SIGTERM with every ledger row written, and the
configurations several workers refuse (saying why and what to do)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.access.instances import Instance, run_instance, write_config
from tests.access.test_http import gateway_config, make_key
from tests.fakes.timed import Paced, run_paced
from tests.support.gateway_process import read_sse
from turnout.store import open_store

pytestmark = pytest.mark.slow

CHAT = {"model": "paced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def workers(config: Path, n: int = 2, *extra: str) -> Iterator[Instance]:
    """``turnout serve --workers n``, once every worker serves (the parent logs it)."""
    with run_instance(config, "--workers", str(n), *extra) as served:
        deadline = time.monotonic() + 60
        while f"{n} workers serving" not in served.output():
            assert served.proc.poll() is None, served.output()
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        yield served


def spread() -> aiohttp.ClientSession:
    """A client that opens a connection per request, so that connections spread over the
    workers' sockets (a kept-alive connection stays with the worker that took it)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16))


async def post(http: aiohttp.ClientSession, url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as r:
        await r.read()
        return r.status


def counter(text: str, line: str) -> float:
    """The value of the sample ``line`` names in a Prometheus text exposition."""
    for each in text.splitlines():
        if each.startswith(line + " "):
            return float(each.rsplit(" ", 1)[1])
    raise AssertionError(f"{line} not in:\n{text}")


async def ledger(url: str) -> list[dict[str, Any]]:
    store = open_store(url)
    await store.open()
    try:
        return await store.usage_rows()
    finally:
        await store.close()


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


async def test_two_workers_serve_one_port_and_any_of_them_answers_the_totals(
    tmp_path: Path, paced: Paced
) -> None:
    cfg = gateway_config(tmp_path, paced.url, embedded=False)
    path = write_config(tmp_path / "turnout.yaml", cfg)
    with workers(path) as served:
        async with spread() as http:
            statuses = await asyncio.gather(*(post(http, served.url) for _ in range(200)))
            assert statuses == [200] * 200
            await asyncio.sleep(1.5)  # every worker's drain (0.5 s) has run since
            answered: set[int] = set()
            for _ in range(8):  # each on a new connection: both workers answer some
                async with http.get(f"{served.url}/stats") as r:
                    stats = await r.json()
                answered.add(stats["worker"])
                assert stats["requests"]["total"] == 200 and stats["requests"]["ok"] == 200
                assert stats["backends"]["fake"]["requests"] == 200
                per_worker = {w["pid"]: w["requests"] for w in stats["workers"]}
                assert len(per_worker) == 2 and sum(per_worker.values()) == 200
                assert all(n > 0 for n in per_worker.values()), per_worker  # both served
                async with http.get(f"{served.url}/metrics") as r:
                    text = await r.text()
                assert counter(text, 'turnout_requests_total{outcome="ok"}') == 200
                success = (
                    'turnout_backend_requests_total{backend="fake",model="paced",outcome="success"}'
                )
                assert counter(text, success) == 200
                latency = 'turnout_backend_latency_seconds_count{backend="fake",model="paced"}'
                assert counter(text, latency) == 200
            assert answered <= set(per_worker)
        assert served.terminate() == 0, served.output()
    rows = await ledger(cfg["storage"]["database_url"])
    assert len(rows) == 200 and len({r["request_id"] for r in rows}) == 200


async def test_a_rate_limit_holds_across_workers_through_redis(
    tmp_path: Path, paced: Paced, redis_url: str
) -> None:
    cfg = gateway_config(tmp_path, paced.url, embedded=False)
    cfg["storage"]["redis_url"] = redis_url
    ten = await make_key(cfg["storage"]["database_url"], "ten", rpm=10)
    path = write_config(tmp_path / "turnout.yaml", cfg)
    with workers(path) as served:
        async with spread() as http:
            statuses = await asyncio.gather(*(post(http, served.url, ten) for _ in range(40)))
            assert statuses.count(200) == 10 and statuses.count(429) == 30
            await asyncio.sleep(1.5)
            async with http.get(f"{served.url}/stats", headers={"X-API-Key": ten}) as r:
                stats = await r.json()
        per_worker = {w["pid"]: w["requests"] for w in stats["workers"]}
        assert sum(per_worker.values()) == 40 and all(per_worker.values()), per_worker
        assert served.terminate() == 0, served.output()
    rows = await ledger(cfg["storage"]["database_url"])
    assert sorted(r["status"] for r in rows) == [200] * 10 + [429] * 30


async def test_sigterm_lets_every_workers_streams_finish_and_exits_0(tmp_path: Path) -> None:
    with run_paced(chunk_delay=0.3, chunks=6) as slow:  # each stream: about 2 s
        cfg = gateway_config(tmp_path, slow.url, embedded=False)
        path = write_config(tmp_path / "turnout.yaml", cfg)
        with workers(path) as served:
            async with spread() as http:

                async def stream(started: asyncio.Queue[None]) -> tuple[int, bool]:
                    body = {**CHAT, "stream": True}
                    async with http.post(f"{served.url}/v1/chat/completions", json=body) as r:
                        first = await r.content.readline()
                        started.put_nowait(None)
                        events, done = await read_sse(r)
                        return len(events) + bool(first.strip()), done

                started: asyncio.Queue[None] = asyncio.Queue()
                tasks = [asyncio.create_task(stream(started)) for _ in range(20)]
                for _ in tasks:
                    await asyncio.wait_for(started.get(), 30)
                async with http.get(f"{served.url}/stats") as r:
                    in_flight = (await r.json())["backends"]["fake"]["concurrency"]["in_flight"]
                served.proc.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*tasks)
            assert served.proc.wait(60) == 0, served.output()
        assert all(done for _, done in results), results
        assert in_flight > 0  # as of the workers' last drain: some were in flight
        assert "every worker has stopped (exit statuses [0, 0])" in served.output()
    rows = await ledger(cfg["storage"]["database_url"])
    streamed = [r for r in rows if r["streamed"]]
    assert len(streamed) == 20 and {r["status"] for r in streamed} == {200}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_dead_worker_is_replaced_and_workers_stop_when_the_parent_is_killed(
    tmp_path: Path, paced: Paced
) -> None:
    path = write_config(
        tmp_path / "turnout.yaml", gateway_config(tmp_path, paced.url, embedded=False)
    )
    with workers(path) as served:
        found = re.search(r"2 workers serving \(pids (\d+), (\d+)\)", served.output())
        assert found is not None
        first, second = int(found[1]), int(found[2])
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (
            "starting another" not in served.output()
            or served.output().count("Application startup complete") < 3
        ):
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        after = served.output().split("starting another")[1]
        replacement = int(re.findall(r"Started server process \[(\d+)\]", after)[0])
        served.proc.kill()  # the parent only: its workers must not outlive it
        served.proc.wait(10)
        deadline = time.monotonic() + 10
        while (alive(second) or alive(replacement)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(second) and not alive(replacement), served.output()


def serve_refused(
    tmp_path: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path / "turnout.yaml", config)
    cmd = [sys.executable, "-m", "turnout", "serve", "-c", str(path), "--port", "1", *args]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=60)


def test_an_embedded_model_is_refused_naming_the_setting(tmp_path: Path) -> None:
    done = serve_refused(tmp_path, {"health": {"enabled": False}}, "--workers", "2")
    assert done.returncode == 2, done.stderr
    assert "embedded: false" in done.stderr and "each worker would load its own copy" in done.stderr


async def test_limited_keys_without_redis_are_refused(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, "http://127.0.0.1:9", embedded=False)
    await make_key(cfg["storage"]["database_url"], "ten", rpm=10)
    done = serve_refused(tmp_path, cfg, "--workers", "2")
    assert done.returncode == 2, done.stderr
    assert "storage.redis_url" in done.stderr and "'ten'" in done.stderr


def test_invalid_workers_fail_at_start_naming_the_key(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, "http://127.0.0.1:9", embedded=False)
    done = serve_refused(tmp_path, cfg, env={"TURNOUT_SERVER__WORKERS": "0"})
    assert done.returncode == 2 and "server.workers" in done.stderr, done.stderr
    done = serve_refused(tmp_path, cfg, "--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr, done.stderr
