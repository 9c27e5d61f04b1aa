"""turnout in front of a real llama-cpp-python server (``python -m llama_cpp.server``) on the Gemma
GGUF, through the ``llama-cpp-python`` preset: the answers conform to OpenAI's schema and every
quirk of that server is shielded from the client.

Several tests first show the quirk on the server itself, so that they prove turnout is what hides
it: unknown models served anyway, 500s with a Python traceback for malformed requests, no usage in
streams, no ``/health``, and a running stream cut short whenever another request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
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
from tests.support.servers import run_gateway, run_llama_cpp_server
from turnout import Gateway

pytestmark = pytest.mark.slow

MODEL = "llama/gemma-3-270m"
HI = [{"role": "user", "content": "Tell me a story."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens


def _chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": max_tokens, "logit_bias": NO_EOS, **extra}


def _stream(max_tokens: int, usage: bool = True) -> dict[str, Any]:
    extra: dict[str, Any] = {"stream": True}
    if usage:
        extra["stream_options"] = {"include_usage": True}
    return _chat(max_tokens, **extra)


async def test_models_are_the_backends(llama_gateway: str) -> None:
    reply = await client.get(llama_gateway + "/v1/models")
    assert reply.status == 200
    assert_valid(reply.json(), "ListModelsResponse")
    assert [m["id"] for m in reply.json()["data"]] == [MODEL]


@pytest.mark.parametrize("model", [MODEL, "gemma-3-270m"])
async def test_chat_completion(llama_gateway: str, model: str) -> None:
    reply = await client.post(llama_gateway + "/v1/chat/completions", _chat(6, model=model))
    assert reply.status == 200, reply.body
    assert reply.headers["X-Turnout-Backend"] == "llama"
    choice = check_chat(reply.json(), max_tokens=6)
    assert choice["finish_reason"] == "length"


async def test_text_completion(llama_gateway: str) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6, "logit_bias": NO_EOS}
    reply = await client.post(llama_gateway + "/v1/completions", body)
    assert reply.status == 200, reply.body
    assert check_completion(reply.json(), max_tokens=6)["finish_reason"] == "length"


async def test_stream_usage_supplied_by_turnout(llama_server: str, llama_gateway: str) -> None:
    """The server sends no usage even when asked; turnout counts it with the server's tokenizer."""
    body = {**_stream(8), "model": "gemma-3-270m"}
    direct = await client.stream(llama_server + "/v1/chat/completions", body)
    assert direct.done
    assert not any(e.get("usage") for e in direct.events)

    reply = await client.stream(llama_gateway + "/v1/chat/completions", _stream(8))
    assert reply.status == 200
    assert reply.headers["X-Turnout-Backend"] == "llama"
    assert reply.done
    usage = check_chat_stream(reply.events, max_tokens=8, include_usage=True)
    assert usage is not None


async def test_stream_without_usage(llama_gateway: str) -> None:
    reply = await client.stream(llama_gateway + "/v1/chat/completions", _stream(6, usage=False))
    assert reply.done
    check_chat_stream(reply.events, max_tokens=6, include_usage=False)


async def test_completion_stream_with_usage(llama_gateway: str) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 6,
        "logit_bias": NO_EOS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = await client.stream(llama_gateway + "/v1/completions", body)
    assert reply.done
    usage = check_completion_stream(reply.events, max_tokens=6, include_usage=True)
    assert usage is not None
    # A text prompt has no template, so turnout's count is the server's own, give or take the
    # BOS token the server counts and turnout leaves out.
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    full = (await client.post(llama_gateway + "/v1/completions", plain)).json()
    assert 0 <= full["usage"]["prompt_tokens"] - usage["prompt_tokens"] <= 1


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_a_404(llama_server: str, llama_gateway: str, stream: bool) -> None:
    body = {"model": "unknown-model", "messages": HI, "max_tokens": 2, "stream": stream}
    direct = await client.post(llama_server + "/v1/chat/completions", body)
    assert direct.status == 200  # the quirk: the server serves its one model under any name

    body["model"] = "llama/unknown-model"
    reply = await client.post(llama_gateway + "/v1/chat/completions", body)
    assert reply.status == 404
    error = check_error(reply.json(), type="not_found_error", code="model_not_found", param="model")
    assert "unknown-model" in error["message"] and "gemma-3-270m" in error["message"]


async def test_malformed_request_never_reaches_the_server(
    llama_server: str, llama_gateway: str
) -> None:
    body = {"model": MODEL, "messages": 5, "max_tokens": 2}
    direct = await client.post(llama_server + "/v1/chat/completions", body)
    assert direct.status == 500 and b'File \\"' in direct.body  # the quirk: a traceback

    reply = await client.post(llama_gateway + "/v1/chat/completions", body)
    assert reply.status == 400
    check_error(reply.json(), type="invalid_request_error", code="invalid_value", param="messages")


async def test_server_side_validation_error_is_a_400_naming_the_field(
    llama_server: str, llama_gateway: str
) -> None:
    """A vendor field turnout passes through untouched, which the server then fails to parse."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, "top_k": "many"}
    direct = await client.post(llama_server + "/v1/chat/completions", body)
    assert direct.status == 500 and b"top_k" in direct.body and b'File \\"' in direct.body

    reply = await client.post(llama_gateway + "/v1/chat/completions", body)
    assert reply.status == 400, reply.body
    error = check_error(
        reply.json(), type="invalid_request_error", code="invalid_value", param="top_k"
    )
    assert "llama" in error["message"]
    assert reply.headers["X-Turnout-Backend"] == "llama"


async def test_context_overflow_keeps_the_servers_param_and_code(llama_gateway: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "llama " * 3000}]}
    reply = await client.post(llama_gateway + "/v1/chat/completions", body)
    assert reply.status == 400, reply.body
    check_error(
        reply.json(),
        type="invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )


async def test_no_health_endpoint_yet_the_provider_probes_healthy(llama_server: str) -> None:
    assert (await client.get(llama_server + "/health")).status == 404
    config = {
        "providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}},
        "embedded": False,
    }
    async with Gateway(config, environ={}) as gw:
        health = await gw.providers["llama"].probe()
    assert health.ok, health.detail
    assert health.latency_ms is not None and health.latency_ms >= 0


# One request at a time: the server cuts a running stream short when another request arrives.


def _finished_fully(reply: client.Stream, max_tokens: int) -> None:
    assert reply.status == 200
    assert reply.done
    usage = check_chat_stream(reply.events, max_tokens=max_tokens, include_usage=True)
    assert reply.chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage is not None


async def test_the_server_cuts_a_stream_when_another_request_arrives(llama_server: str) -> None:
    """The quirk itself, without turnout: a second request ends the first stream early."""
    body = {**_stream(200, usage=False), "model": "gemma-3-270m"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(llama_server + "/v1/chat/completions", json=body)
        await resp.content.readline()  # the stream has started
        other = await client.get(llama_server + "/v1/models")  # any request at all
        assert other.status == 200
        events = []
        try:
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
        except aiohttp.ClientPayloadError:
            pass  # the server may also break off the chunked body itself
        resp.close()
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert reasons == [], "the server let the first stream finish; the quirk is gone"
    assert len(events) < 200


async def test_concurrent_streams_queue_and_all_finish(llama_gateway: str) -> None:
    url = llama_gateway + "/v1/chat/completions"
    first, second, plain = await asyncio.gather(
        client.stream(url, _stream(24)), client.stream(url, _stream(24)), client.post(url, _chat(6))
    )
    _finished_fully(first, 24)
    _finished_fully(second, 24)
    assert plain.status == 200
    check_chat(plain.json(), max_tokens=6)


async def test_a_model_list_refresh_never_cuts_a_stream(gemma_path: Path) -> None:
    """turnout refreshes the backend's model list in the background (here every 0.1 s).

    A server of its own: the session's shared one also serves other gateways (``llama_gateway``),
    whose health checks and refreshes, not this gateway's, would cut the stream."""
    with run_llama_cpp_server(gemma_path) as server:
        await _refresh_during_a_stream(server)


async def _refresh_during_a_stream(server: str) -> None:
    config = {
        "server": {"models_refresh_seconds": 0.1},
        "providers": {"llama": {"type": "llama-cpp-python", "endpoint": server}},
    }
    with run_gateway(config) as url:
        reply = await client.stream(url + "/v1/chat/completions", _stream(48))
        _finished_fully(reply, 48)
        # And the refresh still happens when the server is idle: unknown names stay 404s.
        missing = await client.post(
            url + "/v1/chat/completions", {**_chat(2), "model": "llama/unknown-model"}
        )
        assert missing.status == 404


async def test_client_going_away_frees_the_slot(llama_gateway: str) -> None:
    """Streams are served one at a time: a client that leaves must not hold the slot until the
    server would have finished its 400 tokens."""
    url = llama_gateway + "/v1/chat/completions"
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url, json=_stream(400, usage=False))
        assert resp.status == 200
        while len(times) < 6:
            line = (await resp.content.readline()).decode()
            if line.startswith("data: {") and '"content"' in line:
                times.append(time.monotonic())
        resp.close()
    remaining = (400 - 6) * (times[-1] - times[0]) / 5  # time the rest would take
    reply = await client.post(url, _chat(4))
    assert reply.status == 200
    check_chat(reply.json(), max_tokens=4)
    assert reply.elapsed < remaining / 3, (reply.elapsed, remaining)


async def test_client_leaving_a_non_streamed_request_frees_the_slot(llama_server: str) -> None:
    """A plain request abandoned by its client releases turnout's slot for that backend at once
    (turnout closes its connection). llama-cpp-python's server itself finishes a non-streamed
    generation whose connection closed (it only watches streams), which turnout cannot change."""
    gateway = Gateway(
        {
            "providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}},
            "embedded": False,
        },
        environ={},
    )
    slots: Any = gateway.providers["llama"]._slots
    with run_gateway(gateway) as base:
        url = base + "/v1/chat/completions"
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.post(url, json=_chat(400)))
            deadline = time.monotonic() + 10
            while not slots.locked():
                assert time.monotonic() < deadline, "the request never took the slot"
                await asyncio.sleep(0.005)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            deadline = time.monotonic() + 1.0
            while slots.locked():
                assert time.monotonic() < deadline, "the slot is still held by a client long gone"
                await asyncio.sleep(0.005)
