"""The Anthropic dialect's translations, both ways, held against Anthropic's documented examples in
tests/fixtures/anthropic/ (its README says where each shape comes from). Every OpenAI shape
turnout produces is also validated against OpenAI's OpenAPI schemas. No network: streams are fed
to the SSE decoder split at arbitrary bytes, then to `AnthropicStream`.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.support.openapi import assert_valid
from turnout.config import ProviderConfig, load_config
from turnout.errors import (
    BackendError,
    BackendRateLimitedError,
    BackendUnavailableError,
    CapabilityError,
    ConfigError,
    InvalidRequestError,
)
from turnout.providers import build_provider
from turnout.providers.anthropic import VERSION, AnthropicProvider, reset_wait
from turnout.providers.anthropic_translate import AnthropicStream, from_anthropic, to_anthropic
from turnout.routing import Catalog, Router
from turnout.wire.sse import SSEDecoder
from turnout.wire.types import Call, needs
from turnout.wire.validate import validate_chat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-5-20250929"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def cases(name: str) -> list[Any]:
    return [pytest.param(case, id=case["case"][:60]) for case in load(name)]


def provider(**settings: Any) -> AnthropicProvider:
    config = ProviderConfig(type="anthropic", api_key="sk-ant-test", **settings)
    made = build_provider("claude", config)
    assert isinstance(made, AnthropicProvider)
    return made


# Requests: OpenAI in, Anthropic out.


@pytest.mark.parametrize("case", cases("requests.json"))
def test_request(case: dict[str, Any]) -> None:
    body = validate_chat(copy.deepcopy(case["openai"]))
    before = copy.deepcopy(body)
    assert to_anthropic(body, MODEL, stream=bool(case.get("stream"))) == case["anthropic"]
    assert body == before, "the client's body must not be modified"


def test_default_max_tokens_is_configurable() -> None:
    claude = provider(default_max_tokens=512)
    body = validate_chat({"model": "c", "messages": [{"role": "user", "content": "Hi"}]})
    assert claude._payload(Call("chat", body, MODEL), False)["max_tokens"] == 512
    assert provider()._payload(Call("chat", body, MODEL), False)["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("fields", "param", "kind"),
    [
        ({"temperature": 1.5}, "temperature", InvalidRequestError),
        ({"n": 2}, "n", CapabilityError),
        ({"logprobs": True}, "logprobs", CapabilityError),
        ({"response_format": {"type": "json_object"}}, "response_format", CapabilityError),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
            CapabilityError,
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/bmp;base64,Qk0="},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            CapabilityError,
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            CapabilityError,
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            InvalidRequestError,
        ),
    ],
)
def test_what_anthropic_cannot_take_is_a_400_naming_the_field(
    fields: dict[str, Any], param: str, kind: type[Exception]
) -> None:
    body = validate_chat({"model": "c", "messages": [{"role": "user", "content": "Hi"}], **fields})
    with pytest.raises(kind) as info:
        to_anthropic(body, MODEL)
    assert getattr(info.value, "param", None) == param
    assert getattr(info.value, "status", None) == 400


async def test_embeddings_and_completions_are_refused_and_declared_missing() -> None:
    claude = provider()
    caps = claude.capabilities(MODEL)
    assert caps.lacks(needs("embedding", {"input": "x"})) == ["embeddings"]
    assert caps.lacks(needs("completion", {"prompt": "x"})) == ["completion"]
    assert caps.vision and caps.tools and not caps.json_schema
    router = Router(Catalog({"c": claude}, {}))  # decides before it calls; the dialect words it
    with pytest.raises(CapabilityError, match="no embeddings API") as info:
        await router.complete("embedding", {"model": f"c/{MODEL}", "input": "x"})
    assert info.value.status == 400 and info.value.param == "model"
    with pytest.raises(CapabilityError, match="no text completion") as info:
        await router.complete("completion", {"model": f"c/{MODEL}", "prompt": "x"})
    assert info.value.param == "prompt"


# Replies: Anthropic in, OpenAI out.


@pytest.mark.parametrize("case", cases("responses.json"))
def test_response(case: dict[str, Any]) -> None:
    before = int(time.time())
    result = from_anthropic(case["anthropic"], "asked-model")
    assert before <= result.pop("created") <= int(time.time())
    assert result == case["openai"]
    assert_valid({**result, "created": before}, "CreateChatCompletionResponse")


def _events(name: str, seed: int) -> list[dict[str, Any]]:
    raw = (FIXTURES / name).read_bytes()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), 25))
    decoder = SSEDecoder()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        events += decoder.feed(raw[start:end])
    events += decoder.close()
    for event in events:  # the event name and the JSON "type" agree, as documented
        assert json.loads(event.data)["type"] == event.event
    return [json.loads(e.data) for e in events]


@pytest.mark.parametrize("name", ["stream_text", "stream_tools"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream(name: str, seed: int) -> None:
    expected = load(f"{name}.openai.json")
    translator = AnthropicStream("asked-model", "claude")
    chunks: list[dict[str, Any]] = []
    for obj in _events(f"{name}.sse", seed):
        chunks += translator.feed(obj)
    assert translator.done
    created = chunks[0]["created"]
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        head = (chunk.pop("id"), chunk.pop("object"), chunk.pop("created"), chunk.pop("model"))
        assert head == (expected["id"], "chat.completion.chunk", created, expected["model"])
    assert chunks == expected["chunks"]
    calls: dict[int, str] = {}
    for chunk in chunks:  # what a client reassembles: arguments that parse
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or ():
                calls[call["index"]] = calls.get(call["index"], "") + call["function"]["arguments"]
    assert all(json.loads(args) for args in calls.values())


def test_error_right_after_message_start_sends_nothing_first() -> None:
    translator = AnthropicStream("m", "claude")
    start, error = _events("stream_error.sse", 0)
    assert translator.feed(start) == [], "nothing goes out before content, so a retry is possible"
    with pytest.raises(
        BackendUnavailableError, match=r"failed mid-stream \(overloaded_error\): Overloaded"
    ):
        translator.feed(error)


@pytest.mark.parametrize(
    ("kind", "error"),
    [("rate_limit_error", BackendRateLimitedError), ("api_error", BackendError)],
)
def test_other_stream_errors(kind: str, error: type[BackendError]) -> None:
    with pytest.raises(error) as info:
        AnthropicStream("m", "claude").feed(
            {"type": "error", "error": {"type": kind, "message": "x"}}
        )
    assert info.value.backend == "claude"


def test_unknown_events_and_deltas_are_ignored() -> None:
    translator = AnthropicStream("m", "claude")
    assert translator.feed({"type": "ping"}) == []
    assert (
        translator.feed(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            }
        )
        == []
    )
    delta = {"type": "signature_delta", "signature": "EqQB"}
    assert translator.feed({"type": "content_block_delta", "index": 0, "delta": delta}) == []
    (chunk,) = translator.feed(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm"},
        }
    )
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "Hmm"}


# Errors and headers.


@pytest.mark.parametrize("case", cases("errors.json"))
def test_error_reply(case: dict[str, Any]) -> None:
    error = provider().error_from_reply(
        case["status"], json.dumps(case["body"]).encode(), CIMultiDict(case["headers"])
    )
    expect = case["expect"]
    assert (error.status, error.type, error.code) == (
        expect["status"],
        expect["type"],
        expect["code"],
    )
    assert (error.retryable, error.fallback) == (expect["retryable"], expect["fallback"])
    assert error.retry_after == expect["retry_after"]
    assert expect["message_has"] in error.message
    assert "claude" in error.message, "every error names the backend"
    assert_valid(error.to_openai(), "ErrorResponse")


def test_rate_limit_reset_headers_give_the_wait_without_retry_after() -> None:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    headers = CIMultiDict(
        {
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": reset,
            "anthropic-ratelimit-requests-remaining": "10",
            "anthropic-ratelimit-requests-reset": "2020-01-01T00:00:00Z",
        }
    )
    wait = reset_wait(headers)
    assert wait is not None and 28 <= wait <= 30
    assert reset_wait(CIMultiDict({"anthropic-ratelimit-tokens-remaining": "5"})) is None
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    error = provider().error_from_reply(429, body, headers)
    assert error.retry_after is not None and 28 <= error.retry_after <= 30


def test_request_headers() -> None:
    headers = provider(headers={"anthropic-beta": "prompt-caching-2024-07-31"}).request_headers()
    assert headers == {
        "Content-Type": "application/json",
        "anthropic-version": VERSION,
        "anthropic-beta": "prompt-caching-2024-07-31",
        "x-api-key": "sk-ant-test",
    }
    assert "Authorization" not in headers
    own = provider(headers={"X-Api-Key": "from-proxy"}).request_headers()
    assert [k for k in own if k.lower() == "x-api-key"] == ["X-Api-Key"]


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        (None, "https://api.anthropic.com"),
        ("https://api.anthropic.com/v1", "https://api.anthropic.com"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
    ],
)
def test_endpoint(endpoint: str | None, base: str) -> None:
    assert provider(endpoint=endpoint).base_url == base


def test_api_key_is_required_at_start_up() -> None:
    with pytest.raises(
        ConfigError, match=r"providers\.claude\.api_key: required for type 'anthropic'"
    ):
        load_config({"providers": {"claude": {"type": "anthropic"}}}, environ={})
    ok = load_config(
        {"providers": {"claude": {"type": "anthropic"}}},
        environ={"TURNOUT_PROVIDERS__CLAUDE__API_KEY": "k"},
    )
    assert ok.providers["claude"].api_key == "k"
    off = load_config(
        {"providers": {"claude": {"type": "anthropic", "enabled": False}}}, environ={}
    )
    assert not off.providers["claude"].enabled
