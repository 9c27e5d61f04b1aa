"""The provider contract every backend dialect implements, and the values that cross it.

A provider turns a validated OpenAI-shaped request into a call on its backend and answers in
OpenAI's shapes: a response dict, or a stream of `Chunk`s. It raises only `turnout.errors`
exceptions. It never retries or picks another backend: that is the router's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import ModelEntry, ProviderConfig

__all__ = ["Call", "Capabilities", "Chunk", "Health", "ModelInfo", "Provider", "Usage", "needs"]

JSON = dict[str, Any]

_CAPABILITIES_KEPT = 1024  # models whose capabilities a provider keeps (see `capabilities`)


@dataclass(slots=True)
class Call:
    """One request as the provider sees it: the client's body with ``model`` set to the backend's
    own model name, and the stream settings the gateway decided."""

    kind: str  # "chat" | "completion" | "embedding"
    body: JSON
    model: str
    stream: bool = False


@dataclass(slots=True)
class Chunk:
    """One OpenAI stream chunk. ``raw`` holds the backend's JSON bytes when they can be forwarded
    unchanged, so a pass-through stream is never re-serialised."""

    data: JSON
    raw: bytes | None = None


@dataclass(slots=True, frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def to_openai(self) -> JSON:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(slots=True, frozen=True)
class ModelInfo:
    id: str
    owned_by: str
    created: int = 0
    meta: JSON = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Capabilities:
    """What a backend can do for one model. Dialects set their defaults; a model entry in the
    configuration overrides them (``supports_tools``, ``supports_vision``, ``context_length``,
    and the provider's ``streaming``). A request that needs something a target lacks is never
    sent to that target."""

    chat: bool = True
    completion: bool = True
    embeddings: bool = True
    streaming: bool = True
    tools: bool = True
    vision: bool = False
    json_schema: bool = True
    context_length: int | None = None

    def lacks(self, required: frozenset[str]) -> list[str]:
        """The names in ``required`` (see `needs`) this model cannot do, in a stable order."""
        return sorted(name for name in required if not getattr(self, name))


_KIND_NEEDS = {"chat": "chat", "completion": "completion"}


def needs(kind: str, body: JSON) -> frozenset[str]:
    """The capabilities a validated request needs: ``chat``/``completion``/``embeddings``, plus
    ``streaming``, ``tools``, ``vision`` and ``json_schema`` when the request uses them."""
    required = {_KIND_NEEDS.get(kind, "embeddings")}
    if body.get("stream"):
        required.add("streaming")
    if body.get("tools") and body.get("tool_choice") != "none":
        required.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        required.add("json_schema")
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "image_url" for p in content
        ):
            required.add("vision")
            break
    return frozenset(required)


@dataclass(slots=True, frozen=True)
class Health:
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


class Provider(ABC):
    """A backend dialect. Subclasses override what their backend speaks.

    Lifecycle: `start()` inside the event loop before the first call, `close()` at shutdown.
    Concurrency: if ``max_concurrency`` is set, calls beyond it wait in order (never fail).
    """

    dialect: ClassVar[str]
    #: whether the backend reports usage in streams when asked
    stream_usage: bool = True

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self._slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        #: model -> (reported, config, capabilities) of the last `capabilities` answer
        self._capabilities: dict[str, tuple[Capabilities, ProviderConfig, Capabilities]] = {}

    @property
    def declared_models(self) -> list[ModelEntry]:
        return self.config.models

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or load engines."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything `start` acquired."""

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models the backend serves now, asked of the backend."""

    @abstractmethod
    async def probe(self) -> Health:
        """A cheap liveness check."""

    @abstractmethod
    async def complete(self, call: Call) -> JSON:
        """A non-streaming chat or text completion, or an embedding, in OpenAI's shape."""

    @abstractmethod
    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        """A streaming chat or text completion as OpenAI chunks (no ``[DONE]``)."""

    #: what this dialect can do unless the configuration says otherwise
    default_capabilities: ClassVar[Capabilities] = Capabilities()

    def reported_capabilities(self, model: str) -> Capabilities:
        """What the backend itself says the model can do (Ollama's ``/api/show``), learned off
        the request path; the dialect's defaults where it says nothing."""
        return self.default_capabilities

    def capabilities(self, model: str) -> Capabilities:
        """What the backend reports (or the dialect's defaults), overridden by what the
        configuration declares for the model (`configured_capabilities`).

        Asked on every attempt (and by strategies), so the answer is kept per model and reused
        while the reported capabilities and the configuration are the same objects: a refresh
        that learns new ones (Ollama's ``/api/show``, an engine loaded) replaces them."""
        reported = self.reported_capabilities(model)
        config = self.config
        cached = self._capabilities.get(model)
        if cached is not None and cached[0] is reported and cached[1] is config:
            return cached[2]
        caps = self.configured_capabilities(model, reported)
        if len(self._capabilities) >= _CAPABILITIES_KEPT:  # model names a client made up
            self._capabilities.clear()
        self._capabilities[model] = (reported, config, caps)
        return caps

    def configured_capabilities(self, model: str, reported: Capabilities) -> Capabilities:
        """``reported`` overridden by what the configuration declares for ``model``."""
        caps = reported
        updates: dict[str, object] = {}
        if self.config.streaming is not None:
            updates["streaming"] = self.config.streaming
        for entry in self.config.models:
            if entry.name == model:
                if entry.supports_tools is not None:
                    updates["tools"] = entry.supports_tools
                if entry.supports_vision is not None:
                    updates["vision"] = entry.supports_vision
                if entry.context_length is not None:
                    updates["context_length"] = entry.context_length
        return dataclasses.replace(caps, **updates) if updates else caps  # type: ignore[arg-type]

    async def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens in ``text`` by the model's tokenizer (no BOS), or None if it cannot say."""
        return None

    def matches(self, requested: str, served: str) -> bool:
        """Whether a requested model name means a served one (dialects may normalise tags)."""
        return requested == served

    async def acquire(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
