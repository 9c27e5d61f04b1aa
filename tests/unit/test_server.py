"""The ASGI app over real HTTP (uvicorn in the test's loop, aiohttp as the client), with
in-memory providers so that no model loads."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
import pytest_asyncio
import uvicorn
from multidict import CIMultiDict

from turnout import __version__
from turnout.config import ProviderConfig
from turnout.errors import BackendUnavailableError, GatewayError
from turnout.gateway import Gateway
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.wire.types import JSON, Call, Chunk


class MemoryProvider(Provider):
    dialect: ClassVar[str] = "memory"

    def __init__(self, name: str, serves: list[str] | None) -> None:
        super().__init__(name, ProviderConfig(type="openai", max_retries=0))
        self.serves = serves
        self.fail: GatewayError | None = None
        self.bodies: list[JSON] = []

    async def list_models(self) -> list[ModelInfo]:
        if self.serves is None:
            raise BackendUnavailableError("down")
        return [ModelInfo(m, self.name, created=42) for m in self.serves]

    async def probe(self) -> Health:
        return Health(True)

    async def complete(self, call: Call) -> JSON:
        self.bodies.append(call.body)
        if self.fail is not None:
            raise self.fail
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
        }

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        if self.fail is not None:
            raise self.fail
        for text in ("he", "llo"):
            choice = {"index": 0, "delta": {"content": text}}
            yield Chunk(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": call.model,
                    "created": 1,
                    "choices": [choice],
                }
            )


LIMIT = 1024


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running() -> AsyncIterator[tuple[str, MemoryProvider]]:
    """One server for the module (stopping uvicorn takes a tick of 0.1 s or more)."""
    gateway = Gateway({"default_embedded": False, "server": {"max_body_bytes": LIMIT}}, environ={})
    local, remote = MemoryProvider("local", ["m", "n"]), MemoryProvider("remote", None)
    gateway.providers = {"local": local, "remote": remote}
    gateway.catalog = Catalog(gateway.providers, {"fast": "local/m"})
    gateway.router = Router(gateway.catalog)
    # A socket that listens before the server starts: early requests wait in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(create_app(gateway), log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.ensure_future(uv.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", local
    finally:
        uv.should_exit = True
        await task
        sock.close()


@pytest.fixture
def server(running: tuple[str, MemoryProvider]) -> tuple[str, MemoryProvider]:
    url, local = running
    local.fail = None
    local.bodies.clear()
    return url, local


async def fetch(
    method: str, url: str, data: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=data, headers=headers) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def openai_error(raw: bytes) -> JSON:
    body = orjson.loads(raw)
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: JSON = body["error"]
    return error


async def test_unknown_route(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, headers, raw = await fetch("GET", url + "/v2/nothing")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert openai_error(raw) == {
        "message": "Unknown request URL: GET /v2/nothing.",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }


async def test_wrong_method(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, headers, raw = await fetch("GET", url + "/v1/chat/completions")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert openai_error(raw) == {
        "message": "Method GET is not allowed on /v1/chat/completions.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    status, _, raw = await fetch("DELETE", url + "/v1/models")
    assert status == 405
    assert openai_error(raw)["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_malformed_json(server: tuple[str, MemoryProvider], path: str) -> None:
    url, _ = server
    status, _, raw = await fetch("POST", url + path, b'{"model": "m",')
    assert status == 400
    error = openai_error(raw)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_json",
        None,
    )
    assert error["message"].startswith("We could not parse the JSON body of your request")


@pytest.mark.parametrize("body", [b"", b"  \n"])
async def test_empty_body(server: tuple[str, MemoryProvider], body: bytes) -> None:
    url, _ = server
    status, _, raw = await fetch("POST", url + "/v1/chat/completions", body)
    assert status == 400
    error = openai_error(raw)
    assert error["code"] == "invalid_json"
    assert error["message"] == "The request body is empty; expected a JSON object."


async def test_body_over_the_limit_with_content_length(
    server: tuple[str, MemoryProvider],
) -> None:
    url, local = server
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * LIMIT}]})
    status, _, raw = await fetch("POST", url + "/v1/chat/completions", big)
    assert status == 413
    error = openai_error(raw)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert error["message"] == (
        f"Request body of {len(big)} bytes exceeds the limit of {LIMIT} bytes "
        "(server.max_body_bytes)."
    )
    assert local.bodies == []


async def test_body_over_the_limit_chunked(server: tuple[str, MemoryProvider]) -> None:
    url, local = server

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(4):
            yield b"x" * 400
        yield b'"}]}'

    status, _, raw = await fetch("POST", url + "/v1/chat/completions", body())
    assert status == 413
    error = openai_error(raw)
    assert error["code"] == "request_too_large"
    assert error["message"] == (
        f"Request body exceeds the limit of {LIMIT} bytes (server.max_body_bytes)."
    )
    assert local.bodies == []


async def test_body_just_under_the_limit_is_read(server: tuple[str, MemoryProvider]) -> None:
    url, local = server

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        yield b"x" * 900
        yield b'"}]}'

    status, _, _ = await fetch("POST", url + "/v1/chat/completions", body())
    assert status == 200
    assert local.bodies[0]["messages"][0]["content"] == "x" * 900


async def test_health(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, _, raw = await fetch("GET", url + "/health")
    assert status == 200
    assert orjson.loads(raw) == {
        "status": "ok",
        "version": __version__,
        "providers": ["local", "remote"],
    }


async def test_models(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, _, raw = await fetch("GET", url + "/v1/models")
    assert status == 200
    body = orjson.loads(raw)
    assert body["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [
        ("local/m", "local"),
        ("local/n", "local"),
        ("fast", "local/m"),
    ]
    assert body["data"][0] == {
        "id": "local/m",
        "object": "model",
        "created": 42,
        "owned_by": "local",
    }


async def test_model_found(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, _, raw = await fetch("GET", url + "/v1/models/local/n")
    assert status == 200
    expected = {"id": "local/n", "object": "model", "created": 42, "owned_by": "local"}
    assert orjson.loads(raw) == expected
    status, _, raw = await fetch("GET", url + "/v1/models/n")
    assert status == 200
    assert orjson.loads(raw) == {"id": "n", "object": "model", "created": 0, "owned_by": "local"}


async def test_model_of_a_provider_whose_list_is_unknown(
    server: tuple[str, MemoryProvider],
) -> None:
    url, _ = server
    status, _, raw = await fetch("GET", url + "/v1/models/remote/llama3:8b")
    assert status == 200
    assert orjson.loads(raw)["owned_by"] == "remote"


async def test_model_not_found(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    status, _, raw = await fetch("GET", url + "/v1/models/gpt-9")
    assert status == 404
    error = openai_error(raw)
    assert (error["type"], error["code"], error["param"]) == (
        "not_found_error",
        "model_not_found",
        "model",
    )
    assert "'gpt-9'" in error["message"]
    status, _, raw = await fetch("GET", url + "/v1/models/local/gpt-9")
    assert status == 404
    assert "(it serves: m, n)" in openai_error(raw)["message"]


async def test_chat_completion(server: tuple[str, MemoryProvider]) -> None:
    url, local = server
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}
    status, headers, raw = await fetch("POST", url + "/v1/chat/completions", orjson.dumps(body))
    assert status == 200
    assert headers["X-Turnout-Backend"] == "local"
    reply = orjson.loads(raw)
    assert reply["model"] == "m"
    assert reply["choices"][0]["message"]["content"] == "hi"
    assert local.bodies == [body]


async def test_validation_error_names_the_field(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}
    status, _, raw = await fetch("POST", url + "/v1/chat/completions", orjson.dumps(body))
    assert status == 400
    error = openai_error(raw)
    assert (error["param"], error["code"]) == ("temperature", "invalid_value")


async def test_backend_error_status_and_header(server: tuple[str, MemoryProvider]) -> None:
    url, local = server
    local.fail = BackendUnavailableError("backend 'local' is unreachable", backend="local")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    status, headers, raw = await fetch("POST", url + "/v1/chat/completions", orjson.dumps(body))
    assert status == 502
    assert headers["X-Turnout-Backend"] == "local"
    assert openai_error(raw)["code"] == "backend_unavailable"
    status, _, raw = await fetch(
        "POST", url + "/v1/chat/completions", orjson.dumps({**body, "stream": True})
    )
    assert status == 502
    assert openai_error(raw)["code"] == "backend_unavailable"


async def test_chat_stream(server: tuple[str, MemoryProvider]) -> None:
    url, _ = server
    body = {"model": "local/m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, raw = await fetch("POST", url + "/v1/chat/completions", orjson.dumps(body))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["X-Turnout-Backend"] == "local"
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    deltas = [orjson.loads(f.removeprefix(b"data: "))["choices"][0]["delta"] for f in frames[:2]]
    assert deltas == [{"content": "he"}, {"content": "llo"}]
    assert len(frames) == 4
