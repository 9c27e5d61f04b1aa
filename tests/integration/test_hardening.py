"""Attacks a hostile client can make through turnout's request path, each performed and shown
refused with the status and message a legitimate client would need (issue 13).

The backend is an aiohttp app on loopback that behaves as a careless OpenAI-compatible server:
its error replies echo the request's headers (as some runtimes' debug modes do), and its chat
endpoint records what it was sent, so the tests can see what reached it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.support import client
from tests.support.aioserver import serve_app
from tests.support.servers import run_gateway

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
INTERNAL = "internal-token-abcdef987654"
SEEN: list[dict[str, Any]] = []


def _careless_backend() -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        SEEN.append(body)
        if body.get("messages", [{}])[0].get("content") == "echo":
            headers = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
            return web.json_response(
                {"error": {"message": f"bad request, got {headers}"}}, status=400
            )
        if body.get("messages", [{}])[0].get("content") == "crash":
            return web.json_response(
                {"error": f"internal failure with {headers_of(request)}"}, status=500
            )
        return web.json_response(
            {
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )  # fmt: skip

    def headers_of(request: web.Request) -> str:
        return " ".join(f"{k}={v}" for k, v in request.headers.items())

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with serve_app(_careless_backend(), "careless") as (upstream,):
        cfg = {
            "providers": {
                "up": {
                    "type": "openai", "endpoint": upstream, "api_key": UPSTREAM_KEY,
                    "headers": {"X-Internal-Token": INTERNAL}, "max_retries": 0,
                    "models": [{"name": "m", "supports_vision": True}],
                }
            },
            "health": {"enabled": False},
        }  # fmt: skip
        with run_gateway(cfg, environ={}) as url:
            yield url


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "up/m", "messages": [{"role": "user", "content": content}], **extra}


def image(url: str) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]


async def test_an_upstream_error_that_echoes_headers_leaks_no_secret(
    gateway: str, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await client.post(gateway + "/v1/chat/completions", chat("echo"))
    assert reply.status == 400
    text = reply.body.decode()
    assert "rejected the request" in text and "up" in text
    assert UPSTREAM_KEY not in text and INTERNAL not in text
    assert "[redacted]" in text


async def test_a_backend_failure_names_the_backend_not_its_address(gateway: str) -> None:
    reply = await client.post(gateway + "/v1/chat/completions", chat("crash"))
    assert reply.status == 502
    message = reply.json()["error"]["message"]
    assert "backend 'up'" in message
    assert "backend 'up' failed (HTTP 500): internal failure with" in message
    assert "Host=<up>" in message  # the backend's address echoed back: replaced by its name
    assert "127.0.0.1" not in message and UPSTREAM_KEY not in message and INTERNAL not in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "scheme 'http:'"),
        ("file:///etc/shadow", "scheme 'file:'"),
        ("https://169.254.169.254/latest/meta-data/", "local or private address"),
        ("https://127.0.0.1:8400/stats", "local or private address"),
        ("https://[::ffff:10.0.0.5]/x.png", "local or private address"),
        ("https://localhost/x.png", "local or private address"),
        ("gopher://example.com/x", "a data: URI"),  # refused by validation already
    ],
)
async def test_image_urls_a_backend_would_fetch_from_inside_are_refused(
    gateway: str, url: str, why: str
) -> None:
    before = len(SEEN)
    reply = await client.post(gateway + "/v1/chat/completions", chat(image(url)))
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert why in error["message"]
    assert len(SEEN) == before, "nothing reached the backend"


async def test_public_https_and_data_images_pass(gateway: str) -> None:
    for url in ("https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="):
        reply = await client.post(gateway + "/v1/chat/completions", chat(image(url)))
        assert reply.status == 200, reply.body
        assert SEEN[-1]["messages"][0]["content"][1]["image_url"]["url"] == url


@pytest.mark.parametrize("field", ["api_base", "base_url", "extra_headers", "api_key"])
async def test_fields_that_would_redirect_a_backend_are_refused(gateway: str, field: str) -> None:
    before = len(SEEN)
    body = chat("hi", **{field: "http://10.0.0.5:8000" if field != "extra_headers" else {"X": "1"}})
    reply = await client.post(gateway + "/v1/chat/completions", body)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["param"] == field and error["code"] == "forbidden_parameter"
    assert len(SEEN) == before


async def test_keep_alive_from_a_request_can_neither_unload_nor_pin(gateway: str) -> None:
    for asked, kept in ((0, 60.0), (-1, 3600.0), ("5m", 300.0), ("1000h", 3600.0)):
        reply = await client.post(gateway + "/v1/chat/completions", chat("hi", keep_alive=asked))
        assert reply.status == 200, reply.body
        assert SEEN[-1]["keep_alive"] == kept, asked


@pytest.mark.parametrize("bad", [[], {}, ["user"]])
async def test_unhashable_role_or_part_type_is_a_400(gateway: str, bad: Any) -> None:
    role = {"model": "up/m", "messages": [{"role": bad, "content": "x"}]}
    reply = await client.post(gateway + "/v1/chat/completions", role)
    assert reply.status == 400 and reply.json()["error"]["param"] == "messages[0].role"
    part = chat([{"type": bad, "text": "x"}])
    reply = await client.post(gateway + "/v1/chat/completions", part)
    assert reply.status == 400 and reply.json()["error"]["param"] == "messages[0].content[0].type"


@pytest.mark.parametrize("depth", [200, 300, 1000])
async def test_deeply_nested_json_is_a_400_naming_the_field(gateway: str, depth: int) -> None:
    raw = b'{"model": "up/m", "messages": [{"role": "user", "content": "hi"}], "x": '
    raw += b"[" * depth + b"]" * depth + b"}"
    reply = await client.post(gateway + "/v1/chat/completions", raw)
    if depth < 250:
        assert reply.status == 200, reply.body  # deep, but encodable: it is the backend's business
        return
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] is None or error["param"].startswith("x")
    assert "Traceback" not in reply.body.decode()


async def test_deep_tool_schemas_are_refused_before_any_backend(gateway: str) -> None:
    schema: dict[str, Any] = {"type": "object"}
    node = schema
    for _ in range(80):
        node["properties"] = {"a": {"type": "object"}}
        node = node["properties"]["a"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    reply = await client.post(gateway + "/v1/chat/completions", chat("hi", tools=tools))
    assert reply.status == 400
    assert reply.json()["error"]["param"].startswith("tools[0].function.parameters.properties")


def test_secrets_are_redacted_from_logs() -> None:
    from turnout.errors import RedactingFilter, redact, register_secrets

    register_secrets(["s3cr3t-value-xyz"])
    record = logging.LogRecord(
        "turnout", logging.ERROR, __file__, 1, "upstream said %s", ("s3cr3t-value-xyz",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "upstream said [redacted]"
    assert redact("Authorization: Bearer abcdefghijklmnop") == "Authorization: Bearer [redacted]"
    assert redact('{"api_key": "zzzzzzzzzz"}') == '{"api_key": "[redacted]"}'
    assert redact("http://user:pa55word@host/x") == "http://user:[redacted]@host/x"
