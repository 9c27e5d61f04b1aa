"""Passthrough, end to end: a client whose backend speaks its dialect is relayed, not translated.

The official ``anthropic`` SDK, unchanged, against turnout over real HTTP in front of llama.cpp's
own ``llama-server``, which serves Anthropic's Messages API at ``/v1/messages`` itself. Relayed,
the client gets the backend's own bytes: llama-server's message ids (``chatcmpl-...``, where
turnout's translator writes ``msg_...``), its model name, its usage without the
``cache_creation_input_tokens`` the translator always writes, and turnout's
``X-Turnout-Passthrough: 1``. The same server behind a provider of the generic ``openai`` type
(which declares no Messages route) and behind one with ``passthrough: false`` is translated as
before; a route whose first target is down falls back to a translated one. Every relayed
request is still counted in ``/stats``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.contract.conftest import run_llama_server
from tests.support.dialects import check_anthropic_message, check_anthropic_stream, sse_events
from tests.support.servers import free_port, run_gateway

ASK: list[Any] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def gateway(llama_server_binary: Path, gemma_path: Path) -> Iterator[str]:
    """turnout in front of one llama-server, as four providers: ``cpp`` (preset ``llamacpp``:
    Messages served natively), ``plain`` (type ``openai``: no native dialect), ``off``
    (``llamacpp`` with ``passthrough: false``) and ``dead`` (``llamacpp``, nothing listening)."""
    with run_llama_server(llama_server_binary, gemma_path) as url:
        dead = f"http://127.0.0.1:{free_port()}"
        config = {
            "providers": {
                "cpp": {"type": "llamacpp", "endpoint": url},
                "plain": {"type": "openai", "endpoint": url, "models": ["gemma-3-270m"]},
                "off": {"type": "llamacpp", "endpoint": url, "passthrough": False},
                "dead": {"type": "llamacpp", "endpoint": dead, "models": ["gemma-3-270m"],
                         "max_retries": 0},
            },
            "routes": {
                "fallback": {"targets": [{"provider": "dead", "model": "gemma-3-270m"},
                                         {"provider": "plain", "model": "gemma-3-270m"}]},
            },
            "health": {"enabled": False},
        }  # fmt: skip
        with run_gateway(config) as base:
            yield base


def _client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=120)


def _tokens(url: str, backend: str) -> tuple[int, int]:
    stats = httpx.get(url + "/stats", timeout=10).json()["backends"][backend]
    return stats["tokens_in"], stats["tokens_out"]


def test_create_is_relayed_with_the_backends_own_bytes(gateway: str) -> None:
    before = _tokens(gateway, "cpp")
    raw = _client(gateway).messages.with_raw_response.create(
        model="cpp/gemma-3-270m", max_tokens=8, messages=ASK
    )
    assert raw.headers["x-turnout-passthrough"] == "1"
    assert raw.headers["x-turnout-backend"] == "cpp"
    body = raw.http_response.json()
    check_anthropic_message(body)
    # llama-server's own message: its id, its model name, its usage fields
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gemma-3-270m"
    assert "cache_creation_input_tokens" not in body["usage"]
    message = raw.parse()
    assert message.usage.output_tokens > 0
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    after = _tokens(gateway, "cpp")
    assert after == (before[0] + prompt, before[1] + message.usage.output_tokens)


def test_stream_is_relayed_event_by_event(gateway: str) -> None:
    before = _tokens(gateway, "cpp")
    with httpx.stream(
        "POST",
        gateway + "/v1/messages",
        json={"model": "cpp/gemma-3-270m", "max_tokens": 8, "messages": ASK, "stream": True},
        timeout=120,
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-turnout-passthrough"] == "1"
        events = sse_events(reply.read())
    check_anthropic_stream(events)
    start = events[0][1]["message"]
    assert start["id"].startswith("chatcmpl-") and start["model"] == "gemma-3-270m"
    # the SDK's stream helpers over the same relay
    with _client(gateway).messages.stream(
        model="cpp/gemma-3-270m", max_tokens=8, messages=ASK
    ) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert text and final.stop_reason in ("end_turn", "max_tokens")
    assert final.id.startswith("chatcmpl-")
    usage = [e[1]["usage"] for e in events if e[0] == "message_delta"][-1]
    spent_in = (
        start["usage"]["input_tokens"]
        + start["usage"].get("cache_read_input_tokens", 0)
        + final.usage.input_tokens
        + (final.usage.cache_read_input_tokens or 0)
    )
    after = _tokens(gateway, "cpp")
    assert after == (
        before[0] + spent_in,
        before[1] + usage["output_tokens"] + final.usage.output_tokens,
    )


@pytest.mark.parametrize("model", ["plain/gemma-3-270m", "off/gemma-3-270m", "fallback"])
def test_translated_where_passthrough_does_not_apply(gateway: str, model: str) -> None:
    """No Messages route declared (``plain``), passthrough off (``off``), and a route whose
    first target (declaring it) is down, falling back to one that does not: translated."""
    client = _client(gateway)
    raw = client.messages.with_raw_response.create(model=model, max_tokens=8, messages=ASK)
    assert "x-turnout-passthrough" not in raw.headers
    body = raw.http_response.json()
    check_anthropic_message(body)
    assert body["id"].startswith("msg_") and body["model"] == model
    assert "cache_creation_input_tokens" in body["usage"]
    with client.messages.stream(model=model, max_tokens=8, messages=ASK) as stream:
        assert stream.get_final_message().id.startswith("msg_")


def test_backend_errors_reach_the_client_in_its_dialect_without_the_address(
    gateway: str,
) -> None:
    """llama-server refuses a prompt longer than its context: relayed as an Anthropic error
    of turnout's making (the message cleaned, the backend named, not its address)."""
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        _client(gateway).messages.create(model="cpp/gemma-3-270m", max_tokens=8, messages=long)
    error = caught.value.response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "cpp" in error["error"]["message"] and "127.0.0.1" not in caught.value.response.text


def test_tools_to_a_server_without_jinja_are_translated_after_all(gateway: str) -> None:
    """This llama-server runs ``--no-jinja``: its /v1/messages refuses tools ("tools param
    requires --jinja flag"). turnout learns it, asks again translated (the tools held to a JSON
    schema by turnout) and answers the call; later requests with tools are translated at once,
    those without still relayed."""
    tool = {"name": "get_weather", "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}  # fmt: skip
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    client = _client(gateway)
    for _ in range(2):
        raw = client.messages.with_raw_response.create(
            model="cpp/gemma-3-270m", max_tokens=48, messages=ask, tools=[tool],
            tool_choice={"type": "tool", "name": "get_weather"},
        )  # fmt: skip
        assert "x-turnout-passthrough" not in raw.headers
        message = raw.parse()
        assert message.stop_reason == "tool_use"
        use = next(b for b in message.content if b.type == "tool_use")
        assert use.name == "get_weather" and isinstance(use.input, dict)
    plain = client.messages.with_raw_response.create(
        model="cpp/gemma-3-270m", max_tokens=4, messages=ASK
    )
    assert plain.headers["x-turnout-passthrough"] == "1"
