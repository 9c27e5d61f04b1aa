"""The Gemini dialect's translations, both ways, held against Google's documented examples in
tests/fixtures/gemini/ (its README says where each shape comes from). Every OpenAI shape turnout
produces is also validated against OpenAI's OpenAPI schemas. No network: streams are fed to the
SSE decoder split at arbitrary bytes, then to `GeminiStream`.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.support.openapi import assert_valid
from turnout.config import ProviderConfig, load_config
from turnout.errors import (
    BackendUnavailableError,
    CapabilityError,
    ConfigError,
    InvalidRequestError,
)
from turnout.providers import build_provider
from turnout.providers.gemini import GeminiProvider, from_gemini_embed, retry_delay, to_gemini_embed
from turnout.providers.gemini_translate import GeminiStream, from_gemini, gemini_schema, to_gemini
from turnout.routing import Catalog, Router
from turnout.wire.sse import SSEDecoder
from turnout.wire.types import needs
from turnout.wire.validate import validate_chat, validate_embedding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gemini"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def cases(name: str) -> list[Any]:
    return [pytest.param(case, id=case["case"][:60]) for case in load(name)]


def provider(**settings: Any) -> GeminiProvider:
    made = build_provider("gem", ProviderConfig(type="gemini", api_key="AIza-test", **settings))
    assert isinstance(made, GeminiProvider)
    return made


def adopt_generated_ids(actual: Any, expected: Any) -> None:
    """Where a fixture says ``"<generated>"``, check the id turnout made up, then adopt it."""
    if isinstance(expected, dict):
        if expected.get("id") == "<generated>":
            assert re.fullmatch(r"call_[0-9a-f]{24}", actual["id"]), actual["id"]
            expected["id"] = actual["id"]
        for key, value in expected.items():
            if isinstance(actual, dict) and key in actual:
                adopt_generated_ids(actual[key], value)
    elif isinstance(expected, list) and isinstance(actual, list):
        for a, e in zip(actual, expected, strict=False):
            adopt_generated_ids(a, e)


# Requests: OpenAI in, Gemini out.


@pytest.mark.parametrize("case", cases("requests.json"))
def test_request(case: dict[str, Any]) -> None:
    body = validate_chat(copy.deepcopy(case["openai"]))
    before = copy.deepcopy(body)
    assert to_gemini(body) == case["gemini"]
    assert body == before, "the client's body must not be modified"


@pytest.mark.parametrize(
    ("fields", "param", "kind"),
    [
        ({"logprobs": True}, "logprobs", CapabilityError),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/cat.png"},
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
                    {"role": "user", "content": "x"},
                    {"role": "tool", "tool_call_id": "nobody", "content": "1"},
                ]
            },
            "messages[1].tool_call_id",
            InvalidRequestError,
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"$ref": "https://x/y.json"}},
                            },
                        },
                    }
                ],
            },
            "tools[0].function.parameters",
            InvalidRequestError,
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"node": {"$ref": "#/$defs/Node"}},
                                "$defs": {
                                    "Node": {
                                        "type": "object",
                                        "properties": {"next": {"$ref": "#/$defs/Node"}},
                                    }
                                },
                            },
                        },
                    }
                ],
            },
            "tools[0].function.parameters",
            CapabilityError,
        ),
    ],
)
def test_what_gemini_cannot_take_is_a_400_naming_the_field(
    fields: dict[str, Any], param: str, kind: type[Exception]
) -> None:
    body = validate_chat({"model": "g", "messages": [{"role": "user", "content": "Hi"}], **fields})
    with pytest.raises(kind) as info:
        to_gemini(body)
    assert getattr(info.value, "param", None) == param
    assert getattr(info.value, "status", None) == 400


def test_schema_keeps_only_what_gemini_knows() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "exclusiveMaximum": 9}},
    }
    assert gemini_schema(schema, "p") == {
        "type": "OBJECT",
        "properties": {"a": {"type": "INTEGER", "minimum": 0}},
    }
    optional = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    assert gemini_schema(optional, "p") == {"type": "STRING", "nullable": True, "default": None}
    either = {
        "oneOf": [{"type": "number"}, {"$ref": "#/$defs/S"}],
        "$defs": {"S": {"type": "string"}},
    }
    assert gemini_schema(either, "p") == {"anyOf": [{"type": "NUMBER"}, {"type": "STRING"}]}


async def test_completions_are_refused_and_declared_missing() -> None:
    gem = provider()
    caps = gem.capabilities("gemini-2.0-flash")
    assert caps.lacks(needs("completion", {"prompt": "x"})) == ["completion"]
    assert caps.lacks(needs("embedding", {"input": "x"})) == []
    assert caps.vision and caps.tools and caps.json_schema
    router = Router(Catalog({"g": gem}, {}))  # decides before it calls; the dialect words it
    with pytest.raises(CapabilityError, match="no text completion") as info:
        await router.complete("completion", {"model": "g/gemini-2.0-flash", "prompt": "x"})
    assert info.value.status == 400 and info.value.param == "prompt"


# Replies: Gemini in, OpenAI out.


@pytest.mark.parametrize("case", cases("responses.json"))
def test_response(case: dict[str, Any]) -> None:
    before = int(time.time())
    result = from_gemini(case["gemini"], "asked-model")
    assert before <= result.pop("created") <= int(time.time())
    expected = copy.deepcopy(case["openai"])
    if "id" not in expected:
        assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", result.pop("id"))
    adopt_generated_ids(result, expected)
    assert result == expected
    assert_valid({**result, "id": "x", "created": before}, "CreateChatCompletionResponse")


def _objects(name: str, seed: int) -> list[dict[str, Any]]:
    raw = (FIXTURES / name).read_bytes()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), 15))
    decoder = SSEDecoder()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        events += decoder.feed(raw[start:end])
    events += decoder.close()
    return [json.loads(e.data) for e in events]


@pytest.mark.parametrize("name", ["stream_text", "stream_tools"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream(name: str, seed: int) -> None:
    expected = load(f"{name}.openai.json")
    translator = GeminiStream("asked-model", "gem")
    chunks: list[dict[str, Any]] = []
    for obj in _objects(f"{name}.sse", seed):
        chunks += translator.feed(obj)
    chunks += translator.close()
    created = chunks[0]["created"]
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        head = (chunk.pop("id"), chunk.pop("object"), chunk.pop("created"), chunk.pop("model"))
        assert head == (expected["id"], "chat.completion.chunk", created, expected["model"])
    adopt_generated_ids(chunks, expected["chunks"])
    assert chunks == expected["chunks"]


def test_stream_error_chunk_raises() -> None:
    translator = GeminiStream("m", "gem")
    first, error = _objects("stream_error.sse", 0)
    assert translator.feed(first)
    with pytest.raises(
        BackendUnavailableError, match=r"gem.*\(UNAVAILABLE\): The model is overloaded"
    ):
        translator.feed(error)


def test_stream_that_ends_before_any_finish_reason_is_an_error() -> None:
    translator = GeminiStream("m", "gem")
    for obj in _objects("stream_truncated.sse", 0):
        translator.feed(obj)
    with pytest.raises(BackendUnavailableError, match="before any candidate finished"):
        translator.close()


# Embeddings.


def test_embeddings_one_and_several() -> None:
    one = validate_embedding({"model": "e", "input": "hello world", "dimensions": 8})
    assert to_gemini_embed(one, "text-embedding-004") == (
        "embedContent",
        {
            "model": "models/text-embedding-004",
            "content": {"parts": [{"text": "hello world"}]},
            "outputDimensionality": 8,
        },
    )
    several = validate_embedding({"model": "e", "input": ["a", "bc"]})
    method, payload = to_gemini_embed(several, "text-embedding-004")
    assert method == "batchEmbedContents"
    assert payload == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "bc"}]}},
        ]
    }
    reply = from_gemini_embed(
        {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}, "e", several
    )
    assert_valid(reply, "CreateEmbeddingResponse")
    assert [d["embedding"] for d in reply["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert reply["usage"] == {"prompt_tokens": 2, "total_tokens": 2}  # estimated: 4 chars a token
    single = from_gemini_embed({"embedding": {"values": [1.0]}}, "e", one)
    assert single["data"] == [{"object": "embedding", "index": 0, "embedding": [1.0]}]
    with pytest.raises(CapabilityError, match="token ids"):
        to_gemini_embed(validate_embedding({"model": "e", "input": [1, 2]}), "m")


# Errors, headers, addressing.


@pytest.mark.parametrize("case", cases("errors.json"))
def test_error_reply(case: dict[str, Any]) -> None:
    error = provider().error_from_reply(
        case["status"], json.dumps(case["body"]).encode(), CIMultiDict()
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
    assert "gem" in error.message, "every error names the backend"
    assert_valid(error.to_openai(), "ErrorResponse")


def test_retry_delay_reads_only_retry_info() -> None:
    info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
    assert retry_delay(json.dumps({"error": {"details": [info]}}).encode()) == 1.5
    help_ = {"@type": "type.googleapis.com/google.rpc.Help", "retryDelay": "9s"}
    assert retry_delay(json.dumps({"error": {"details": [help_]}}).encode()) is None
    assert retry_delay(b"not json") is None


def test_request_headers_and_paths() -> None:
    gem = provider(headers={"X-Team": "a"})
    assert gem.request_headers() == {
        "Content-Type": "application/json",
        "X-Team": "a",
        "x-goog-api-key": "AIza-test",
    }
    assert gem.base_url == "https://generativelanguage.googleapis.com"
    assert (
        provider(endpoint="https://generativelanguage.googleapis.com/v1beta").base_url
        == "https://generativelanguage.googleapis.com"
    )
    assert (
        gem.path("models/gemini-2.0-flash", "generateContent")
        == "/v1beta/models/gemini-2.0-flash:generateContent"
    )
    assert gem.matches("models/gemini-2.0-flash", "gemini-2.0-flash")
    assert not gem.matches("gemini-2.0", "gemini-2.0-flash")


def test_api_key_is_required_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"providers\.gem\.api_key: required for type 'gemini'"):
        load_config({"providers": {"gem": {"type": "gemini"}}}, environ={})
    proxied = {"type": "gemini", "headers": {"X-Goog-Api-Key": "k"}}
    assert load_config({"providers": {"gem": proxied}}, environ={}).providers["gem"].api_key is None
