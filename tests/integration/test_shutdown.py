"""Graceful shutdown of a real ``turnout serve`` (issue 15, item 1): on SIGTERM the streams in
flight finish within ``server.shutdown_grace_seconds``; those that cannot end with an error event
(OpenAI's dialect here), none hangs, the process exits 0 within grace + 2 s, and the statistics
flushed at the end count every request once. The backend is a fast fake that streams slowly
(tests/fakes/paced.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.paced import Paced, run_paced
from tests.support.gateway_process import (
    Served,
    closing_statistics,
    paced_config,
    read_sse,
    serve_process,
)

STREAMS = 20


@pytest.fixture(scope="module")
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


async def _stream(http: aiohttp.ClientSession, url: str, prompt: str) -> tuple[list[Any], bool]:
    body = {"model": "paced", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    async with http.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return await read_sse(response)


async def _sigterm_during(served: Served, paced: Paced, prompt: str) -> tuple[list[Any], float]:
    """Start the streams, SIGTERM the gateway once all are flowing; every stream's outcome and
    how long after the signal the process exited."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        before = paced.requests
        streams = [asyncio.create_task(_stream(http, served.url, prompt)) for _ in range(STREAMS)]
        await _until(lambda: paced.requests - before >= STREAMS, 10)
        await asyncio.sleep(0.5)
        served.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = await asyncio.gather(*streams)
        await _until(lambda: served.proc.poll() is not None, 60)
        return results, time.monotonic() - signalled


async def _until(condition: Callable[[], bool], limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return
        await asyncio.sleep(0.02)


def _counted(served: Served) -> dict[str, int]:
    return closing_statistics(served.log_text())


def test_streams_in_flight_finish_within_the_grace(paced: Paced, tmp_path: Path) -> None:
    with serve_process(tmp_path, paced_config(paced.url, shutdown_grace_seconds=30)) as served:
        results, exited_after = asyncio.run(
            _sigterm_during(served, paced, "chunks=40 every=0.1")  # 4 s each
        )
        assert served.proc.returncode == 0, served.log_text()
    for events, done in results:
        assert done, events[-1:]
        assert sum(1 for e in events if e["choices"] and e["choices"][0]["delta"]) == 40
    assert exited_after < 4 + 3, exited_after
    assert _counted(served) == {"total": STREAMS, "ok": STREAMS}
    assert "Traceback" not in served.log_text()


def test_streams_past_the_grace_end_with_an_error_event(paced: Paced, tmp_path: Path) -> None:
    grace = 1.0
    config = paced_config(paced.url, shutdown_grace_seconds=grace)
    with serve_process(tmp_path, config) as served:
        results, exited_after = asyncio.run(
            _sigterm_during(served, paced, "chunks=100 every=0.1")  # 10 s each
        )
        assert served.proc.returncode == 0, served.log_text()
    for events, done in results:
        assert not done
        error = events[-1]["error"]
        assert error["code"] == "shutting_down" and error["type"] == "service_unavailable"
        assert "shutdown_grace_seconds" in error["message"]
        assert 5 <= len(events) < 100  # it was flowing, and was cut
    assert exited_after < grace + 2, exited_after
    assert _counted(served) == {"total": STREAMS, "cut": STREAMS}  # each with its reason
    log = served.log_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert f"ended {STREAMS} request(s) still in flight" in log


def test_health_says_draining_and_new_requests_are_refused(paced: Paced, tmp_path: Path) -> None:
    async def scenario(served: Served) -> tuple[int, Any, int, Any]:
        async with aiohttp.ClientSession() as http:  # one kept-alive connection, opened before
            stream = asyncio.create_task(_stream(http, served.url, "chunks=30 every=0.1"))
            await asyncio.sleep(0.8)
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as other:
                async with other.get(f"{served.url}/health") as warm:
                    assert warm.status == 200
                served.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                refused_health = await other.get(f"{served.url}/health")
                health = refused_health.status, await refused_health.json()
                body = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
                late = await http.post(f"{served.url}/v1/chat/completions", json=body)
                refused = late.status, await late.json()
            await stream
            return (*health, *refused)

    config = paced_config(paced.url, shutdown_grace_seconds=10)
    with serve_process(tmp_path, config) as served:
        status, health, late_status, late = asyncio.run(scenario(served))
        served.proc.wait(10)
    assert served.proc.returncode == 0
    assert (status, health["status"]) == (503, "draining")
    assert late_status == 503 and late["error"]["code"] == "shutting_down"


def test_a_second_signal_stops_at_once(paced: Paced, tmp_path: Path) -> None:
    async def scenario(served: Served) -> tuple[list[tuple[list[Any], bool]], float]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            streams = [
                asyncio.create_task(_stream(http, served.url, "chunks=100 every=0.1"))
                for _ in range(3)
            ]
            await asyncio.sleep(1.0)
            served.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            results = await asyncio.gather(*streams, return_exceptions=True)
            served.proc.wait(10)
            return [r for r in results if not isinstance(r, BaseException)], (
                time.monotonic() - signalled
            )

    config = paced_config(paced.url, shutdown_grace_seconds=30)
    with serve_process(tmp_path, config) as served:
        finished, after = asyncio.run(scenario(served))
    assert served.proc.returncode == 0, served.log_text()
    assert after < 3, after  # not the 30 s grace, nor the streams' 10 s
    assert all(not done for _, done in finished)
