"""`Gateway._metered`: usage in streams, forwarded, dropped or supplied by turnout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from turnout.config import ProviderConfig
from turnout.gateway import Gateway
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router
from turnout.wire.types import JSON, Call, Chunk


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> JSON:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "backend-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
USAGE_CHUNK = {**chunk(), "choices": [], "usage": USAGE}
CONTENT = [chunk("Hello"), chunk(" world"), chunk(None, "stop")]


class StreamingProvider(Provider):
    """Streams scripted chunk dicts; counts tokens as whitespace-separated words."""

    dialect: ClassVar[str] = "memory"

    def __init__(
        self,
        name: str,
        chunks: list[JSON],
        *,
        stream_usage: bool = True,
        counts: str = "words",
        max_concurrency: int | None = None,
    ) -> None:
        super().__init__(
            name,
            ProviderConfig(
                type="openai", models=["m"], max_retries=0, max_concurrency=max_concurrency
            ),
        )
        self.chunks = chunks
        self.stream_usage = stream_usage
        self.counts = counts
        self.counted: list[tuple[str, str]] = []
        self.calls: list[Call] = []
        self.in_use = 0
        self.finished = asyncio.Event()

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    async def probe(self) -> Health:
        return Health(True)

    async def complete(self, call: Call) -> JSON:
        raise AssertionError("these tests only stream")

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        self.calls.append(call)
        try:
            for data in self.chunks:
                yield Chunk(data)
        finally:
            self.finished.set()

    async def count_tokens(self, model: str, text: str) -> int | None:
        self.counted.append((model, text))
        if self.counts == "none":
            return None
        if self.counts == "raise":
            raise RuntimeError("tokenizer crashed")
        return len(text.split())

    async def acquire(self) -> None:
        await super().acquire()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        super().release()


def gateway_with(*providers: Provider) -> Gateway:
    gateway = Gateway({"default_embedded": False}, environ={})
    assert gateway.providers == {}
    gateway.providers = {p.name: p for p in providers}
    gateway.catalog = Catalog(gateway.providers)
    gateway.router = Router(gateway.catalog)
    return gateway


def chat_body(include_usage: bool | None, **extra: Any) -> JSON:
    body: JSON = {
        "model": "m",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
        ],
        **extra,
    }
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


async def run(provider: StreamingProvider, body: JSON, kind: str = "chat") -> list[JSON]:
    async with gateway_with(provider) as gateway:
        reply = await gateway.open_stream(kind, body)
        assert reply.target.address == f"{provider.name}/m"
        return [c.data async for c in reply.chunks]


async def test_usage_chunk_forwarded_when_asked() -> None:
    provider = StreamingProvider("p", [*CONTENT, USAGE_CHUNK])
    out = await run(provider, chat_body(True))
    assert out == [*CONTENT, USAGE_CHUNK]
    assert provider.counted == []


@pytest.mark.parametrize("include_usage", [False, None])
async def test_usage_chunk_dropped_when_not_asked(include_usage: bool | None) -> None:
    provider = StreamingProvider("p", [*CONTENT, USAGE_CHUNK])
    assert await run(provider, chat_body(include_usage)) == CONTENT


async def test_usage_on_a_content_chunk_is_kept() -> None:
    last = chunk(None, "stop", usage=USAGE)
    provider = StreamingProvider("p", [chunk("Hi"), last])
    assert await run(provider, chat_body(None)) == [chunk("Hi"), last]


async def test_usage_supplied_when_the_backend_cannot() -> None:
    provider = StreamingProvider("p", CONTENT, stream_usage=False)
    out = await run(provider, chat_body(True))
    assert out[:3] == CONTENT
    assert out[3] == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "backend-model",
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    assert len(out) == 4
    assert provider.counted == [("m", "Be brief.\nSay hello"), ("m", "Hello world")]


async def test_usage_supplied_when_a_backend_that_should_report_it_does_not() -> None:
    provider = StreamingProvider("p", CONTENT, stream_usage=True)
    out = await run(provider, chat_body(True))
    assert out[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


async def test_usage_estimated_when_count_tokens_cannot_say() -> None:
    provider = StreamingProvider("p", CONTENT, stream_usage=False, counts="none")
    out = await run(provider, chat_body(True))
    # (len + 3) // 4: "Be brief.\nSay hello" is 19 characters, "Hello world" 11
    assert out[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_usage_estimated_when_count_tokens_fails() -> None:
    provider = StreamingProvider("p", CONTENT, stream_usage=False, counts="raise")
    out = await run(provider, chat_body(True))
    assert out[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_no_usage_supplied_when_not_asked() -> None:
    provider = StreamingProvider("p", CONTENT, stream_usage=False)
    assert await run(provider, chat_body(False)) == CONTENT
    assert provider.counted == []


async def test_empty_completion_counts_zero_without_asking() -> None:
    provider = StreamingProvider("p", [chunk(None, "length")], stream_usage=False)
    out = await run(provider, chat_body(True))
    assert out[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}
    assert provider.counted == [("m", "Be brief.\nSay hello")]


async def test_text_completion_usage() -> None:
    pieces = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 5,
            "model": "b",
            "choices": [{"index": 0, "text": text, "finish_reason": None}],
        }
        for text in ("once upon", " a time")
    ]
    provider = StreamingProvider("p", pieces, stream_usage=False)
    body = {
        "model": "m",
        "stream": True,
        "prompt": "Tell me a story",
        "stream_options": {"include_usage": True},
    }
    out = await run(provider, body, kind="completion")
    assert out[-1] == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "b",
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
    }


async def test_python_api_stream_yields_dicts() -> None:
    provider = StreamingProvider("p", [*CONTENT, USAGE_CHUNK])
    async with gateway_with(provider) as gateway:
        out = [c async for c in gateway.stream("m", [{"role": "user", "content": "Hi"}])]
    assert out == CONTENT
    assert provider.calls[0].body["stream"] is True
    assert provider.calls[0].stream is True


async def test_client_leaving_early_frees_the_backend_at_once() -> None:
    provider = StreamingProvider("p", CONTENT * 3, max_concurrency=1)
    async with gateway_with(provider) as gateway:
        reply = await gateway.open_stream("chat", chat_body(True))
        first = await anext(reply.chunks)
        assert first.data == CONTENT[0]
        assert provider.in_use == 1
        await reply.chunks.aclose()  # type: ignore[attr-defined]
        assert provider.finished.is_set()
        assert provider.in_use == 0
        assert provider.counted == []  # no usage for an abandoned stream
