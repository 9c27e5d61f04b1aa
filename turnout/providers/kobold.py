"""The Kobold dialect: KoboldCpp's native API (port 5001) and the original KoboldAI API.

Facts (shared/reference/runtimes.md §16; LostRuins/koboldcpp koboldcpp.py @2da346a, Oct 2024):
Kobold generates from a *prompt*, so a chat is rendered to one by the model's chat template
(`TEMPLATES`; chosen per model with ``chat_format`` in the configuration, default ``chatml``),
whose end-of-turn markers are sent as ``stop_sequence``. ``POST /api/v1/generate`` answers
``{"results": [{"text", "finish_reason"}]}``; ``POST /api/extra/generate/stream`` answers SSE
``event: message`` / ``data: {"token", "finish_reason"}`` with no ``[DONE]`` (the stream ends
after the event whose ``finish_reason`` is ``stop`` or ``length``; earlier ones carry the
*string* ``"null"``). ``GET /api/v1/model`` names the one model; ``GET /api/extra/version`` is
the cheap health check; ``POST /api/extra/tokencount`` counts tokens for usage. Errors are
``{"detail": {"msg", "type"}}`` (503 while busy). The original KoboldAI (port 5000) has no
stream and no token counter: turnout emulates the stream from a whole reply and estimates usage.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import ClassVar

import orjson
from pydantic import Field

from ..config import ModelEntry, ProviderConfig
from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailableError,
    CapabilityError,
    ConfigError,
    GatewayError,
)
from ..wire.openai import ChunkMaker, count_usage, reply_body, reply_id, usage_dict
from ..wire.sse import SSEDecoder
from .base import JSON, Call, Capabilities, Chunk, Health, Kind, ModelInfo
from .chat_templates import DEFAULT_TEMPLATE, TEMPLATES, Template
from .emulation import (
    chunks_from_response,
    cut_at_stop,
    refuse_unsupported,
    single_prompt,
    unsupported,
)
from .http import HttpProvider

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "KoboldConfig",
    "KoboldModel",
    "KoboldProvider",
    "Template",
    "to_kobold",
]

#: the most a Kobold API client may ask for (KoboldAI's documented max_length range is 1-512);
#: KoboldCpp's own default is 180, too short for a chat answer
KOBOLD_MAX_LENGTH = 512


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Kobold sampler settings a client of a local runtime may send at the top level, passed on as is.
_KOBOLD_FIELDS = frozenset(
    {
        "top_k", "min_p", "top_a", "typical", "tfs", "rep_pen", "rep_pen_range", "rep_pen_slope",
        "sampler_order", "memory", "grammar", "banned_tokens", "max_context_length",
        "mirostat", "mirostat_tau", "mirostat_eta", "dynatemp_range", "dynatemp_exponent",
        "smoothing_factor", "render_special", "ban_eos_token", "dry_multiplier", "dry_base",
        "dry_allowed_length", "dry_sequence_breakers", "xtc_threshold", "xtc_probability",
    }
)  # fmt: skip


_RUNTIME = "The Kobold API"


def _refuse(param: str, what: str) -> CapabilityError:
    return unsupported(f"{_RUNTIME} cannot {what}.", param)


def to_kobold(
    kind: Kind, body: JSON, template: Template, max_length: int
) -> tuple[JSON, list[str]]:
    """The ``/api/v1/generate`` body for an OpenAI chat or completion request, and the stop
    strings turnout applies to the reply as well (the original KoboldAI ignores them)."""
    refuse_unsupported(body, _RUNTIME)
    if (body.get("n") or 1) > 1:
        raise _refuse("n", "generate several choices per request; 'n' must be 1")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    images: list[str] = []
    if kind == "chat":
        prompt = template.render(_messages(body["messages"], images))
        stops += [s for s in template.stop if s not in stops]
    else:
        prompt = single_prompt(body.get("prompt"), _RUNTIME)
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    out: JSON = {"prompt": prompt, "max_length": limit or max_length}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    for key in ("repeat_penalty", "repetition_penalty"):  # KoboldCpp's aliases of rep_pen
        if body.get(key) is not None:
            out["rep_pen"] = body[key]
    if body.get("seed") is not None:
        out["sampler_seed"] = body["seed"]
    out.update({k: v for k, v in body.items() if k in _KOBOLD_FIELDS and v is not None})
    if stops:
        out["stop_sequence"] = stops
        out["trim_stop"] = True
    if images:
        out["images"] = images
    return out, stops


def _messages(messages: list[JSON], images: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.get("role", ""))
        if role is None or message.get("tool_calls"):
            raise _refuse(
                f"messages[{i}].role", f"take '{message.get('role')}' messages or tool calls"
            )
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.get("type") == "text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "image_url":
                    images.append(_base64_image(part, f"messages[{i}].content[{j}].image_url.url"))
                else:
                    raise _refuse(f"messages[{i}].content[{j}]", f"take {part.get('type')} parts")
            content = "".join(texts)
        out.append((role, content or ""))
    return out


def _base64_image(part: JSON, param: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise _refuse(param, "fetch images; send them as data:image/...;base64 URLs")
    return url.partition(";base64,")[2]


class _NoRoute(BackendError):
    """HTTP 404 for a path: the original KoboldAI lacks KoboldCpp's /api/extra endpoints."""

    retryable = False


class KoboldModel(ModelEntry):
    """A model a Kobold API server serves."""

    chat_format: str | None = Field(
        None, description="the template that turns a chat into its prompt (TEMPLATES); chatml"
    )


class KoboldConfig(ProviderConfig):
    """A provider of type ``kobold`` (or ``koboldai``)."""

    models: Sequence[KoboldModel] = Field(default_factory=list)
    default_max_tokens: int | None = Field(
        None, ge=1, description="max_length sent when a request gives none (KOBOLD_MAX_LENGTH)"
    )


class KoboldProvider(HttpProvider):
    """KoboldCpp (or the original KoboldAI) through its native Kobold API."""

    dialect: ClassVar[str] = "kobold"
    settings: ClassVar[type[ProviderConfig]] = KoboldConfig
    config: KoboldConfig
    default_port = 5001
    # Usage is counted by the provider itself (on the rendered prompt) when the client asks.
    stream_usage = True
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        embeddings=False, tools=False, vision=False, json_schema=False
    )

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.templates: dict[str, Template] = {}
        for i, entry in enumerate(self.config.models):
            chosen = entry.chat_format or DEFAULT_TEMPLATE
            if chosen not in TEMPLATES:
                raise ConfigError(
                    f"invalid configuration:\n  providers.{name}.models.{i}.chat_format: unknown "
                    f"template {chosen!r} for the kobold dialect; allowed: "
                    f"{', '.join(sorted(TEMPLATES))}"
                )
            self.templates[entry.name] = TEMPLATES[chosen]
        self.max_length = self.config.default_max_tokens or KOBOLD_MAX_LENGTH
        self._native_stream = True  # until the backend says it has no stream endpoint
        self._can_count = True  # until it says it has no token counter

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        return endpoint.rstrip("/").removesuffix("/api/v1").removesuffix("/api")

    def template(self, model: str) -> Template:
        return self.templates.get(model) or TEMPLATES[DEFAULT_TEMPLATE]

    def _plan(self, call: Call) -> tuple[JSON, list[str]]:
        if call.kind == "embedding":
            raise _refuse("model", "compute embeddings")
        return to_kobold(call.kind, call.body, self.template(call.model), self.max_length)

    async def complete(self, call: Call) -> JSON:
        payload, stops = self._plan(call)
        obj = await self.call_json("POST", "/api/v1/generate", payload)
        results = obj.get("results") if isinstance(obj, dict) else None
        first = results[0] if isinstance(results, list) and results else None
        if not isinstance(first, dict) or not isinstance(first.get("text"), str):
            raise BackendProtocolError(
                f"backend '{self.name}' answered /api/v1/generate without results[0].text",
                backend=self.name,
            )
        text, stopped = cut_at_stop(first["text"], stops)
        finish = "stop" if stopped else str(first.get("finish_reason") or "stop")
        if isinstance(first.get("prompt_tokens"), int) and isinstance(
            first.get("completion_tokens"), int
        ):  # newer KoboldCpp reports them
            used = usage_dict(first["prompt_tokens"], first["completion_tokens"])
        else:
            used = await count_usage(
                self.count_tokens, call.model, payload["prompt"], text, at_once=True
            )
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": finish}
        if call.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        made = reply_id(call.kind)
        return reply_body(call.kind, made, int(time.time()), call.model, [choice], used)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        payload, _ = self._plan(call)
        if self._native_stream:
            try:
                async for chunk in self._native(call, payload, wants_usage):
                    yield chunk
                return
            except _NoRoute:
                self._native_stream = False  # the original KoboldAI: no streaming at all
        result = await self.complete(call)
        for data in chunks_from_response(result, call.kind):
            if data["choices"] or wants_usage:
                yield Chunk(data)

    async def _native(self, call: Call, payload: JSON, wants_usage: bool) -> AsyncIterator[Chunk]:
        chunks = ChunkMaker(call.kind, call.model)
        pieces: list[str] = []
        finish: str | None = None
        async with self.request("POST", "/api/extra/generate/stream", payload) as resp:
            decoder = SSEDecoder()
            async for block in resp.content.iter_any():
                for event in decoder.feed(block):
                    token, finish = self._token(event.data, event.event)
                    if token:
                        pieces.append(token)
                        yield Chunk(_piece(chunks, token, len(pieces) == 1))
                    if finish is not None:
                        break
                if finish is not None:  # KoboldCpp sends no [DONE]: this was the last event
                    break
        if finish is None:
            raise BackendUnavailableError(
                f"backend '{self.name}' closed the stream before it was done", backend=self.name
            )
        if not pieces and call.kind == "chat":  # nothing generated: the role still comes first
            yield Chunk(_piece(chunks, "", True))
        yield Chunk(chunks.choice({}, finish) if chunks.chat else chunks.text("", finish))
        if wants_usage:
            text = "".join(pieces)
            used = await count_usage(
                self.count_tokens, call.model, payload["prompt"], text, at_once=True
            )
            yield Chunk(chunks.usage(used))

    def _token(self, data: bytes, event: str | None) -> tuple[str, str | None]:
        """One stream event's token and finish reason (None while generating)."""
        if event not in (None, "message"):
            return "", None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise BackendProtocolError(
                f"backend '{self.name}' sent a malformed stream event: {data[:120]!r}",
                backend=self.name,
            )
        reason = obj.get("finish_reason")
        finish = None if reason in (None, "null", "") else str(reason)  # "null": a string (§16.2)
        return str(obj.get("token") or ""), finish

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        error = super().error_from_reply(status, body, headers)
        if status == 404 and type(error) is BackendError:
            return _NoRoute(error.message, backend=self.name)
        return error

    async def count_tokens(self, model: str, text: str) -> int | None:
        if not self._can_count:
            return None
        try:
            result = await self.call_json("POST", "/api/extra/tokencount", {"prompt": text})
        except _NoRoute:
            self._can_count = False  # the original KoboldAI cannot count
            return None
        value = result.get("value") if isinstance(result, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    async def list_models(self) -> list[ModelInfo]:
        result = await self.call_json("GET", "/api/v1/model", timeout=self.config.timeout)
        name = result.get("result") if isinstance(result, dict) else None
        if not isinstance(name, str) or not name:
            raise BackendProtocolError(
                f"backend '{self.name}' answered /api/v1/model without a 'result' name",
                backend=self.name,
            )
        return [ModelInfo(name, self.name)]

    async def probe(self) -> Health:
        health = await self.probe_path("/api/extra/version")
        if not health.ok and "HTTP 404" in health.detail:  # the original KoboldAI
            return await self.probe_path("/api/v1/info/version")
        return health

    def matches(self, requested: str, served: str) -> bool:
        # KoboldCpp names its one model "koboldcpp/<name>"; the bare name means it too.
        return requested == served or served.endswith("/" + requested)


def _piece(chunks: ChunkMaker, text: str, first: bool) -> JSON:
    if not chunks.chat:
        return chunks.text(text)
    return chunks.choice({"role": "assistant", "content": text} if first else {"content": text})
