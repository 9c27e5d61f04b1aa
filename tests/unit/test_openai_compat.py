"""The OpenAI-compatible dialect: request translation, presets, quirk mending, and transport
behaviour against tiny real HTTP servers started in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from turnout.config import ProviderConfig
from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendRateLimitedError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ModelNotFoundError,
)
from turnout.providers import build_provider
from turnout.providers.openai_compat import OpenAICompatProvider
from turnout.providers.presets import PRESETS
from turnout.wire.types import Call, Chunk

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHUNK_1 = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
}
CHUNK_2 = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
}


def make(type_: str = "llamacpp", **settings: Any) -> OpenAICompatProvider:
    provider = build_provider("up", ProviderConfig(type=type_, **settings))
    assert isinstance(provider, OpenAICompatProvider)
    return provider


def chat_call(stream: bool = False, **fields: Any) -> Call:
    body = {"model": "alias", "messages": [{"role": "user", "content": "Hi"}], **fields}
    if stream:
        body["stream"] = True
    return Call("chat", body, "real-model", stream)


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """An aiohttp.web server on a free port; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sock = free_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_raw(reply: bytes | None, *, close: bool = True) -> AsyncIterator[str]:
    """A TCP server that reads the request, writes ``reply`` as is (or nothing), then hangs up
    (or, with ``reply=None``, keeps the connection open without answering)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if reply is not None:
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()

    server = await asyncio.start_server(handle, sock=free_socket())
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def started(provider: OpenAICompatProvider) -> AsyncIterator[OpenAICompatProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def sse_handler(body: bytes, content_type: str = "text/event-stream") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        # Write in small pieces so that events cross read boundaries.
        for i in range(0, len(body), 7):
            await resp.write(body[i : i + 7])
        await resp.write_eof()
        return resp

    return handler


async def collect(stream: AsyncIterator[Chunk]) -> list[dict[str, Any]]:
    return [chunk.data async for chunk in stream]


def event(obj: object, sep: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + sep + sep


# --- payload translation ------------------------------------------------------------------------


def test_model_is_replaced_and_body_not_mutated() -> None:
    call = chat_call(temperature=0.2, top_k=40)
    before = dict(call.body)
    body = make().payload(call)
    assert body == {
        "model": "real-model",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "top_k": 40,
    }
    assert call.body == before


def test_max_completion_tokens_becomes_max_tokens() -> None:
    body = make().payload(chat_call(max_completion_tokens=64))
    assert body["max_tokens"] == 64
    assert "max_completion_tokens" not in body


def test_existing_max_tokens_wins() -> None:
    body = make().payload(chat_call(max_completion_tokens=64, max_tokens=16))
    assert body["max_tokens"] == 16
    assert "max_completion_tokens" not in body
    body = make().payload(chat_call(max_completion_tokens=64, max_tokens=None))
    assert body["max_tokens"] == 64


def test_stream_options_added_when_the_preset_reports_usage() -> None:
    body = make("llamacpp").payload(chat_call(stream=True))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    body = make("vllm").payload(chat_call(stream=True, stream_options={"include_usage": False}))
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("type_", ["llama-cpp-python", "fastchat"])
def test_stream_options_removed_when_the_preset_cannot(type_: str) -> None:
    provider = make(type_)
    assert provider.stream_usage is False
    body = provider.payload(chat_call(stream=True, stream_options={"include_usage": True}))
    assert body["stream"] is True
    assert "stream_options" not in body


def test_stream_fields_removed_when_not_streaming() -> None:
    call = Call("chat", {"model": "a", "messages": [], "stream": False}, "b", False)
    assert make().payload(call) == {"model": "b", "messages": []}


def test_completion_is_translated_too() -> None:
    call = Call("completion", {"model": "a", "prompt": "p", "max_completion_tokens": 5}, "b", True)
    assert make().payload(call) == {
        "model": "b",
        "prompt": "p",
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_embeddings_untouched_but_model() -> None:
    body = {"model": "a", "input": ["x"], "encoding_format": "float", "dimensions": 8}
    call = Call("embedding", body, "emb", False)
    assert make().payload(call) == {**body, "model": "emb"}


# --- endpoints, presets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("http://h:8000/v1", "http://h:8000"),
        ("http://h:8000/v1/", "http://h:8000"),
        ("http://h:8000", "http://h:8000"),
        ("https://h/proxy/v1", "https://h/proxy"),
        ("http://h:8000/v1beta", "http://h:8000/v1beta"),
    ],
)
def test_endpoint_normalisation(endpoint: str, base: str) -> None:
    assert make("openai", endpoint=endpoint).base_url == base


@pytest.mark.parametrize(
    ("type_", "port", "health"),
    [
        ("llamacpp", 8080, "/health"),
        ("llama-cpp-python", 8000, "/v1/models"),
        ("vllm", 8000, "/health"),
        ("localai", 8080, "/readyz"),
        ("lmstudio", 1234, "/v1/models"),
        ("jan", 1337, "/v1/models"),
        ("tabbyapi", 5000, "/health"),
        ("mlx", 8080, "/health"),
        ("mistralrs", 8080, "/health"),
        ("fastchat", 7860, "/v1/models"),
        ("textgen", 5000, "/v1/internal/health"),
        ("openai", 8000, "/v1/models"),
    ],
)
def test_preset_defaults(type_: str, port: int, health: str) -> None:
    provider = make(type_)
    assert provider.base_url == f"http://127.0.0.1:{port}"
    assert provider.health_path == health
    assert provider.paths == {
        "chat": "/v1/chat/completions",
        "completion": "/v1/completions",
        "embedding": "/v1/embeddings",
        "models": "/v1/models",
    }


def test_llama_cpp_python_is_served_one_at_a_time() -> None:
    assert make("llama-cpp-python").config.max_concurrency == 1
    assert make("llama-cpp-python", max_concurrency=3).config.max_concurrency == 3
    assert make("vllm").config.max_concurrency is None


def test_every_preset_speaks_openai() -> None:
    for name, preset in PRESETS.items():
        assert preset.dialect == "openai", name
        assert isinstance(make(name), OpenAICompatProvider)


def test_configured_paths_win() -> None:
    provider = make(
        "vllm",
        paths={"chat": "/api/chat", "models": "/api/models", "health": "/ping"},
    )
    assert provider.paths["chat"] == "/api/chat"
    assert provider.paths["models"] == "/api/models"
    assert provider.paths["completion"] == "/v1/completions"
    assert provider.health_path == "/ping"
    legacy = make("openai", parameters={"model_endpoint": "/models"})
    assert legacy.health_path == "/models"


def test_request_headers() -> None:
    provider = make("vllm", api_key="sk-1", headers={"X-Team": "a"})
    assert provider.request_headers() == {
        "Content-Type": "application/json",
        "X-Team": "a",
        "Authorization": "Bearer sk-1",
    }
    own = make("vllm", api_key="sk-1", headers={"Authorization": "Token t"})
    assert own.request_headers()["Authorization"] == "Token t"
    assert "Authorization" not in make("vllm", api_key="").request_headers()


# --- stream chunk quirks ---------------------------------------------------------------------


def test_chunk_forwarded_raw() -> None:
    raw = orjson.dumps(CHUNK_1)
    chunk = make()._chunk(raw)
    assert chunk.data == CHUNK_1
    assert chunk.raw == raw


def test_kobold_string_null_finish_reason_is_mended() -> None:
    obj = {**CHUNK_1, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "null"}]}
    chunk = make()._chunk(orjson.dumps(obj))
    assert chunk.data["choices"][0]["finish_reason"] is None
    assert chunk.raw is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'{"error": {"message": "out of memory", "type": "server_error"}}',
            "backend 'up' failed mid-stream: out of memory",
        ),
        (
            b'{"error": {"message": "oops\\n\\n  File \\"/app.py\\", line 3, in f\\n    x"}}',
            "backend 'up' failed mid-stream: oops",
        ),
        (
            b'{"text": "NETWORK ERROR DUE TO HIGH TRAFFIC.", "error_code": 50001}',
            "backend 'up' failed mid-stream: NETWORK ERROR DUE TO HIGH TRAFFIC.",
        ),
    ],
)
def test_error_event_raises(data: bytes, message: str) -> None:
    with pytest.raises(BackendError) as info:
        make()._chunk(data)
    assert type(info.value) is BackendError
    assert info.value.message == message
    assert info.value.backend == "up"


def test_error_code_zero_is_not_an_error() -> None:
    assert make()._chunk(b'{"text": "ok", "error_code": 0}').data["error_code"] == 0


@pytest.mark.parametrize("data", [b"{not json", b"", b"data: {}", b"[1, 2]", b'"text"'])
def test_malformed_event_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(BackendProtocolError) as info:
        make()._chunk(data)
    assert info.value.backend == "up"
    assert "backend 'up' sent a" in info.value.message


# --- against real HTTP servers -------------------------------------------------------------------


async def test_complete_sends_the_translated_request() -> None:
    seen: dict[str, Any] = {}

    async def chat(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        seen["headers"] = dict(request.headers)
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    async with serve({"/v1/chat/completions": chat}) as url:
        provider = make("vllm", endpoint=url + "/v1", api_key="sk-9", headers={"X-Team": "t"})
        async with started(provider):
            result = await provider.complete(chat_call(max_completion_tokens=8, stream=False))
    assert result == {"id": "x", "object": "chat.completion", "choices": []}
    assert seen["body"] == {
        "model": "real-model",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 8,  # vLLM's preferred name (max_tokens is deprecated there)
    }
    assert seen["headers"]["Authorization"] == "Bearer sk-9"
    assert seen["headers"]["X-Team"] == "t"
    assert seen["headers"]["Content-Type"] == "application/json"


async def test_complete_maps_error_replies() -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        status = {"a": 400, "b": 404, "c": 429}[body["model"]]
        headers = {"Retry-After": "3"} if status == 429 else None
        message = {"error": f"model {body['model']} says no"}
        return web.json_response(message, status=status, headers=headers)

    async with (
        serve({"/v1/chat/completions": chat}) as url,
        started(make("mlx", endpoint=url)) as provider,
    ):
        for model, cls in (
            ("a", BackendRejectedError),
            ("b", ModelNotFoundError),
            ("c", BackendRateLimitedError),
        ):
            with pytest.raises(cls) as info:
                await provider.complete(Call("chat", {"messages": []}, model))
            assert f"model {model} says no" in info.value.message
        assert info.value.retry_after == 3.0


async def test_complete_error_object_with_status_200() -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "model crashed"}})

    async with (
        serve({"/v1/chat/completions": chat}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendError) as info:
            await provider.complete(chat_call())
    assert info.value.message == "backend 'up' failed: model crashed"


async def test_complete_malformed_json() -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async with (
        serve({"/v1/chat/completions": chat}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendProtocolError) as info:
            await provider.complete(chat_call())
    assert "malformed JSON (text/html" in info.value.message


async def test_stream_lf() -> None:
    body = event(CHUNK_1) + b": ping\n\n" + event(CHUNK_2) + b"data: [DONE]\n\n"
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        assert await collect(provider.stream(chat_call(stream=True))) == [CHUNK_1, CHUNK_2]


async def test_stream_crlf() -> None:
    body = event(CHUNK_1, b"\r\n") + b": ping\r\n\r\n" + event(CHUNK_2, b"\r\n")
    body += b"data: [DONE]\r\n\r\n"
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        assert await collect(provider.stream(chat_call(stream=True))) == [CHUNK_1, CHUNK_2]


async def test_stream_done_without_final_blank_line() -> None:
    kobold = {
        **CHUNK_1,
        "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "null"}],
    }
    body = event(kobold) + event(CHUNK_2) + b"data: [DONE]"
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        chunks = await collect(provider.stream(chat_call(stream=True)))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]


async def test_stream_last_event_without_blank_line_and_no_done() -> None:
    body = event(CHUNK_1) + b"data: " + orjson.dumps(CHUNK_2)
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        assert await collect(provider.stream(chat_call(stream=True))) == [CHUNK_1, CHUNK_2]


async def test_stream_cut_short_without_done_or_finish_is_an_error() -> None:
    """A body that ends cleanly after content but with neither a finish reason nor [DONE] is a
    reply cut short: the client must learn it, not receive a truncated answer as whole."""
    body = event(CHUNK_1)
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        seen: list[dict[str, object]] = []
        with pytest.raises(BackendUnavailableError, match="ended the stream before it finished"):
            async for chunk in provider.stream(chat_call(stream=True)):
                seen.append(chunk.data)
    assert seen == [CHUNK_1]


async def test_stream_stops_at_done() -> None:
    body = event(CHUNK_1) + b"data: [DONE]\n\n" + event(CHUNK_2)
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        assert await collect(provider.stream(chat_call(stream=True))) == [CHUNK_1]


async def test_stream_skips_unknown_named_events() -> None:
    body = (
        b'event: agent_step\ndata: {"step": 1}\n\n'
        + b"event: message\n"
        + event(CHUNK_1)
        + event(CHUNK_2)
        + b"data: [DONE]\n\n"
    )
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        assert await collect(provider.stream(chat_call(stream=True))) == [CHUNK_1, CHUNK_2]


async def test_stream_error_named_event_raises() -> None:
    body = event(CHUNK_1) + b'event: error\ndata: {"message": "engine died"}\n\n'
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        got: list[dict[str, Any]] = []
        with pytest.raises(BackendError) as info:
            async for chunk in provider.stream(chat_call(stream=True)):
                got.append(chunk.data)
    assert got == [CHUNK_1]
    assert info.value.message == "backend 'up' failed mid-stream: engine died"


async def test_stream_error_data_event_raises() -> None:
    body = event(CHUNK_1) + event({"error": {"message": "slot unavailable"}}) + b"data: [DONE]\n\n"
    async with (
        serve({"/v1/chat/completions": sse_handler(body)}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendError, match="failed mid-stream: slot unavailable"):
            await collect(provider.stream(chat_call(stream=True)))


async def test_stream_sends_stream_options_when_supported() -> None:
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        return await sse_handler(event(CHUNK_1) + b"data: [DONE]\n\n")(request)

    async with serve({"/v1/chat/completions": chat}) as url:
        for type_ in ("llamacpp", "llama-cpp-python"):
            async with started(make(type_, endpoint=url)) as provider:
                await collect(provider.stream(chat_call(stream=True)))
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert "stream_options" not in seen[1]
    assert all(body["stream"] is True for body in seen)


async def test_json_where_sse_was_expected() -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    async with (
        serve({"/v1/chat/completions": chat}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendProtocolError) as info:
            await collect(provider.stream(chat_call(stream=True)))
    assert info.value.message.startswith(
        "backend 'up' answered a stream request with application/json"
    )
    assert "instead of text/event-stream" in info.value.message


async def test_stream_error_status_before_streaming() -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "Loading model"}}, status=503)

    async with (
        serve({"/v1/chat/completions": chat}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendUnavailableError, match="Loading model"):
            await collect(provider.stream(chat_call(stream=True)))


async def test_connection_refused() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    async with started(make(endpoint=f"http://127.0.0.1:{port}")) as provider:
        with pytest.raises(BackendUnavailableError) as info:
            await provider.complete(chat_call())
        # the client learns the backend's name; its address is for the operator only
        assert info.value.message == "backend 'up' is unreachable"
        assert info.value.detail.startswith(
            f"backend 'up' at http://127.0.0.1:{port} is unreachable"
        )
        assert info.value.retryable is True
        with pytest.raises(BackendUnavailableError):
            await collect(provider.stream(chat_call(stream=True)))
        health = await provider.probe()
        assert health.ok is False
        assert "unreachable" in health.detail


async def test_server_that_never_answers_times_out() -> None:
    async with (
        serve_raw(None) as url,
        started(make(endpoint=url, timeout=0.3)) as provider,
    ):
        with pytest.raises(BackendTimeoutError) as info:
            await provider.complete(chat_call())
        assert info.value.message == "backend 'up' did not answer within 0.3s"
        assert info.value.detail == f"backend 'up' at {url} did not answer within 0.3s"
        assert info.value.status == 504
        with pytest.raises(BackendTimeoutError):
            await collect(provider.stream(chat_call(stream=True)))


async def test_stream_that_stalls_times_out() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    first = event(CHUNK_1)
    reply = head + f"{len(first):x}\r\n".encode() + first + b"\r\n"
    async with (
        serve_raw(reply, close=False) as url,
        started(make(endpoint=url, timeout=0.3)) as provider,
    ):
        got: list[dict[str, Any]] = []
        with pytest.raises(BackendTimeoutError):
            async for chunk in provider.stream(chat_call(stream=True)):
                got.append(chunk.data)
    assert got == [CHUNK_1]


async def test_mid_stream_connection_drop() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    first = event(CHUNK_1)
    reply = head + f"{len(first):x}\r\n".encode() + first + b"\r\n"  # no terminating 0 chunk
    async with (
        serve_raw(reply) as url,
        started(make(endpoint=url)) as provider,
    ):
        got: list[dict[str, Any]] = []
        with pytest.raises(BackendUnavailableError) as info:
            async for chunk in provider.stream(chat_call(stream=True)):
                got.append(chunk.data)
    assert got == [CHUNK_1]
    assert info.value.message == "backend 'up' closed the connection mid-reply"
    assert info.value.detail == f"backend 'up' at {url} closed the connection mid-reply"


async def test_list_models_and_probe() -> None:
    async def models(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": "a", "owned_by": "me", "created": 5},
                    {"id": "b"},
                    {"no": "id"},
                ],
            }
        )

    async def health(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async with (
        serve({"/v1/models": models, "/health": health}) as url,
        started(make("llamacpp", endpoint=url)) as provider,
    ):
        listed = await provider.list_models()
        assert [(m.id, m.owned_by, m.created) for m in listed] == [
            ("a", "me", 5),
            ("b", "up", 0),
        ]
        health_ok = await provider.probe()
        assert health_ok.ok is True
        assert health_ok.latency_ms is not None


async def test_list_models_without_data() -> None:
    async def models(request: web.Request) -> web.StreamResponse:
        return web.json_response({"models": []})

    async with (
        serve({"/v1/models": models}) as url,
        started(make(endpoint=url)) as provider,
    ):
        with pytest.raises(BackendProtocolError, match="without a 'data' list"):
            await provider.list_models()


async def test_probe_503_while_loading() -> None:
    async def health(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": 503, "message": "Loading model"}}, status=503)

    async with (
        serve({"/health": health}) as url,
        started(make("llamacpp", endpoint=url)) as provider,
    ):
        result = await provider.probe()
    assert result.ok is False
    # what the operator sees (/v1/providers) names the address as well
    assert result.detail == f"backend 'up' is unavailable (HTTP 503): Loading model (at {url})"


@pytest.mark.parametrize(
    ("type_", "path", "expected"),
    [("llama-cpp-python", "/extras/tokenize", 3), ("llamacpp", "/tokenize", 4)],
)
async def test_count_tokens(type_: str, path: str, expected: int) -> None:
    seen: list[dict[str, Any]] = []

    async def tokenize(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        return web.json_response({"tokens": [2, 10, 11, 12]})

    async with (
        serve({path: tokenize}) as url,
        started(make(type_, endpoint=url)) as provider,
    ):
        assert await provider.count_tokens("m", "a b c") == expected
    assert seen == [{"model": "m", "input": "a b c", "content": "a b c", "prompt": "a b c"}]


async def test_count_tokens_without_a_tokenizer_endpoint() -> None:
    assert await make("vllm").count_tokens("m", "text") is None


def test_used_before_start() -> None:
    with pytest.raises(RuntimeError, match="used before start"):
        _ = make().session
