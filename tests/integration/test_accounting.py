"""Exact accounting over HTTP (issue 15, item 4, acceptance): 256 mixed requests against a real
``turnout serve`` (valid, invalid, too large, refused by the guard, failed in the backend, left
by their client mid-stream and mid-body, across the OpenAI, Anthropic, Ollama and Responses
fronts, then some cut by the shutdown) give exactly 256 statistics records, each outcome as
many times as it happened; and the clients that left are one log line each, no traceback.

The backend is the paced fake (tests/fakes/paced.py); loopback only."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.paced import Paced, run_paced
from tests.support.gateway_process import Served, closing_statistics, serve_process

LIMIT = 8192  # server.max_body_bytes
BEFORE = 240  # requests before the shutdown
CUT = 16  # streams the shutdown cuts


@pytest.fixture(scope="module")
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


def _config(backend: str) -> dict[str, Any]:
    return {
        "providers": {
            "paced": {"type": "openai", "endpoint": backend, "models": ["paced"]},
            # its own backend for the requests that fail, so that their breaker is not paced's
            "broken": {
                "type": "openai",
                "endpoint": backend,
                "models": ["broken"],
                "max_retries": 0,
            },
        },
        "health": {"enabled": False},
        "discovery": {"enabled": False},
        "server": {"max_body_bytes": LIMIT, "shutdown_grace_seconds": 1},
    }


def _chat(text: str, model: str = "paced", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


Case = Callable[[aiohttp.ClientSession, str], Awaitable[int]]


def _post(path: str, body: Any, **kwargs: Any) -> Case:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}

    async def case(http: aiohttp.ClientSession, url: str) -> int:
        async with http.post(url + path, data=data, headers=headers, **kwargs) as response:
            await response.read()
            return response.status

    return case


def _chunked(size: int) -> Case:
    """A body without a declared length, larger than the limit."""

    async def parts() -> Any:
        for _ in range(size // 1024):
            yield b" " * 1024

    async def case(http: aiohttp.ClientSession, url: str) -> int:
        headers = {"Content-Type": "application/json"}
        try:
            async with http.post(url + "/v1/chat/completions", data=parts(), headers=headers) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:  # refused while still sending: the server closed
            return 413

    return case


async def _left_mid_stream(http: aiohttp.ClientSession, url: str) -> int:
    body = _chat("chunks=50 every=0.02", stream=True)
    async with http.post(url + "/v1/chat/completions", json=body) as response:
        await response.content.readline()  # the first event: it is flowing
        response.close()  # and the client is gone
        return 499


async def _left_mid_body(http: aiohttp.ClientSession, url: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n" + b'{"model": "pa'
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    return 0


ANTHROPIC = {"model": "paced", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
#: name -> (the request, the status it gets, the outcome it is recorded with)
CASES: dict[str, tuple[Case, int, str]] = {
    "openai": (_post("/v1/chat/completions", _chat("chunks=2")), 200, "ok"),
    "openai stream": (_post("/v1/chat/completions", _chat("chunks=3", stream=True)), 200, "ok"),
    "anthropic": (_post("/v1/messages", ANTHROPIC), 200, "ok"),
    "anthropic stream": (_post("/v1/messages", {**ANTHROPIC, "stream": True}), 200, "ok"),
    "ollama chat": (_post("/api/chat", _chat("chunks=2", stream=False)), 200, "ok"),
    "ollama generate": (_post("/api/generate", {"model": "paced", "prompt": "chunks=2"}), 200,
                        "ok"),
    "responses": (_post("/v1/responses", {"model": "paced", "input": "chunks=2"}), 200, "ok"),
    "invalid": (_post("/v1/chat/completions", {"model": "paced", "messages": 3}), 400,
                "refused"),
    "invalid anthropic": (_post("/v1/messages", {"model": "paced"}), 400, "refused"),
    "invalid ollama": (_post("/api/chat", {"messages": []}), 400, "refused"),
    "invalid responses": (_post("/v1/responses", {"model": "paced", "input": 7}), 400,
                          "refused"),
    "not json": (_post("/v1/chat/completions", b"{nope"), 400, "refused"),
    "too large": (_post("/v1/chat/completions", _chat("x" * LIMIT)), 413, "refused"),
    "too large, chunked": (_chunked(4 * LIMIT), 413, "refused"),
    "foreign host": (_post("/v1/chat/completions", _chat("hi"),
                           headers={"Host": "evil.example"}), 403, "refused"),
    "form body": (_post("/api/chat", _chat("hi"), headers={"Content-Type": "text/plain"}), 415,
                  "refused"),
    "unknown model": (_post("/v1/chat/completions", _chat("hi", model="nope")), 404, "refused"),
    "backend fails": (_post("/v1/chat/completions", _chat("fail", model="broken")), 0, "error"),
    "left mid-stream": (_left_mid_stream, 499, "cancelled"),
    "left mid-body": (_left_mid_body, 0, "cancelled"),
}  # fmt: skip


async def _until(condition: Callable[[], bool], limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return
        await asyncio.sleep(0.02)


async def _stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/stats") as response:
        requests: dict[str, Any] = (await response.json())["requests"]
        return requests


async def _scenario(served: Served, paced: Paced) -> tuple[Counter[str], dict[str, Any]]:
    names = list(CASES)
    plan = [names[i % len(names)] for i in range(BEFORE)]
    expected = Counter(CASES[name][2] for name in plan)
    gate = asyncio.Semaphore(32)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(name: str) -> tuple[str, int]:
            case = CASES[name][0]
            async with gate:
                return name, await case(http, served.url)

        results = await asyncio.gather(*(one(name) for name in plan))
        for name, status in results:
            want = CASES[name][1]
            if want:
                assert status == want, (name, status)
            elif name == "backend fails":
                assert status >= 500, status
        # The requests whose clients left are recorded as soon as the server saw them go.
        end = time.monotonic() + 10
        counted = await _stats(http, served.url)
        while counted["total"] < BEFORE and time.monotonic() < end:
            await asyncio.sleep(0.1)
            counted = await _stats(http, served.url)
        await asyncio.sleep(0.3)  # nothing more comes
        counted = await _stats(http, served.url)

        # Then streams the shutdown cuts (a grace of 1 s; each would take 10 s).
        before = paced.requests
        body = _chat("chunks=100 every=0.1", stream=True)

        async def cut_stream() -> bytes:
            async with http.post(served.url + "/v1/chat/completions", json=body) as response:
                return await response.read()

        streams = [asyncio.create_task(cut_stream()) for _ in range(CUT)]
        await _until(lambda: paced.requests - before >= CUT, 10)
        await asyncio.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        for text in await asyncio.gather(*streams):
            assert b'"code":"shutting_down"' in text and b"[DONE]" not in text
    return expected, counted


def test_256_mixed_requests_give_256_records(paced: Paced, tmp_path: Path) -> None:
    with serve_process(tmp_path, _config(paced.url)) as served:
        expected, counted = asyncio.run(_scenario(served, paced))
        served.proc.wait(15)
        assert served.proc.returncode == 0
    log = served.log_text()
    assert counted["total"] == BEFORE, counted
    for outcome in ("ok", "refused", "error", "internal", "cancelled", "cut"):
        assert counted[outcome] == expected.get(outcome, 0), (outcome, counted)
    refused = counted["reasons"]["refused"]
    assert refused["request_too_large"] == 2 * BEFORE // len(CASES), refused
    assert refused["host_not_allowed"] == BEFORE // len(CASES), refused
    assert refused["unsupported_media_type"] == BEFORE // len(CASES), refused
    assert counted["reasons"]["cancelled"] == {"client_gone": 2 * BEFORE // len(CASES)}
    assert closing_statistics(log) == {"total": BEFORE + CUT, **expected, "cut": CUT}
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert log.count("left before sending all of its request") == BEFORE // len(CASES), log
