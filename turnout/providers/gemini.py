"""The Google Gemini dialect (Generative Language API v1beta): `GeminiProvider` moves OpenAI chat
and embedding requests to ``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent`` and ``:batchEmbedContents`` and back (chat translated by `gemini_translate`,
embeddings here); it lists models from ``GET /v1beta/models`` and maps Google's error replies
(``{"error": {"code", "message", "status", "details"}}``) to turnout errors, reading the retry
delay of a 429 from its ``google.rpc.RetryInfo`` detail.

The API key goes in the ``x-goog-api-key`` header. Gemini has no text completion: its
`Capabilities` say so and such a request is a clear 400.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from ..config import ProviderConfig
from ..errors import (
    BackendError,
    BackendProtocolError,
    CapabilityError,
    GatewayError,
    clean_upstream_message,
)
from ..wire.openai import embedding_list, embedding_usage
from .base import JSON, Call, Capabilities, Chunk, Health, ModelInfo
from .gemini_translate import GeminiStream, from_gemini, to_gemini
from .http import HttpProvider, error_message, json_or_none
from .presets import DIALECT_ENDPOINTS

__all__ = ["GeminiProvider", "from_gemini_embed", "retry_delay", "to_gemini_embed"]

API = "/v1beta"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def retry_delay(body: bytes) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``, proto3 JSON's
    Duration), which Google sends on 429 RESOURCE_EXHAUSTED instead of a Retry-After header."""
    for detail in _details(body):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay") or ""))
            if match:
                return float(match[1])
    return None


def _details(body: bytes) -> list[JSON]:
    error = (json_or_none(body) or {}).get("error")
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _status(body: bytes) -> str:
    error = (json_or_none(body) or {}).get("error")
    return str(error.get("status") or "") if isinstance(error, dict) else ""


def to_gemini_embed(body: JSON, model: str) -> tuple[str, JSON]:
    """An OpenAI embeddings request as ``(method, body)``: one text to ``embedContent``, several
    to ``batchEmbedContents``."""
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(t, str) for t in texts):
        raise CapabilityError("Gemini embeds text; token ids cannot be sent.", param="input")
    extra: JSON = {}
    if body.get("dimensions") is not None:
        extra["outputDimensionality"] = body["dimensions"]
    name = f"models/{model}"
    if isinstance(value, str):
        return "embedContent", {"model": name, "content": {"parts": [{"text": value}]}, **extra}
    requests = [{"model": name, "content": {"parts": [{"text": t}]}, **extra} for t in texts]
    return "batchEmbedContents", {"requests": requests}


def from_gemini_embed(obj: JSON, model: str, body: JSON) -> JSON:
    """``{embedding: {values}}`` or ``{embeddings: [{values}]}`` as OpenAI's embedding list.
    Gemini reports no token count for embeddings: usage is estimated at 4 characters a token,
    the gateway's usual fallback."""
    found = obj.get("embeddings") if "embeddings" in obj else [obj.get("embedding")]
    vectors = [(e or {}).get("values") or [] for e in found or ()]
    value = body["input"]
    tokens = sum((len(t) + 3) // 4 for t in ([value] if isinstance(value, str) else value))
    return embedding_list(vectors, model, embedding_usage(tokens))


class GeminiProvider(HttpProvider):
    """Google's Gemini API (or anything that speaks it): chat, streamed or not, and embeddings."""

    dialect: ClassVar[str] = "gemini"
    default_port = 443
    stream_usage = True  # every chunk carries usageMetadata
    default_capabilities: ClassVar[Capabilities] = Capabilities(completion=False, vision=True)

    def __init__(self, name: str, config: ProviderConfig) -> None:
        if config.endpoint is None:
            config = config.model_copy(update={"endpoint": DIALECT_ENDPOINTS["gemini"]})
        super().__init__(name, config)

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        # Users paste the documented base URL (".../v1beta"); paths carry the version.
        return endpoint.rstrip("/").removesuffix("/v1beta").removesuffix("/v1")

    def request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.api_key and "x-goog-api-key" not in {k.lower() for k in headers}:
            headers["x-goog-api-key"] = self.config.api_key
        return headers

    @staticmethod
    def path(model: str, method: str) -> str:
        name = quote(model.removeprefix("models/"), safe="-._~")
        return f"{API}/models/{name}:{method}"

    async def complete(self, call: Call) -> JSON:
        if call.kind == "embedding":
            method, payload = to_gemini_embed(call.body, call.model.removeprefix("models/"))
            result = self._object(
                await self.call_json("POST", self.path(call.model, method), payload)
            )
            return from_gemini_embed(result, call.model, call.body)
        path = self.path(call.model, "generateContent")
        result = self._object(await self.call_json("POST", path, self._payload(call)))
        return from_gemini(result, call.model)

    def refusal(self, model: str, missing: list[str], body: JSON) -> CapabilityError:
        if "completion" in missing:
            return CapabilityError(
                "Gemini has no text completion; use /v1/chat/completions.", param="prompt"
            )
        return super().refusal(model, missing, body)

    def _payload(self, call: Call) -> JSON:
        return to_gemini(call.body)  # chat only: the router sends no completion (`refusal`)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        path = self.path(call.model, "streamGenerateContent") + "?alt=sse"
        translator = GeminiStream(call.model, self.name)
        events = self.sse_events(path, self._payload(call))
        async with contextlib.aclosing(events):
            async for event in events:
                for data in translator.feed(self._object(json_or_none(event.data), event.data)):
                    yield Chunk(data)
        for data in translator.close():  # the body ended: Gemini's only end-of-stream signal
            yield Chunk(data)

    def _object(self, obj: Any, raw: bytes | None = None) -> JSON:
        if not isinstance(obj, dict):
            shown = raw if raw is not None else obj
            raise BackendProtocolError(
                f"backend '{self.name}' answered with something other than a JSON object: "
                f"{str(shown)[:120]}",
                backend=self.name,
            )
        return obj

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        who = f"backend '{self.name}'"
        reasons = {str(d.get("reason")) for d in _details(body)}
        if "API_KEY_INVALID" in reasons or status == 403:
            # Google answers a wrong key with 400 INVALID_ARGUMENT: not the client's fault.
            denied = BackendError(
                f"{who} refused turnout's credentials (HTTP {status}): check "
                f"providers.{self.name}.api_key",
                backend=self.name,
                code="backend_auth_failed",
            )
            denied.retryable = False
            return denied
        if _status(body) == "FAILED_PRECONDITION":
            # e.g. "User location is not supported for the API use": this backend cannot serve
            # anything now, whatever the request; another backend may.
            text = clean_upstream_message(error_message(body))
            refused = BackendError(f"{who} cannot serve requests: {text}", backend=self.name)
            refused.retryable = False
            return refused
        error = super().error_from_reply(status, body, headers)
        if error.retryable and error.retry_after is None:
            error.retry_after = retry_delay(body)
        return error

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        token = ""
        for _ in range(20):  # a bound, so a looping page token cannot hang start-up
            path = f"{API}/models?pageSize=1000" + (f"&pageToken={quote(token)}" if token else "")
            page = await self.call_json("GET", path, timeout=self.config.timeout)
            items = page.get("models") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise BackendProtocolError(
                    f"backend '{self.name}' answered {API}/models without a 'models' list",
                    backend=self.name,
                )
            models += [_model_info(m, self.name) for m in items if isinstance(m, dict)]
            token = str(page.get("nextPageToken") or "")
            if not token:
                break
        return [m for m in models if m.id]

    async def probe(self) -> Health:
        return await self.probe_path(f"{API}/models?pageSize=1")

    def matches(self, requested: str, served: str) -> bool:
        # Google writes model names as "models/gemini-2.5-flash"; turnout lists them without.
        return requested.removeprefix("models/") == served


def _model_info(entry: JSON, owner: str) -> ModelInfo:
    keys = ("displayName", "inputTokenLimit", "outputTokenLimit", "supportedGenerationMethods")
    meta = {k: entry[k] for k in keys if k in entry}
    return ModelInfo(str(entry.get("name") or "").removeprefix("models/"), owner, meta=meta)
