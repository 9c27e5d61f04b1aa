"""The streaming hot path over real HTTP: headers, chunks forwarded as produced, keep-alive
comments while the first token is slow, errors after the stream committed, and a client that
goes away stopping the generation it asked for.

Most tests hold the `Gateway` they serve, to watch its embedded engine's pool of instances: an
instance is out of the pool exactly while a generation runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support import client
from tests.support.checks import check_chat_stream, check_error
from tests.support.servers import run_gateway, run_silent_server
from turnout import Gateway

pytestmark = pytest.mark.slow

MODEL = "embedded/gemma-3-270m"
HI = [{"role": "user", "content": "Tell me a story."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens
KEEPALIVE = 0.2


@pytest.fixture(scope="module")
def held() -> Iterator[tuple[str, Gateway]]:
    """An embedded engine with one instance, keep-alives every 0.2 s, and a backend that never
    answers (``silent/hang``, timeout 0.6 s): the URL and the gateway behind it."""
    with run_silent_server() as silent:
        gateway = Gateway(
            {
                "server": {"sse_keepalive_seconds": KEEPALIVE},
                "providers": {
                    "embedded": {"type": "embedded"},
                    "silent": {
                        "type": "openai",
                        "endpoint": silent,
                        "models": ["hang"],
                        "timeout": 0.6,
                        "max_retries": 0,
                    },
                },
            },
            environ={},
        )
        with run_gateway(gateway) as url:
            yield url, gateway


def _pool(gateway: Gateway) -> asyncio.Queue[Any]:
    provider: Any = gateway.providers["embedded"]
    pool: asyncio.Queue[Any] = provider.engines["gemma-3-270m"].pool
    return pool


async def _until(condition: Any, within: float, what: str) -> float:
    """Poll ``condition`` until true; fail after ``within`` seconds. Returns the time it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, f"not within {within:.2f}s: {what}"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def _chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": HI,
        "max_tokens": max_tokens,
        "logit_bias": NO_EOS,
        "stream": True,
        **extra,
    }


def _content_times(reply: client.Stream) -> list[float]:
    times = []
    for at, line in reply.lines:
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                times.append(at)
    return times


def assert_sse_headers(headers: Any) -> None:
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"


def assert_not_buffered(reply: client.Stream, tokens: int) -> None:
    """Chunks arrive one by one as tokens are generated (milliseconds apart), not in a burst."""
    times = _content_times(reply)
    assert len(times) >= tokens - 2, f"only {len(times)} content chunks"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    spaced = [g for g in gaps if g > 0.002]
    assert len(spaced) >= 0.6 * len(gaps), f"chunks arrived in bursts: gaps {gaps}"


async def test_stream_headers_and_unbuffered_chunks(embedded_gateway: str) -> None:
    body = _chat(16, stream_options={"include_usage": True}, model="gemma-3-270m")
    reply = await client.stream(embedded_gateway + "/v1/chat/completions", body)
    assert reply.status == 200
    assert_sse_headers(reply.headers)
    assert reply.headers["X-Turnout-Backend"] == "embedded"
    assert not reply.comments
    assert reply.done
    check_chat_stream(reply.events, max_tokens=16, include_usage=True)
    assert_not_buffered(reply, 16)


async def test_usage_is_read_from_the_final_chunk(embedded_gateway: str) -> None:
    """The engine reports usage in its last chunk: the client gets it once, last, when asked."""
    url = embedded_gateway + "/v1/chat/completions"
    asked = await client.stream(url, _chat(6, stream_options={"include_usage": True}))
    usage = check_chat_stream(asked.events, max_tokens=6, include_usage=True)
    assert usage is not None
    assert usage["completion_tokens"] == 6
    quiet = await client.stream(url, _chat(6))
    check_chat_stream(quiet.events, max_tokens=6, include_usage=False)
    unasked = await client.stream(url, _chat(6, stream_options={"include_usage": False}))
    check_chat_stream(unasked.events, max_tokens=6, include_usage=False)


async def test_keepalive_comments_while_the_first_token_waits(held: tuple[str, Gateway]) -> None:
    url, gateway = held
    pool = _pool(gateway)
    busy = asyncio.create_task(
        client.post(url + "/v1/chat/completions", {**_chat(64), "stream": False})
    )
    await _until(pool.empty, 10, "the non-streaming request took the engine")
    reply = await client.stream(
        url + "/v1/chat/completions", _chat(4, stream_options={"include_usage": True})
    )
    occupied = await busy
    assert occupied.status == 200

    assert reply.status == 200
    assert_sse_headers(reply.headers)
    first_data = next(i for i, (_, line) in enumerate(reply.lines) if line.startswith("data:"))
    before = reply.lines[:first_data]
    assert before, "no keep-alive comment before the first token"
    assert all(line == ": keep-alive" for _, line in before)
    assert not reply.comments[len(before) :], "comments after the first data line"
    # Sent while waiting, as time passed, not in one burst with the data.
    assert reply.lines[first_data][0] - before[0][0] > KEEPALIVE / 2
    assert reply.done
    check_chat_stream(reply.events, max_tokens=4, include_usage=True)


async def test_error_after_the_stream_committed_is_an_error_event(
    held: tuple[str, Gateway],
) -> None:
    """A backend slower than the keep-alive period: turnout commits to 200 and sends comments;
    when the backend then times out, the stream ends with an OpenAI error event, not [DONE]."""
    url, _ = held
    body = {"model": "silent/hang", "messages": HI, "max_tokens": 4, "stream": True}
    reply = await client.stream(url + "/v1/chat/completions", body)
    assert reply.status == 200
    assert_sse_headers(reply.headers)
    assert reply.comments
    assert not reply.done
    assert len(reply.events) == 1
    check_error(reply.events[0], type="timeout", code="backend_timeout", param=None)


async def _read_until(resp: aiohttp.ClientResponse, wanted: Any, limit: int = 1000) -> float:
    """Read SSE lines until one matches ``wanted(line)``; the time it arrived."""
    for _ in range(limit):
        line = (await resp.content.readline()).decode().strip()
        if wanted(line):
            return time.monotonic()
    raise AssertionError("the awaited line never came")


def _has_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    event = json.loads(line[6:])
    return bool(event.get("choices") and event["choices"][0]["delta"].get("content"))


async def test_client_going_away_stops_the_generation(held: tuple[str, Gateway]) -> None:
    url, gateway = held
    pool = _pool(gateway)
    await _until(lambda: pool.qsize() == 1, 10, "the engine is idle")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + "/v1/chat/completions", json=_chat(400))
        assert resp.status == 200
        times = [await _read_until(resp, _has_content) for _ in range(6)]
        assert pool.empty()
        resp.close()  # the client goes away mid-stream
    per_token = (times[-1] - times[0]) / 5
    remaining = (400 - 6) * per_token  # what finishing the generation would take
    stopped = await _until(lambda: pool.qsize() == 1, remaining / 4, "the generation stopped")
    reply = await client.post(url + "/v1/chat/completions", {**_chat(4), "stream": False})
    assert reply.status == 200
    assert stopped + reply.elapsed < remaining / 2


async def test_client_leaving_while_queued_never_runs(held: tuple[str, Gateway]) -> None:
    """A stream still waiting for the engine (only keep-alives sent so far) is dropped by its
    client: it must not run once the engine frees up."""
    url, gateway = held
    pool = _pool(gateway)
    await _until(lambda: pool.qsize() == 1, 10, "the engine is idle")
    busy = asyncio.create_task(
        client.post(url + "/v1/chat/completions", {**_chat(48), "stream": False})
    )
    await _until(pool.empty, 10, "the non-streaming request took the engine")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + "/v1/chat/completions", json=_chat(400))
        assert resp.status == 200
        await _read_until(resp, lambda line: line == ": keep-alive")
        resp.close()
    assert (await busy).status == 200
    await _until(lambda: pool.qsize() == 1, 2, "the engine is free again")
    watch_until = time.monotonic() + 0.5
    while time.monotonic() < watch_until:
        assert pool.qsize() == 1, "the abandoned request ran after all"
        await asyncio.sleep(0.01)


async def test_llama_stream_headers_and_unbuffered_chunks(llama_gateway: str) -> None:
    body = {**_chat(16), "model": "llama/gemma-3-270m"}
    reply = await client.stream(llama_gateway + "/v1/chat/completions", body)
    assert reply.status == 200
    assert_sse_headers(reply.headers)
    assert reply.headers["X-Turnout-Backend"] == "llama"
    assert reply.done
    check_chat_stream(reply.events, max_tokens=16, include_usage=False)
    assert_not_buffered(reply, 16)


async def test_client_leaving_after_a_late_start_stops_the_generation(
    held: tuple[str, Gateway],
) -> None:
    """The same, for a stream that began with keep-alives and then got the engine."""
    url, gateway = held
    pool = _pool(gateway)
    await _until(lambda: pool.qsize() == 1, 10, "the engine is idle")
    busy = asyncio.create_task(
        client.post(url + "/v1/chat/completions", {**_chat(32), "stream": False})
    )
    await _until(pool.empty, 10, "the non-streaming request took the engine")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + "/v1/chat/completions", json=_chat(400))
        await _read_until(resp, lambda line: line == ": keep-alive")
        assert (await busy).status == 200
        times = [await _read_until(resp, _has_content) for _ in range(6)]
        assert pool.empty()
        resp.close()
    remaining = (400 - 6) * (times[-1] - times[0]) / 5
    await _until(lambda: pool.qsize() == 1, remaining / 4, "the generation stopped")


async def test_client_leaving_a_non_streamed_request_stops_the_generation(
    held: tuple[str, Gateway],
) -> None:
    """Not only streams: a client that gives up on a plain request frees the engine at once
    instead of leaving it to finish 400 tokens nobody will read."""
    url, gateway = held
    pool = _pool(gateway)
    await _until(lambda: pool.qsize() == 1, 10, "the engine is idle")
    per_token = await _time_per_token(url)
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(url + "/v1/chat/completions", json={**_chat(400), "stream": False})
        )
        await _until(pool.empty, 10, "the request took the engine")
        await asyncio.sleep(10 * per_token)  # some tokens into the generation
        request.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request
    remaining = 380 * per_token
    await _until(lambda: pool.qsize() == 1, remaining / 4, "the generation stopped")


async def _time_per_token(url: str) -> float:
    """Seconds per generated token on this machine right now (it is shared and noisy)."""
    reply = await client.post(url + "/v1/chat/completions", {**_chat(32), "stream": False})
    assert reply.status == 200
    return reply.elapsed / 32
