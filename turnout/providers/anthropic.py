"""The Anthropic Messages API dialect: `AnthropicProvider` moves OpenAI chat requests to
``POST /v1/messages`` and back, streamed or not, with the translations of `anthropic_translate`;
it maps Anthropic's error replies (``{"type": "error", "error": {"type", "message"}}``, 529
overloaded, rate-limit headers) to turnout errors and lists models from ``GET /v1/models``.

Headers: ``x-api-key`` and ``anthropic-version: 2023-06-01`` (runtimes.md §2). Anthropic has no
embeddings and no text completion: its `Capabilities` say so and such a request is a clear 400.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import ClassVar
from urllib.parse import quote

from pydantic import Field

from ..config import ProviderConfig
from ..errors import (
    BackendProtocolError,
    BackendUnavailableError,
    CapabilityError,
    GatewayError,
    clean_upstream_message,
)
from .anthropic_translate import DEFAULT_MAX_TOKENS, AnthropicStream, from_anthropic, to_anthropic
from .base import JSON, Call, Capabilities, Chunk, Health, ModelInfo
from .http import HttpProvider, error_message, json_or_none, parse_retry_after
from .presets import DIALECT_ENDPOINTS

__all__ = ["VERSION", "AnthropicConfig", "AnthropicProvider", "reset_wait"]

VERSION = "2023-06-01"


def _error_type(body: bytes) -> str | None:
    error = (json_or_none(body) or {}).get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def reset_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds until the spent budget resets, from ``anthropic-ratelimit-*-remaining: 0`` and its
    ``-reset`` (RFC 3339) header; for replies that carry no ``retry-after``."""
    waits = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{kind}-remaining") != "0":
            continue
        try:
            reset = datetime.fromisoformat(headers.get(f"anthropic-ratelimit-{kind}-reset") or "")
        except ValueError:
            continue
        waits.append(max(0.0, reset.timestamp() - time.time()))
    return max(waits) if waits else None


class AnthropicConfig(ProviderConfig):
    """A provider of type ``anthropic``."""

    default_max_tokens: int | None = Field(
        None,
        ge=1,
        description="output token limit sent when a request gives none (the Messages API requires "
        "one; unset: DEFAULT_MAX_TOKENS)",
    )


class AnthropicProvider(HttpProvider):
    """Anthropic's Messages API (or anything that speaks it): chat, streamed or not."""

    dialect: ClassVar[str] = "anthropic"
    settings: ClassVar[type[ProviderConfig]] = AnthropicConfig
    config: AnthropicConfig
    default_port = 443
    stream_usage = True  # message_delta always carries the counters
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        completion=False, embeddings=False, vision=True, json_schema=False
    )

    def __init__(self, name: str, config: ProviderConfig) -> None:
        if config.endpoint is None:
            config = config.model_copy(update={"endpoint": DIALECT_ENDPOINTS["anthropic"]})
        super().__init__(name, config)
        self.max_tokens = self.config.default_max_tokens or DEFAULT_MAX_TOKENS

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        return endpoint.rstrip("/").removesuffix("/v1")

    def request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": VERSION}
        headers.update(self.config.headers)
        if self.config.api_key and "x-api-key" not in {k.lower() for k in headers}:
            headers["x-api-key"] = self.config.api_key
        return headers

    def refusal(self, model: str, missing: list[str], body: JSON) -> CapabilityError:
        if "embeddings" in missing:
            return CapabilityError(
                f"Anthropic has no embeddings API; '{self.name}' cannot embed. Ask a backend "
                "that can (OpenAI, Gemini, Ollama, llama.cpp).",
                param="model",
            )
        if "completion" in missing:
            return CapabilityError(
                "Anthropic's Messages API has no text completion; use /v1/chat/completions.",
                param="prompt",
            )
        return super().refusal(model, missing, body)

    def _payload(self, call: Call, stream: bool) -> JSON:
        # Chat only: the router sends no embedding or completion here (see `refusal`).
        return to_anthropic(
            call.body, call.model, stream=stream, default_max_tokens=self.max_tokens
        )

    async def complete(self, call: Call) -> JSON:
        result = await self.call_json("POST", "/v1/messages", self._payload(call, False))
        if not isinstance(result, dict) or result.get("type") != "message":
            raise BackendProtocolError(
                f"backend '{self.name}' answered /v1/messages with something other than a "
                f"message: {str(result)[:120]!r}",
                backend=self.name,
            )
        return from_anthropic(result, call.model)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        translator = AnthropicStream(call.model, self.name)
        events = self.sse_events("/v1/messages", self._payload(call, True))
        async with contextlib.aclosing(events):
            async for event in events:
                for data in translator.feed(self._event(event.data)):
                    yield Chunk(data)
                if translator.done:
                    return
        raise BackendUnavailableError(
            f"backend '{self.name}' closed the stream before message_stop", backend=self.name
        )

    def _event(self, data: bytes) -> JSON:
        obj = json_or_none(data)
        if obj is None:
            raise BackendProtocolError(
                f"backend '{self.name}' sent a stream event that is not a JSON object: "
                f"{data[:120]!r}",
                backend=self.name,
            )
        return obj

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        kind = _error_type(body)
        who = f"backend '{self.name}'"
        if status == 529 or kind == "overloaded_error":
            text = clean_upstream_message(error_message(body)) or "Overloaded"
            return BackendUnavailableError(
                f"{who} is overloaded (HTTP {status}): {text}",
                status=503,
                retry_after=parse_retry_after(headers.get("retry-after")),
                backend=self.name,
            )
        error = super().error_from_reply(status, body, headers)
        if kind == "billing_error" or status == 402:
            error.retryable = False  # until someone pays; another backend may answer
            error.code = "backend_billing"
        elif error.retryable and error.retry_after is None:
            error.retry_after = reset_wait(headers)
        return error

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        after = ""
        for _ in range(20):  # pages of 1000; a bound, so a looping cursor cannot hang start-up
            path = "/v1/models?limit=1000" + (f"&after_id={quote(after)}" if after else "")
            page = await self.call_json("GET", path, timeout=self.config.timeout)
            items = page.get("data") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise BackendProtocolError(
                    f"backend '{self.name}' answered /v1/models without a 'data' list",
                    backend=self.name,
                )
            models += [
                _model_info(m, self.name) for m in items if isinstance(m, dict) and "id" in m
            ]
            after = str(page.get("last_id") or "")
            if not page.get("has_more") or not after:
                break
        return models

    async def probe(self) -> Health:
        return await self.probe_path("/v1/models?limit=1")


def _model_info(entry: JSON, owner: str) -> ModelInfo:
    try:
        created = int(datetime.fromisoformat(str(entry.get("created_at"))).timestamp())
    except ValueError:
        created = 0
    meta = {"display_name": entry["display_name"]} if entry.get("display_name") else {}
    return ModelInfo(str(entry["id"]), owner, created=created, meta=meta)
