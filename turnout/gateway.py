"""`Gateway`: providers, model catalog and router, behind one object.

The HTTP server and programs that embed turnout use the same object::

    async with Gateway("turnout.yaml") as gw:
        reply = await gw.chat("gemma-3-270m", [{"role": "user", "content": "Hi"}], max_tokens=16)
        async for chunk in gw.stream("gemma-3-270m", [{"role": "user", "content": "Hi"}]):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .config import Config, ProviderConfig, load_config
from .providers import build_provider
from .providers.base import JSON, Chunk, Provider
from .routing import Catalog, Router, Target
from .wire.openai import embedding_base64
from .wire.validate import validate_chat, validate_completion, validate_embedding

__all__ = ["DEFAULT_EMBEDDED", "Gateway", "Reply", "StreamReply"]

log = logging.getLogger("turnout")

#: the provider served when nothing is configured
DEFAULT_EMBEDDED: dict[str, Any] = {
    "type": "embedded",
    "models": [{"name": "gemma-3-270m", "chat_format": "gemma", "n_ctx": 2048}],
}

_CHUNK_OBJECT = {"chat": "chat.completion.chunk", "completion": "text_completion"}


@dataclass(slots=True)
class Reply:
    body: JSON
    target: Target


@dataclass(slots=True)
class StreamReply:
    chunks: AsyncIterator[Chunk]
    target: Target


class Gateway:
    """Every configured backend behind one OpenAI-shaped interface."""

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = load_config(config, environ=environ)
        configs = dict(self.config.providers)
        if not configs and self.config.default_embedded:
            configs["embedded"] = ProviderConfig.model_validate(DEFAULT_EMBEDDED)
        self.providers: dict[str, Provider] = {
            name: build_provider(name, cfg) for name, cfg in configs.items() if cfg.enabled
        }
        self.catalog = Catalog(self.providers, self.config.aliases)
        self.router = Router(self.catalog)
        self._refresher: asyncio.Task[None] | None = None
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Load engines and open connections; called by ``async with`` and the HTTP server, and
        by the first request otherwise (an engine never loaded would leave it waiting forever)."""
        async with self._starting:
            if self._started:
                return
            await asyncio.gather(*(p.start() for p in self.providers.values()))
            await self.catalog.refresh()
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="turnout-model-refresh"
            )
            self._started = True

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await asyncio.gather(*(p.close() for p in self.providers.values()))
        self._started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.models_refresh_seconds)
            try:
                await self.catalog.refresh()
            except Exception:  # a refresh must never end the loop
                log.exception("model list refresh failed")

    # The interface the HTTP fronts use: bodies already validated.

    async def complete(self, kind: str, body: JSON) -> Reply:
        if not self._started:
            await self.start()
        result, target = await self.router.complete(kind, body)
        return Reply(_conform(kind, body, result), target)

    async def open_stream(self, kind: str, body: JSON) -> StreamReply:
        if not self._started:
            await self.start()
        chunks, target = await self.router.stream(kind, body)
        return StreamReply(self._metered(kind, body, chunks, target), target)

    async def _metered(
        self, kind: str, body: JSON, chunks: AsyncIterator[Chunk], target: Target
    ) -> AsyncIterator[Chunk]:
        """Read usage as the stream passes; supply it when the backend never does."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage: JSON | None = None
        collect = include_usage  # even a backend that should report usage may not
        # Count as soon as the text is complete, while the backend call still holds its
        # concurrency slot: llama-cpp-python ends the stream it is serving when any other request
        # arrives, its tokenize endpoint included, so counting after the slot is free would cut
        # off the next queued stream.
        count_early = include_usage and not target.provider.stream_usage
        counted: tuple[int, JSON] | None = None  # (pieces counted, usage)
        pieces: list[str] = []
        last: JSON = {}
        try:
            async for chunk in chunks:
                data = chunk.data
                choices = data.get("choices")
                if data.get("usage"):
                    usage = data["usage"]
                    if not choices and not include_usage:
                        continue  # the usage chunk turnout asked for on the client's behalf
                if collect and choices:
                    pieces.extend(_text_of(choices))
                    if count_early and _finished(choices):
                        text = "".join(pieces)
                        counted = (len(pieces), await self._count_usage(kind, body, target, text))
                last = data
                yield chunk
        finally:  # a client gone early: end the backend call and free its slot now, not at GC
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if usage is None and include_usage:
            if counted is not None and counted[0] == len(pieces):
                usage = counted[1]
            else:
                usage = await self._count_usage(kind, body, target, "".join(pieces))
            yield Chunk(
                {
                    "id": last.get("id", ""),
                    "object": _CHUNK_OBJECT.get(kind, "chat.completion.chunk"),
                    "created": last.get("created", int(time.time())),
                    "model": last.get("model", target.model),
                    "choices": [],
                    "usage": usage,
                }
            )

    async def _count_usage(self, kind: str, body: JSON, target: Target, completion: str) -> JSON:
        prompt = _prompt_text(kind, body)
        provider = target.provider
        counts: list[int] = []
        for text in (prompt, completion):
            try:
                n = await provider.count_tokens(target.model, text) if text else 0
            except Exception:  # counting is best effort; an estimate beats no usage
                n = None
            counts.append(n if n is not None else (len(text) + 3) // 4)
        return {
            "prompt_tokens": counts[0],
            "completion_tokens": counts[1],
            "total_tokens": counts[0] + counts[1],
        }

    # The Python API.

    async def chat(self, model: str, messages: list[JSON], **params: Any) -> JSON:
        """A chat completion, as OpenAI's ``chat.completion`` object."""
        body = validate_chat({**params, "model": model, "messages": messages, "stream": False})
        return (await self.complete("chat", body)).body

    async def stream(self, model: str, messages: list[JSON], **params: Any) -> AsyncIterator[JSON]:
        """A streamed chat completion, as OpenAI ``chat.completion.chunk`` objects."""
        body = validate_chat({**params, "model": model, "messages": messages, "stream": True})
        reply = await self.open_stream("chat", body)
        async for chunk in reply.chunks:
            yield chunk.data

    async def completion(self, model: str, prompt: str | list[str], **params: Any) -> JSON:
        """A text completion, as OpenAI's ``text_completion`` object."""
        body = validate_completion({**params, "model": model, "prompt": prompt, "stream": False})
        return (await self.complete("completion", body)).body

    async def embed(self, model: str, input: str | list[str], **params: Any) -> JSON:
        """Embeddings, as OpenAI's embedding list object."""
        body = validate_embedding({**params, "model": model, "input": input})
        return (await self.complete("embedding", body)).body

    async def models(self) -> list[JSON]:
        """Every model every provider serves, as ``provider/model`` ids, then the aliases."""
        return self.catalog.model_objects()


def _conform(kind: str, body: JSON, result: JSON) -> JSON:
    """Fill in what OpenAI's schema requires of a reply and local runtimes leave out: a chat
    message's ``refusal`` and a choice's ``logprobs`` (both null), and base64 embeddings when the
    client asked for them (runtimes answer with floats whatever ``encoding_format`` says)."""
    if kind in ("chat", "completion"):
        for choice in result.get("choices") or ():
            choice.setdefault("logprobs", None)
            message = choice.get("message")
            if kind == "chat" and isinstance(message, dict):
                message.setdefault("refusal", None)
    elif kind == "embedding" and body.get("encoding_format") == "base64":
        for item in result.get("data") or ():
            vector = item.get("embedding")
            if isinstance(vector, list):
                item["embedding"] = embedding_base64(vector)
    return result


def _finished(choices: list[JSON]) -> bool:
    return all(choice.get("finish_reason") for choice in choices)


def _text_of(choices: list[JSON]) -> list[str]:
    out = []
    for choice in choices:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            out.append(text)
    return out


def _prompt_text(kind: str, body: JSON) -> str:
    if kind != "chat":
        prompt = body.get("prompt")
        return (
            prompt
            if isinstance(prompt, str)
            else "\n".join(p for p in prompt or () if isinstance(p, str))
        )
    parts: list[str] = []
    for message in body.get("messages", ()):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if p.get("type") == "text")
    return "\n".join(parts)
