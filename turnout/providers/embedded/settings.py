"""The embedded backend's settings: what a provider of type ``embedded`` and each of its models
may set beyond what every dialect reads (turnout/config.py's `ProviderConfig` and `ModelEntry`).

The keys are the same flat keys the YAML always had (``providers.local.models_dir``,
``models: [{name: m, n_ctx: 4096}]``); these models add them to the configuration schema for this
dialect only, so one under another type is an unknown setting naming the keys allowed there. A new
engine option is one field here, on `EmbeddedModel` (per model) or `EmbeddedConfig` (per provider).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ...config import ModelEntry, ProviderConfig
from ...wire.durations import parse_keep_alive

__all__ = ["EmbeddedConfig", "EmbeddedModel", "Engine", "KeepAlive"]


def _keep_alive(value: float | str | None) -> float | str | None:
    if value is not None:
        parse_keep_alive(value)  # raises ValueError saying what is allowed
    return value


#: idle time before a local model unloads: seconds, a duration like "10m", or -1 (never)
KeepAlive = Annotated[float | str | None, AfterValidator(_keep_alive)]
#: how a local model runs (provider.py); auto picks by the model's format
Engine = Literal["auto", "llama-cpp", "llama-server", "transformers", "onnx"]


class EmbeddedModel(ModelEntry):
    """A model the embedded backend serves, with its engine settings."""

    path: str | None = None
    chat_format: str | None = None
    n_ctx: int = Field(2048, ge=64)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)
    embedding: bool = False
    # Lifecycle and resources (scheduler.py).
    use_mmap: bool = True
    use_mlock: bool = False
    max_memory_mb: int | None = Field(None, ge=1, description="refuse to load above this estimate")
    keep_alive: KeepAlive = Field(None, description="idle time before unloading")
    engine: Engine = Field(
        "auto",
        description="auto (by the model's format: gguf llama-cpp, safetensors transformers, "
        "onnx onnx), in-process llama.cpp, a managed llama-server, transformers, onnxruntime-genai",
    )


class EmbeddedConfig(ProviderConfig):
    """A provider of type ``embedded``: its models and their lifecycle."""

    models: Sequence[EmbeddedModel] = Field(default_factory=list)
    models_dir: str | None = Field(None, description="serve every model file found here")
    max_models_loaded: int | None = Field(None, ge=1)
    max_memory_mb: int | None = Field(None, ge=1, description="budget for all loaded models")
    keep_alive: KeepAlive = Field(None, description="idle time before unloading")
    swap_after_seconds: float = Field(
        5.0, ge=0, description="how long a waiting model lets a busy one keep taking requests"
    )
    engine: Engine = "auto"
    llama_server: str | None = Field(
        None, description="llama-server binary, or 'llama-cpp-python' for its Python server"
    )
