"""The official ``openai`` SDK as the client, sync and async, against turnout in front of a real
llama-cpp-python server and in front of its embedded engine. Every response, stream chunk and
error is also validated against OpenAI's OpenAPI schema, as the SDK received it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.checks import (
    check_chat,
    check_chat_stream,
    check_completion,
    check_error,
)
from tests.support.openapi import assert_valid
from tests.support.servers import run_gateway, run_silent_server

pytestmark = pytest.mark.slow

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens


@pytest.fixture(params=["embedded", "llama"])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(base URL for the SDK, model name): turnout in front of each kind of backend."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded_gateway") + "/v1", "gemma-3-270m"
    return request.getfixturevalue("llama_gateway") + "/v1", "llama/gemma-3-270m"


def _sync(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=60)


def _async(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=60)


def _dicts(chunks: list[Any]) -> list[dict[str, Any]]:
    """Chunks as the server sent them (the SDK keeps track of which fields were set)."""
    return [chunk.to_dict() for chunk in chunks]


def test_sync_chat(target: tuple[str, str]) -> None:
    url, model = target
    with _sync(url) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=HI, max_tokens=6, logit_bias=NO_EOS
        )
        body = raw.http_response.json()
        check_chat(body, max_tokens=6)
        reply = raw.parse()
    assert raw.headers["x-turnout-backend"] in ("embedded", "llama")
    assert reply.id == body["id"]
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert_valid(reply.to_dict(), "CreateChatCompletionResponse")


async def test_async_chat(target: tuple[str, str]) -> None:
    url, model = target
    async with _async(url) as client:
        reply = await client.chat.completions.create(
            model=model, messages=HI, max_completion_tokens=5, logit_bias=NO_EOS
        )
    check_chat(reply.to_dict(), max_tokens=5)
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_sync_stream_with_usage(target: tuple[str, str]) -> None:
    url, model = target
    with _sync(url) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=HI,
            max_tokens=8,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    usage = check_chat_stream(_dicts(chunks), max_tokens=8, include_usage=True)
    assert usage is not None
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == usage["total_tokens"]
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


async def test_async_stream_with_usage(target: tuple[str, str]) -> None:
    url, model = target
    async with _async(url) as client:
        stream = await client.chat.completions.create(
            model=model,
            messages=HI,
            max_tokens=8,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    usage = check_chat_stream(_dicts(chunks), max_tokens=8, include_usage=True)
    assert usage is not None


async def test_async_stream_without_usage(target: tuple[str, str]) -> None:
    url, model = target
    async with _async(url) as client:
        stream = await client.chat.completions.create(
            model=model, messages=HI, max_tokens=4, stream=True
        )
        chunks = [chunk async for chunk in stream]
    check_chat_stream(_dicts(chunks), max_tokens=4, include_usage=False)


def test_sync_text_completion(target: tuple[str, str]) -> None:
    url, model = target
    with _sync(url) as client:
        raw = client.completions.with_raw_response.create(
            model=model, prompt="Once upon a time", max_tokens=5, logit_bias=NO_EOS
        )
    check_completion(raw.http_response.json(), max_tokens=5)
    assert raw.parse().choices[0].finish_reason == "length"


def test_models(target: tuple[str, str]) -> None:
    url, model = target
    with _sync(url) as client:
        ids = [m.id for m in client.models.list()]
        one = client.models.retrieve(ids[0])
    assert len(ids) == 1 and ids[0].endswith("/gemma-3-270m")
    assert model in (ids[0], ids[0].split("/", 1)[1])
    assert one.id == ids[0]


def test_unknown_model(target: tuple[str, str]) -> None:
    url, _ = target
    with _sync(url) as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=2)
    error = caught.value
    assert (error.status_code, error.code, error.param, error.type) == (
        404,
        "model_not_found",
        "model",
        "not_found_error",
    )
    check_error(
        error.response.json(), type="not_found_error", code="model_not_found", param="model"
    )


async def test_unknown_model_streamed(target: tuple[str, str]) -> None:
    url, _ = target
    async with _async(url) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="llama/no-such-model", messages=HI, max_tokens=2, stream=True
            )
    assert caught.value.param == "model"


def test_invalid_field(target: tuple[str, str]) -> None:
    url, model = target
    with _sync(url) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=HI, max_tokens=2, temperature=7)
    assert (caught.value.status_code, caught.value.param) == (400, "temperature")
    check_error(
        caught.value.response.json(),
        type="invalid_request_error",
        code="invalid_value",
        param="temperature",
    )


# Embeddings: the embedded engine (the llama-cpp-python server here runs without --embedding).


def test_embeddings_as_the_sdk_asks_for_them(embedded_gateway: str) -> None:
    """The SDK asks for base64 unless told otherwise and decodes it; both ways agree."""
    with _sync(embedded_gateway + "/v1") as client:
        default = client.embeddings.create(model="gemma-3-270m", input=["hello", "world"])
        raw = client.embeddings.with_raw_response.create(
            model="gemma-3-270m", input=["hello", "world"], encoding_format="float"
        )
    body = raw.http_response.json()
    assert_valid(body, "CreateEmbeddingResponse")
    floats = raw.parse()
    assert [d.index for d in default.data] == [0, 1]
    for packed, plain in zip(default.data, floats.data, strict=True):
        assert isinstance(packed.embedding, list) and len(packed.embedding) > 0
        assert packed.embedding == pytest.approx(plain.embedding, rel=1e-6, abs=1e-6)
    assert default.usage.prompt_tokens > 0


async def test_async_embeddings(embedded_gateway: str) -> None:
    async with _async(embedded_gateway + "/v1") as client:
        result = await client.embeddings.create(
            model="embedded/gemma-3-270m", input="hello", encoding_format="float"
        )
    assert_valid(result.to_dict(), "CreateEmbeddingResponse")
    assert len(result.data) == 1 and len(result.data[0].embedding) > 0


# An error after the stream committed (keep-alives sent, then the backend timed out).


@pytest.fixture(scope="module")
def hanging() -> Iterator[str]:
    with run_silent_server() as silent:
        config = {
            "server": {"sse_keepalive_seconds": 0.2},
            "providers": {
                "silent": {
                    "type": "openai",
                    "endpoint": silent,
                    "models": ["hang"],
                    "timeout": 0.6,
                    "max_retries": 0,
                }
            },
        }
        with run_gateway(config) as url:
            yield url + "/v1"


def test_error_event_mid_stream_raises(hanging: str) -> None:
    with _sync(hanging) as client:
        stream = client.chat.completions.create(model="hang", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as caught:
            list(stream)
    assert "did not answer" in caught.value.message


def test_timeout_before_the_stream_commits_is_a_504() -> None:
    with run_silent_server() as silent:
        provider = {"type": "openai", "endpoint": silent, "models": ["hang"], "timeout": 0.5}
        config = {"providers": {"silent": {**provider, "max_retries": 0}}}
        with (
            run_gateway(config) as url,
            _sync(url + "/v1") as client,
            pytest.raises(openai.InternalServerError) as caught,
        ):
            client.chat.completions.create(model="hang", messages=HI, stream=True)
    assert caught.value.status_code == 504
    check_error(caught.value.response.json(), type="timeout", code="backend_timeout", param=None)
