"""The provider contract every backend dialect implements, and the values that cross it.

A provider turns a validated OpenAI-shaped request into a call on its backend and answers in
OpenAI's shapes: a response dict, or a stream of `Chunk`s. It raises only `turnout.errors`
exceptions. It never retries or picks another backend: that is the router's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..config import ModelEntry, ProviderConfig
from ..errors import CapabilityError
from ..wire.openai import lacking
from ..wire.types import JSON, Call, Capabilities, Chunk, Kind, Native, Usage, needs

__all__ = [
    "JSON",
    "Call",
    "Capabilities",
    "Chunk",
    "Health",
    "Kind",
    "LocalFile",
    "LocalModels",
    "ModelInfo",
    "ModelStore",
    "Provider",
    "Usage",
    "needs",
]

_CAPABILITIES_KEPT = 1024  # models whose capabilities a provider keeps (see `capabilities`)


@dataclass(slots=True, frozen=True)
class ModelInfo:
    id: str
    owned_by: str
    created: int = 0
    meta: JSON = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Health:
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


@dataclass(slots=True, frozen=True)
class LocalFile:
    """A model file a backend serves from its models folder."""

    model: str  # the name it is served as
    path: Path
    engine: str  # the engine that runs it ("llama-cpp", "llama-server", "transformers", ...)


@runtime_checkable
class LocalModels(Protocol):
    """A backend that loads and unloads its models itself (the embedded engine): what the
    server's local-models API (turnout/server/models.py, ``GET /v1/providers``) and the CLI
    reach it through."""

    async def load_model(self, name: str, keep_alive: Any = None) -> float:
        """Load ``name`` now (``keep_alive``: how long it stays once idle); the seconds it
        took."""
        ...

    async def unload_model(self, name: str) -> bool:
        """Unload ``name`` once its running requests are done; whether it was loaded."""
        ...

    def status(self) -> list[JSON]:
        """The models in memory or on their way, one object each: ``name``, ``state`` (loaded,
        loading, queued, draining), ``progress``, ``active``, ``waiting``, ``expires_at``,
        ``engine``... An in-memory read: it never waits on a load or on I/O."""
        ...

    def load_stats(self) -> JSON:
        """Counters of what its loading did so far (loads, unloads, evictions...)."""
        ...

    def models_folder(self) -> str | None:
        """The folder it serves model files from (None: declared models only)."""
        ...

    def local_files(self) -> list[LocalFile]:
        """The files of that folder it serves, with the engine that runs each."""
        ...


@runtime_checkable
class ModelStore(Protocol):
    """A backend whose models are managed through its API (Ollama's): listed, shown, pulled,
    deleted, copied, created, pushed. The shapes are the backend's own; the gateway relays them
    (turnout/server/fronts/ollama_admin.py, ``turnout ollama``)."""

    async def tags(self) -> JSON:
        """The models installed (``{"models": [...]}``)."""
        ...

    async def ps(self) -> list[JSON]:
        """The models loaded now."""
        ...

    async def show(self, model: str, *, verbose: bool = False) -> JSON:
        """Details, parameters and capabilities of one model."""
        ...

    def pull(self, model: str, *, insecure: bool = False) -> AsyncIterator[JSON]:
        """Fetch ``model``: the progress objects as they come, ``{"status": "success"}`` last."""
        ...

    async def delete(self, model: str) -> None:
        """Remove ``model`` (an unknown one is `ModelNotFoundError`)."""
        ...

    async def copy(self, source: str, destination: str) -> None:
        """``source`` under a second name (an unknown source is `ModelNotFoundError`)."""
        ...

    def create(self, model: str, fields: JSON) -> AsyncIterator[JSON]:
        """Make ``model`` from ``fields`` (the backend's own: ``from``, ``system``,
        ``parameters``...): the progress objects as they come, ``{"status": "success"}``
        last."""
        ...

    def push(self, model: str, *, insecure: bool = False) -> AsyncIterator[JSON]:
        """Upload ``model`` to the registry its name names: progress, ``success`` last."""
        ...


class Provider(ABC):
    """A backend dialect. Subclasses override what their backend speaks.

    Lifecycle: `start()` inside the event loop before the first call, `close()` at shutdown.
    Concurrency: if ``max_concurrency`` is set, calls beyond it wait in order (never fail).
    """

    dialect: ClassVar[str]
    #: the configuration model of this dialect's providers: `ProviderConfig`, or a subclass
    #: declaring the dialect's own options (registered with turnout/config.py by __init__.py)
    settings: ClassVar[type[ProviderConfig]] = ProviderConfig
    #: whether the backend reports usage in streams when asked
    stream_usage: bool = True

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = self.settings.of(config)
        self._slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        #: model -> (reported, config, capabilities) of the last `capabilities` answer
        self._capabilities: dict[str, tuple[Capabilities, ProviderConfig, Capabilities]] = {}

    @property
    def declared_models(self) -> Sequence[ModelEntry]:
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

    def refusal(self, model: str, missing: list[str], body: JSON) -> CapabilityError:
        """The error for a request needing what ``model`` lacks (``missing``: names of
        `Capabilities` fields). The router decides that, before it calls; a dialect only words it
        (Anthropic has no embeddings API at all)."""
        return lacking(self.name, missing, body)

    async def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens in ``text`` by the model's tokenizer (no BOS), or None if it cannot say."""
        return None

    def relays(self, call: Call, native: Native) -> bool:
        """Whether ``call`` goes to the backend as ``native``, its client's own request, the
        reply's bytes relayed back (passthrough): the backend serves that dialect, passthrough
        is on, and nothing turnout does to a request (tool-schema mending, emulation, quirks)
        is needed. Asked by the router before each attempt; `complete` and `stream` then
        relay when ``call.native`` is set."""
        return False

    def matches(self, requested: str, served: str) -> bool:
        """Whether a requested model name means a served one (dialects may normalise tags)."""
        return requested == served

    async def acquire(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
