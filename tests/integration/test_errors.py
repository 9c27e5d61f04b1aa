"""Bad input and failing backends, over raw HTTP: every answer is a clear OpenAI-shaped error with
the right status, type, code and ``param``, never a 500 and never a hang.

One gateway serves the module: the embedded engine (``local``), a provider on a closed port
(``down``, listed first for ``gemma-3-270m`` so a bare name falls back past it), and providers on a
server that accepts connections and never answers (``silent``, ``timeout: 0.5``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support import client
from tests.support.checks import check_error
from tests.support.servers import free_port, run_gateway, run_silent_server

pytestmark = pytest.mark.slow

LIMIT = 4096
MODEL = "local/gemma-3-270m"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    closed = f"http://127.0.0.1:{free_port()}"
    with run_silent_server() as silent:
        config = {
            "server": {"max_body_bytes": LIMIT},
            "providers": {
                "down": {
                    "type": "openai",
                    "endpoint": closed,
                    "models": ["gemma-3-270m", "only-down"],
                    "max_retries": 0,
                },
                "local": {"type": "embedded"},
                "retrying": {"type": "openai", "endpoint": closed, "models": ["retry-down"]},
                "silent": {
                    "type": "openai",
                    "endpoint": silent,
                    "models": ["hang"],
                    "timeout": 0.5,
                    "max_retries": 0,
                },
                "silent2": {
                    "type": "openai",
                    "endpoint": silent,
                    "models": ["hang-retry"],
                    "timeout": 0.5,
                    "max_retries": 1,
                },
            },
        }
        with run_gateway(config) as url:
            yield url


def _error(reply: client.Reply, status: int, **expected: Any) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    return check_error(reply.json(), **expected)


# Malformed bodies.

BAD_JSON = [
    pytest.param(b'{"model": "local/gemma-3-270m", "messages": [', "invalid_json", id="truncated"),
    pytest.param(b"model=gemma&messages=hi", "invalid_json", id="form-encoded"),
    pytest.param(b"", "invalid_json", id="empty"),
    pytest.param(b"  \n ", "invalid_json", id="blank"),
    pytest.param(b'\xff\xfe{"model": 1}', "invalid_json", id="not-utf8"),
    pytest.param(b'{"model": "x",}', "invalid_json", id="trailing-comma"),
    pytest.param(b'{"messages": ' + b"[" * 1100 + b"]" * 1100 + b"}", "invalid_json", id="deep"),
    pytest.param(b"[]", "invalid_request_body", id="array"),
    pytest.param(b'"hello"', "invalid_request_body", id="string"),
    pytest.param(b"null", "invalid_request_body", id="null"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize(("raw", "code"), BAD_JSON)
async def test_malformed_body_is_a_400(gateway: str, path: str, raw: bytes, code: str) -> None:
    reply = await client.post(gateway + path, raw)
    error = _error(reply, 400, type="invalid_request_error", code=code, param=None)
    assert "JSON" in error["message"]


# Missing and mistyped fields: the error names the field.

USAGE = {"include_usage": True}  # without "stream": true
XML = {"type": "xml"}
CHAT_FIELDS = [
    ({"messages": HI}, "model", "missing_required_parameter"),
    ({"model": MODEL}, "messages", "missing_required_parameter"),
    ({"model": MODEL, "messages": None}, "messages", "missing_required_parameter"),
    ({"model": 5, "messages": HI}, "model", "invalid_value"),
    ({"model": "", "messages": HI}, "model", "invalid_value"),
    ({"model": MODEL, "messages": "Hi"}, "messages", "invalid_value"),
    ({"model": MODEL, "messages": []}, "messages", "invalid_value"),
    ({"model": MODEL, "messages": ["Hi"]}, "messages[0]", "invalid_value"),
    ({"model": MODEL, "messages": [{"content": "Hi"}]}, "messages[0].role", "invalid_value"),
    ({"model": MODEL, "messages": [{"role": "bot", "content": "Hi"}]}, "messages[0].role", None),
    ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content", None),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    (
        {"model": MODEL, "messages": [*HI, {"role": "user", "content": [{"type": "text"}]}]},
        "messages[1].content[0].text",
        None,
    ),
    ({"model": MODEL, "messages": HI, "max_tokens": "8"}, "max_tokens", None),
    ({"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens", None),
    ({"model": MODEL, "messages": HI, "max_tokens": 2.5}, "max_tokens", None),
    ({"model": MODEL, "messages": HI, "max_completion_tokens": -1}, "max_completion_tokens", None),
    ({"model": MODEL, "messages": HI, "temperature": 3}, "temperature", None),
    ({"model": MODEL, "messages": HI, "temperature": "hot"}, "temperature", None),
    ({"model": MODEL, "messages": HI, "top_p": True}, "top_p", None),
    ({"model": MODEL, "messages": HI, "n": 0}, "n", None),
    ({"model": MODEL, "messages": HI, "stream": "yes"}, "stream", None),
    ({"model": MODEL, "messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"model": MODEL, "messages": HI, "stop": 7}, "stop", None),
    ({"model": MODEL, "messages": HI, "stream_options": USAGE}, "stream_options", None),
    ({"model": MODEL, "messages": HI, "tools": "search"}, "tools", None),
    ({"model": MODEL, "messages": HI, "tool_choice": "sometimes"}, "tool_choice", None),
    ({"model": MODEL, "messages": HI, "response_format": XML}, "response_format.type", None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param", "code"), CHAT_FIELDS)
async def test_invalid_chat_field_is_a_400_naming_it(
    gateway: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    reply = await client.post(gateway + "/v1/chat/completions", body)
    error = _error(
        reply, 400, type="invalid_request_error", code=code or "invalid_value", param=param
    )
    assert param.split("[")[0].split(".")[0] in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/completions", {"model": MODEL}, "prompt", "missing_required_parameter"),
        ("/v1/completions", {"model": MODEL, "prompt": 5}, "prompt", "invalid_value"),
        ("/v1/completions", {"model": MODEL, "prompt": []}, "prompt", "invalid_value"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "echo": "no"}, "echo", "invalid_value"),
        ("/v1/embeddings", {"model": MODEL}, "input", "missing_required_parameter"),
        ("/v1/embeddings", {"model": MODEL, "input": 5}, "input", "invalid_value"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, "input", "invalid_value"),
        ("/v1/embeddings", {"model": MODEL, "input": ["a", 1.5]}, "input", "invalid_value"),
        (
            "/v1/embeddings",
            {"model": MODEL, "input": "a", "encoding_format": "hex"},
            "encoding_format",
            "invalid_value",
        ),
    ],
)
async def test_invalid_completion_and_embedding_fields(
    gateway: str, path: str, body: dict[str, Any], param: str, code: str
) -> None:
    reply = await client.post(gateway + path, body)
    _error(reply, 400, type="invalid_request_error", code=code, param=param)


async def test_what_the_engine_cannot_do_is_a_400_naming_the_part(gateway: str) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]
    reply = await client.post(
        gateway + "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 4}
    )
    _error(
        reply,
        400,
        type="invalid_request_error",
        code="unsupported_capability",
        param="messages[0].content[1]",
    )


# Unknown models and routes.


@pytest.mark.parametrize("model", ["no-such-model", "local/no-such-model", "nope/gemma-3-270m"])
@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_a_404(gateway: str, model: str, stream: bool) -> None:
    body = {"model": model, "messages": HI, "max_tokens": 4, "stream": stream}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    error = _error(reply, 404, type="not_found_error", code="model_not_found", param="model")
    assert model.rsplit("/", 1)[-1] in error["message"]


async def test_unknown_embedding_model_is_a_404(gateway: str) -> None:
    reply = await client.post(gateway + "/v1/embeddings", {"model": "no-such-model", "input": "a"})
    _error(reply, 404, type="not_found_error", code="model_not_found", param="model")


async def test_unknown_model_lookup_is_a_404(gateway: str) -> None:
    reply = await client.get(gateway + "/v1/models/local/no-such-model")
    _error(reply, 404, type="not_found_error", code="model_not_found", param="model")


async def test_unknown_route_and_wrong_method(gateway: str) -> None:
    reply = await client.post(gateway + "/v1/chat/completion", {"model": MODEL, "messages": HI})
    _error(reply, 404, type="not_found_error", code="not_found")
    reply = await client.get(gateway + "/v1/chat/completions")
    _error(reply, 405, type="invalid_request_error", code="method_not_allowed")


# Body size limit (server.max_body_bytes).


def _padded(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes."""
    message = {"role": "user", "content": ""}
    shell = {"model": MODEL, "max_tokens": 2, "messages": [message]}
    message["content"] = "x" * (size - len(json.dumps(shell).encode()))
    raw = json.dumps(shell).encode()
    assert len(raw) == size
    return raw


async def test_body_at_the_limit_is_served(gateway: str) -> None:
    reply = await client.post(gateway + "/v1/chat/completions", _padded(LIMIT))
    assert reply.status == 200, reply.body


@pytest.mark.parametrize("size", [LIMIT + 1, 64 * 1024])
async def test_oversized_body_is_a_413(gateway: str, size: int) -> None:
    reply = await client.post(gateway + "/v1/chat/completions", _padded(size))
    error = _error(reply, 413, type="invalid_request_error", code="request_too_large", param=None)
    assert str(LIMIT) in error["message"] and "max_body_bytes" in error["message"]


async def test_oversized_chunked_body_is_a_413(gateway: str) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    raw = _padded(3 * LIMIT)

    async def pieces() -> Any:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    async with (
        aiohttp.ClientSession(timeout=client.TIMEOUT) as session,
        session.post(
            gateway + "/v1/chat/completions",
            data=pieces(),
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert resp.status == 413
        check_error(
            await resp.json(), type="invalid_request_error", code="request_too_large", param=None
        )


# Failing backends.


@pytest.mark.parametrize("stream", [False, True])
async def test_backend_down_is_a_502(gateway: str, stream: bool) -> None:
    body = {"model": "only-down", "messages": HI, "max_tokens": 4, "stream": stream}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    error = _error(reply, 502, type="backend_error", code="backend_unavailable", param=None)
    assert reply.headers["X-Turnout-Backend"] == "down"
    assert "'down'" in error["message"] and "unreachable" in error["message"]
    assert reply.elapsed < 5


async def test_backend_down_after_retries_is_still_a_502(gateway: str) -> None:
    body = {"model": "retry-down", "messages": HI, "max_tokens": 4}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    _error(reply, 502, type="backend_error", code="backend_unavailable", param=None)
    assert reply.headers["X-Turnout-Backend"] == "retrying"
    assert reply.elapsed < 10


async def test_a_bare_name_falls_back_past_a_dead_backend(gateway: str) -> None:
    body = {"model": "gemma-3-270m", "messages": HI, "max_tokens": 4}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    assert reply.headers["X-Turnout-Backend"] == "local"


@pytest.mark.parametrize("stream", [False, True])
async def test_backend_that_never_answers_is_a_504(gateway: str, stream: bool) -> None:
    body = {"model": "hang", "messages": HI, "max_tokens": 4, "stream": stream}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    error = _error(reply, 504, type="timeout", code="backend_timeout", param=None)
    assert reply.headers["X-Turnout-Backend"] == "silent"
    assert "0.5s" in error["message"]
    assert 0.4 < reply.elapsed < 5


async def test_a_timeout_is_a_504_not_retried_on_the_same_backend(gateway: str) -> None:
    # max_retries: 1, but a stalled backend is not asked again by default (retry_on has no
    # "timeout"): the client waits one timeout, not two
    body = {"model": "hang-retry", "messages": HI, "max_tokens": 4}
    reply = await client.post(gateway + "/v1/chat/completions", body)
    _error(reply, 504, type="timeout", code="backend_timeout", param=None)
    assert 0.4 < reply.elapsed < 0.9  # one attempt of 0.5 s
