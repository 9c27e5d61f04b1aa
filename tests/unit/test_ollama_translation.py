"""The Ollama dialect's translations, both ways, held against Ollama's documented examples in
tests/fixtures/ollama/ (its README says where each shape comes from). Every OpenAI shape turnout
produces is also validated against OpenAI's OpenAPI schemas. No network: streams run the real
`OllamaProvider.stream` over a stubbed response whose body arrives split at arbitrary bytes.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import random
import re
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.openapi import assert_valid
from turnout.config import ProviderConfig
from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailableError,
    CapabilityError,
    GatewayError,
    InvalidRequestError,
)
from turnout.providers import build_provider
from turnout.providers.ollama import (
    OllamaProvider,
    from_ollama_chat,
    from_ollama_embed,
    from_ollama_generate,
    model_info,
    to_ollama_chat,
    to_ollama_embed,
    to_ollama_generate,
)
from turnout.wire.ndjson import NDJSONDecoder
from turnout.wire.openai import embedding_base64
from turnout.wire.types import Call
from turnout.wire.validate import validate_chat, validate_completion, validate_embedding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def cases(name: str) -> list[Any]:
    return [pytest.param(case, id=case["case"][:60]) for case in load(name)]


def provider() -> OllamaProvider:
    return OllamaProvider("ollama", ProviderConfig(type="ollama"))


def adopt_generated_ids(actual: Any, expected: Any) -> None:
    """Where a fixture says ``"<generated>"``, check the tool call id turnout made up, then
    adopt it so the rest can be compared whole."""
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


# Requests: OpenAI in, Ollama out.


@pytest.mark.parametrize("case", cases("chat_requests.json"))
def test_chat_request(case: dict[str, Any]) -> None:
    body = validate_chat(copy.deepcopy(case["openai"]))
    out = to_ollama_chat(body, body["model"], stream=body.get("stream", False))
    assert out == case["ollama"]
    assert body == case["openai"], "the client's body must not be changed"


@pytest.mark.parametrize("case", cases("generate_requests.json"))
def test_generate_request(case: dict[str, Any]) -> None:
    body = validate_completion(copy.deepcopy(case["openai"]))
    assert (
        to_ollama_generate(body, body["model"], stream=body.get("stream", False)) == case["ollama"]
    )


@pytest.mark.parametrize("case", cases("embed_requests.json"))
def test_embed_request(case: dict[str, Any]) -> None:
    body = validate_embedding(copy.deepcopy(case["openai"]))
    assert to_ollama_embed(body, body["model"]) == case["ollama"]


def test_the_served_model_name_is_sent_not_the_requested_one() -> None:
    body = {"model": "ollama/llama3.2", "messages": [{"role": "user", "content": "Hi"}]}
    assert to_ollama_chat(body, "llama3.2:latest")["model"] == "llama3.2:latest"


def chat_with(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "llava", "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            chat_with(
                [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ]
            ),
            "messages[0].content[1].image_url.url",
            "inline as base64",
        ),
        (
            chat_with([{"type": "image_url", "image_url": {"url": "file:///srv/cat.png"}}]),
            "messages[0].content[0].image_url.url",
            "inline as base64",
        ),
        (
            chat_with([{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]),
            "messages[0].content[0].image_url.url",
            "not",
        ),
        (
            chat_with([{"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}]),
            "messages[0].content[0]",
            "text and images",
        ),
        (chat_with("Hi", n=2), "n", "one choice"),
        (chat_with("Hi", logprobs=True), "logprobs", "log probabilities"),
        (
            chat_with("Hi", tools=[{"type": "custom", "custom": {"name": "grep"}}]),
            "tools[0].type",
            "function tools",
        ),
    ],
    ids=["http image", "file image", "data URI not base64", "audio", "n", "logprobs", "custom"],
)
def test_what_ollama_cannot_take_is_a_400_naming_the_param(
    body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(CapabilityError) as info:
        to_ollama_chat(validate_chat(body), "llava:7b")
    err = info.value
    assert (err.status, err.param, err.code) == (400, param, "unsupported_capability")
    assert words in err.message
    assert_valid(err.to_openai(), "ErrorResponse")


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"Paris"'])
def test_tool_call_arguments_that_are_no_json_object_are_refused(arguments: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    with pytest.raises(InvalidRequestError) as info:
        to_ollama_chat(validate_chat({"model": "m", "messages": messages}), "m")
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"
    assert info.value.status == 400


def test_options_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError) as info:
        to_ollama_chat(chat_with("Hi", options=["temperature", 0]), "m")
    assert info.value.param == "options"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "prompt": ["one", "two"]}, "prompt"),
        ({"model": "m", "prompt": [1, 2, 3]}, "prompt"),
        ({"model": "m", "prompt": "Hi", "echo": True}, "echo"),
        ({"model": "m", "prompt": "Hi", "n": 3}, "n"),
    ],
    ids=["several prompts", "token ids", "echo", "n"],
)
def test_completions_ollama_cannot_serve_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(CapabilityError) as info:
        to_ollama_generate(validate_completion(body), "m")
    assert info.value.param == param


def test_token_ids_cannot_be_embedded() -> None:
    with pytest.raises(CapabilityError) as info:
        to_ollama_embed(validate_embedding({"model": "m", "input": [[1, 2], [3]]}), "m")
    assert info.value.param == "input"


# Responses: Ollama in, OpenAI out.


@pytest.mark.parametrize("case", cases("chat_responses.json"))
def test_chat_response(case: dict[str, Any]) -> None:
    out = from_ollama_chat(case["ollama"], "unused")
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", out["id"])
    assert_valid(out, "CreateChatCompletionResponse")
    out.pop("id")
    expected = copy.deepcopy(case["openai"])
    adopt_generated_ids(out, expected)
    assert out == expected


def test_made_up_tool_call_ids_differ() -> None:
    reply = copy.deepcopy(load("chat_responses.json")[3]["ollama"])
    reply["message"]["tool_calls"] *= 2
    calls = from_ollama_chat(reply, "m")["choices"][0]["message"]["tool_calls"]
    assert calls[0]["id"] != calls[1]["id"]


def test_a_reply_without_model_or_time_takes_the_served_name_and_now() -> None:
    out = from_ollama_chat(
        {"message": {"role": "assistant", "content": "Hi"}, "done": True}, "m:1b"
    )
    assert out["model"] == "m:1b"
    assert out["created"] > 1_700_000_000


@pytest.mark.parametrize("case", cases("generate_responses.json"))
def test_generate_response(case: dict[str, Any]) -> None:
    out = from_ollama_generate(case["ollama"], "unused")
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", out["id"])
    assert_valid(out, "CreateCompletionResponse")
    out.pop("id")
    assert out == case["openai"]


@pytest.mark.parametrize("case", cases("embed_responses.json"))
def test_embed_response(case: dict[str, Any]) -> None:
    out = from_ollama_embed(case["ollama"], "unused")
    assert out == case["openai"]
    assert_valid(out, "CreateEmbeddingResponse")


def test_base64_embeddings_are_little_endian_float32_as_openai_sends() -> None:
    vector = load("embed_responses.json")[1]["ollama"]["embeddings"][0]
    raw = base64.b64decode(embedding_base64(vector))
    assert len(raw) == 4 * len(vector)
    assert struct.unpack(f"<{len(vector)}f", raw) == pytest.approx(vector, rel=1e-6)


def test_tags_become_model_infos() -> None:
    infos = [model_info(entry, "ollama") for entry in load("tags.json")["models"]]
    assert [dataclasses.asdict(info) for info in infos] == load("tags.expected.json")


# Streams: NDJSON in, OpenAI chunks out.


def _stub(provider: OllamaProvider, pieces: list[bytes], sent: list[Any]) -> None:
    """Make ``provider.request`` answer 200 with ``pieces`` as the body, as aiohttp reads it."""

    class Content:
        async def iter_any(self) -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

    @contextlib.asynccontextmanager
    async def request(method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        sent.append((method, path, payload))
        yield SimpleNamespace(status=200, content=Content())

    provider.request = request  # type: ignore[method-assign]


def _random_pieces(data: bytes) -> list[bytes]:
    rng = random.Random(4)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, 40)
        pieces.append(data[at : at + size])
        at += size
    return pieces


SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": lambda data: [data],
    "every byte": lambda data: [data[i : i + 1] for i in range(len(data))],
    "random sizes": _random_pieces,
    "CRLF, no final newline": lambda data: [data.replace(b"\n", b"\r\n").rstrip()],
}
STREAMS = {
    "chat_stream": ("chat", "CreateChatCompletionStreamResponse"),
    "chat_stream_tools": ("chat", "CreateChatCompletionStreamResponse"),
    "generate_stream": ("completion", "CreateCompletionResponse"),
}
BODIES = {
    "chat": {"model": "m", "messages": [{"role": "user", "content": "why is the sky blue?"}]},
    "completion": {"model": "m", "prompt": "Why is the sky blue?"},
}


async def collect(provider: OllamaProvider, call: Call, into: list[Any]) -> None:
    async for chunk in provider.stream(call):
        into.append(chunk.data)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", STREAMS)
async def test_stream(name: str, split: str) -> None:
    kind, schema = STREAMS[name]
    p, sent, chunks = provider(), [], []
    _stub(p, SPLITS[split]((FIXTURES / f"{name}.ndjson").read_bytes()), sent)
    await collect(p, Call(kind, BODIES[kind], "fallback", stream=True), chunks)
    path = "/api/chat" if kind == "chat" else "/api/generate"
    assert [(m, pth, payload["stream"]) for m, pth, payload in sent] == [("POST", path, True)]
    ids = {chunk.pop("id") for chunk in chunks}
    assert len(ids) == 1
    assert re.fullmatch(r"(chatcmpl|cmpl)-[0-9a-f]{32}", ids.pop())
    expected = load(f"{name}.openai.json")
    adopt_generated_ids(chunks, expected)
    assert chunks == expected
    for chunk in chunks:
        if kind == "chat" or chunk["choices"] == [] or chunk["choices"][0]["finish_reason"]:
            assert_valid({**chunk, "id": "x"}, schema)  # OpenAI's completion schema has no
            # nullable finish_reason, though its streams send null until the end


async def test_a_midstream_error_line_raises_a_backend_error_after_the_chunks_before_it() -> None:
    p, chunks = provider(), []
    _stub(p, _random_pieces((FIXTURES / "generate_stream_error.ndjson").read_bytes()), [])
    with pytest.raises(BackendError) as info:
        await collect(p, Call("completion", BODIES["completion"], "gemma3", True), chunks)
    assert [c["choices"][0]["text"] for c in chunks] == [" Yes", ".", "I", "can"]
    err = info.value
    assert err.message == (
        "backend 'ollama' failed mid-stream: an error was encountered while running the model"
    )
    assert (err.status, err.type, err.backend) == (502, "backend_error", "ollama")


async def test_a_stream_that_ends_before_done_is_an_error() -> None:
    p, chunks = provider(), []
    _stub(p, [(FIXTURES / "chat_stream_truncated.ndjson").read_bytes()], [])
    with pytest.raises(BackendUnavailableError) as info:
        await collect(p, Call("chat", BODIES["chat"], "llama3.2", True), chunks)
    assert info.value.message == "backend 'ollama' closed the stream before it was done"
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["The", " sky"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_a_malformed_line_is_a_protocol_error() -> None:
    p = provider()
    _stub(
        p,
        [b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n<html>\n'],
        [],
    )
    with pytest.raises(BackendProtocolError, match="'<html>'"):
        await collect(p, Call("chat", BODIES["chat"], "m", True), [])


def test_ndjson_decoder_reassembles_lines_and_skips_blank_ones() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":') == []
    assert decoder.feed(b'1}\r\n\n{"b"') == [b'{"a":1}']
    assert decoder.feed(b":2}\n") == [b'{"b":2}']
    assert decoder.feed(b'{"c":3}') == []
    assert decoder.close() == [b'{"c":3}']
    assert decoder.close() == []


# The provider: complete(), errors, names.


async def _complete(kind: str, body: dict[str, Any], reply: Any) -> Any:
    p, sent = provider(), []

    async def call_json(method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        sent.append((method, path, payload))
        return reply

    p.call_json = call_json  # type: ignore[method-assign]
    result = await p.complete(Call(kind, body, "all-minilm:latest"))
    return result, sent


async def test_complete_posts_each_kind_to_its_endpoint() -> None:
    chat = load("chat_responses.json")[1]["ollama"]
    _, sent = await _complete("chat", BODIES["chat"], chat)
    assert sent[0][:2] == ("POST", "/api/chat") and sent[0][2]["stream"] is False
    generate = load("generate_responses.json")[0]["ollama"]
    _, sent = await _complete("completion", BODIES["completion"], generate)
    assert sent[0][:2] == ("POST", "/api/generate") and sent[0][2]["stream"] is False
    embed = load("embed_responses.json")[0]["ollama"]
    body = {"model": "m", "input": "Why is the sky blue?", "encoding_format": "base64"}
    result, sent = await _complete("embedding", body, embed)
    assert sent == [("POST", "/api/embed", {"model": "all-minilm:latest", "input": body["input"]})]
    assert isinstance(result["data"][0]["embedding"], list), "the gateway, not the dialect, encodes"


@pytest.mark.parametrize(
    ("kind", "reply", "error", "text"),
    [
        ("chat", {"error": "llama runner process has terminated"}, BackendError, "terminated"),
        ("chat", ["not", "an", "object"], BackendProtocolError, "JSON object"),
        ("embedding", {"model": "m"}, BackendProtocolError, "'embeddings'"),
    ],
)
async def test_complete_refuses_replies_that_are_not_answers(
    kind: str, reply: Any, error: type[GatewayError], text: str
) -> None:
    body = BODIES["chat"] if kind == "chat" else {"model": "m", "input": "x"}
    with pytest.raises(error, match=text) as info:
        await _complete(kind, body, reply)
    assert info.value.backend == "ollama"


@pytest.mark.parametrize("case", cases("errors.json"))
def test_error_reply(case: dict[str, Any]) -> None:
    body = json.dumps(case["body"]).encode()
    err = provider().error_from_reply(case["status"], body, case.get("headers", {}))
    expected = case["openai"]
    assert (err.status, err.type, err.code) == (
        expected["status"],
        expected["type"],
        expected["code"],
    )
    assert err.message == expected["message"]
    assert err.headers().get("Retry-After") == expected.get("retry_after")
    assert err.backend == "ollama"
    assert_valid(err.to_openai(), "ErrorResponse")


@pytest.mark.parametrize(
    ("requested", "served", "expected"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2", "llama3.2", True),
        ("llama3.2:latest", "llama3.2:latest", True),
        ("llama3.2:latest", "llama3.2", False),
        ("llama3.2", "llama3.2:3b", False),
        ("llama3", "llama3.2:latest", False),
        ("library/llama3.2", "llama3.2:latest", False),
        ("localhost:5000/team/coder", "localhost:5000/team/coder:latest", True),
        ("team/coder:v2", "team/coder:v2:latest", False),
    ],
)
def test_matches(requested: str, served: str, expected: bool) -> None:
    assert provider().matches(requested, served) is expected


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        (None, "http://127.0.0.1:11434"),
        ("http://gpu-box:11434", "http://gpu-box:11434"),
        ("http://gpu-box:11434/api/", "http://gpu-box:11434"),
        ("http://gpu-box:11434/v1", "http://gpu-box:11434"),
    ],
)
def test_endpoint(endpoint: str | None, base: str) -> None:
    built = build_provider("local", ProviderConfig(type="ollama", endpoint=endpoint))
    assert isinstance(built, OllamaProvider)
    assert built.base_url == base
    assert (built.dialect, built.stream_usage) == ("ollama", True)
