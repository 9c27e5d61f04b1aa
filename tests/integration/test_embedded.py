"""The embedded engine (the default with nothing configured), through HTTP and through `Gateway`.

The model is the Gemma 3 270M base model: its text is noise, so these tests assert shapes,
counts and invariants, and the engine's concurrency (queueing, instances, a free event loop).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import struct
import time
from typing import Any

import pytest

from tests.support import client
from tests.support.checks import (
    check_chat,
    check_chat_stream,
    check_completion,
    check_completion_stream,
    check_error,
)
from tests.support.openapi import assert_valid
from turnout import Gateway

pytestmark = pytest.mark.slow

MODEL = "gemma-3-270m"
HI = [{"role": "user", "content": "Say hi."}]
#: Gemma's end-of-sequence and end-of-turn tokens, banned so a generation runs to max_tokens
NO_EOS = {"1": -100, "106": -100}


async def test_models_lists_the_default_model(embedded_gateway: str) -> None:
    reply = await client.get(embedded_gateway + "/v1/models")
    assert reply.status == 200
    body = reply.json()
    assert_valid(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == [f"embedded/{MODEL}"]
    assert body["data"][0]["owned_by"] == "embedded"

    one = await client.get(embedded_gateway + f"/v1/models/embedded/{MODEL}")
    assert one.status == 200
    assert_valid(one.json(), "Model")
    assert one.json()["id"] == f"embedded/{MODEL}"


@pytest.mark.parametrize("model", [MODEL, f"embedded/{MODEL}"])
async def test_chat_completion(embedded_gateway: str, model: str) -> None:
    body = {"model": model, "messages": HI, "max_tokens": 8, "logit_bias": NO_EOS}
    reply = await client.post(embedded_gateway + "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Turnout-Backend"] == "embedded"
    choice = check_chat(reply.json(), max_tokens=8)
    assert choice["finish_reason"] == "length"


async def test_text_completion(embedded_gateway: str) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6}
    reply = await client.post(embedded_gateway + "/v1/completions", body)
    assert reply.status == 200, reply.body
    check_completion(reply.json(), max_tokens=6)


async def test_embeddings_one_vector_per_input(embedded_gateway: str) -> None:
    body = {"model": MODEL, "input": ["hello there", "a longer sentence about llamas"]}
    reply = await client.post(embedded_gateway + "/v1/embeddings", body)
    assert reply.status == 200, reply.body
    result = reply.json()
    assert_valid(result, "CreateEmbeddingResponse")
    assert [d["index"] for d in result["data"]] == [0, 1]
    dims = {len(d["embedding"]) for d in result["data"]}
    assert len(dims) == 1 and dims.pop() > 0
    assert result["data"][0]["embedding"] != result["data"][1]["embedding"]
    assert result["usage"]["prompt_tokens"] > 0
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"]


async def test_embeddings_base64(embedded_gateway: str) -> None:
    """``encoding_format: base64`` gets little-endian float32s in base64, as OpenAI sends them."""
    url = embedded_gateway + "/v1/embeddings"
    floats = (await client.post(url, {"model": MODEL, "input": "hello"})).json()
    packed = await client.post(url, {"model": MODEL, "input": "hello", "encoding_format": "base64"})
    assert packed.status == 200, packed.body
    encoded = packed.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    vector = floats["data"][0]["embedding"]
    assert len(raw) == 4 * len(vector)
    decoded = struct.unpack(f"<{len(vector)}f", raw)
    assert decoded == pytest.approx(vector, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream(embedded_gateway: str, include_usage: bool) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": HI,
        "max_tokens": 8,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    reply = await client.stream(embedded_gateway + "/v1/chat/completions", body)
    assert reply.status == 200
    assert reply.done
    usage = check_chat_stream(reply.events, max_tokens=8, include_usage=include_usage)
    if include_usage:
        assert usage is not None
        # The same prompt, not streamed: the engine counts the prompt the same way both times.
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        full = (await client.post(embedded_gateway + "/v1/chat/completions", plain)).json()
        assert usage["prompt_tokens"] == full["usage"]["prompt_tokens"]


async def test_completion_stream(embedded_gateway: str) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": NO_EOS,
    }
    reply = await client.stream(embedded_gateway + "/v1/completions", body)
    assert reply.status == 200
    assert reply.done
    check_completion_stream(reply.events, max_tokens=6, include_usage=True)


async def test_context_overflow_is_a_400_naming_messages(embedded_gateway: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "llama " * 4000}]}
    reply = await client.post(embedded_gateway + "/v1/chat/completions", body)
    assert reply.status == 400, reply.body
    check_error(
        reply.json(), type="invalid_request_error", code="context_length_exceeded", param="messages"
    )


async def test_n_above_one_is_refused_naming_n(embedded_gateway: str) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 4, "n": 2}
    reply = await client.post(embedded_gateway + "/v1/chat/completions", body)
    assert reply.status == 400
    check_error(
        reply.json(), type="invalid_request_error", code="unsupported_capability", param="n"
    )


# Through the Python API, in the test's own event loop.


def _engine(gw: Gateway) -> Any:
    provider: Any = gw.providers["embedded"]
    return provider.engines[MODEL]


async def _pool_refills(pool: asyncio.Queue[Any], size: int, within: float = 5.0) -> None:
    """An instance goes back to its pool when its worker thread has ended, just after the last
    chunk: wait for that, with a deadline."""
    deadline = time.monotonic() + within
    while pool.qsize() < size:
        assert time.monotonic() < deadline, f"pool holds {pool.qsize()} of {size} instances"
        await asyncio.sleep(0.01)


async def test_inference_never_blocks_the_event_loop() -> None:
    async with Gateway({}) as gw:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        reply = await gw.chat(MODEL, HI, max_tokens=24, logit_bias=NO_EOS)
        pieces = [chunk async for chunk in gw.stream(MODEL, HI, max_tokens=16, logit_bias=NO_EOS)]
        elapsed = time.monotonic() - start
        stop.set()
        await task
    assert reply["usage"]["completion_tokens"] == 24
    assert len(pieces) >= 16
    # ~40 tokens take well over 0.3 s here; a loop blocked by inference would stall that long.
    assert elapsed > 0.3
    assert max(gaps) < 0.15, f"the event loop stalled for {max(gaps):.3f}s during inference"


async def _timed_stream(gw: Gateway, max_tokens: int) -> tuple[float, float, int]:
    """(first chunk, last chunk, chunks) of one streamed chat."""
    times: list[float] = []
    async for _ in gw.stream(MODEL, HI, max_tokens=max_tokens, logit_bias=NO_EOS):
        times.append(time.monotonic())
    return times[0], times[-1], len(times)


async def test_one_instance_queues_requests_in_turn() -> None:
    async with Gateway({}) as gw:
        assert _engine(gw).pool.qsize() == 1
        results = await asyncio.gather(*(_timed_stream(gw, 12) for _ in range(3)))
        replies = await asyncio.gather(
            *(gw.chat(MODEL, HI, max_tokens=4, logit_bias=NO_EOS) for _ in range(3))
        )
        await _pool_refills(_engine(gw).pool, 1)
    assert all(n >= 12 for _, _, n in results)
    assert all(r["choices"][0]["finish_reason"] == "length" for r in replies)
    spans = sorted((first, last) for first, last, _ in results)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end, f"two generations overlapped on one engine instance: {spans}"


async def test_max_concurrency_two_runs_two_instances() -> None:
    config = {"providers": {"embedded": {"type": "embedded", "max_concurrency": 2}}}
    async with Gateway(config) as gw:
        pool = _engine(gw).pool
        assert pool.qsize() == 2
        first, second = pool.get_nowait(), pool.get_nowait()
        assert first is not second
        pool.put_nowait(first)
        pool.put_nowait(second)
        (a_first, a_last, _), (b_first, b_last, _) = await asyncio.gather(
            _timed_stream(gw, 24), _timed_stream(gw, 24)
        )
        await _pool_refills(pool, 2)
    assert a_first < b_last and b_first < a_last, "the two generations did not run together"
