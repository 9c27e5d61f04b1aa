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

from pydantic import AfterValidator, Field, model_validator

from ...config import ModelEntry, ProviderConfig
from ...wire.durations import parse_keep_alive

__all__ = [
    "Device",
    "Dtype",
    "EmbeddedConfig",
    "EmbeddedModel",
    "Engine",
    "GpuLayers",
    "KeepAlive",
    "accelerator_defaults",
]


def _keep_alive(value: float | str | None) -> float | str | None:
    if value is not None:
        parse_keep_alive(value)  # raises ValueError saying what is allowed
    return value


#: idle time before a local model unloads: seconds, a duration like "10m", or -1 (never)
KeepAlive = Annotated[float | str | None, AfterValidator(_keep_alive)]
#: how a local model runs (provider.py); auto picks by the model's format
Engine = Literal["auto", "llama-cpp", "llama-server", "transformers", "onnx"]


def _gpu_layers(value: int | str) -> int | str:
    if isinstance(value, int) and value < -1:
        raise ValueError("must be a layer count, -1 (all) or 'auto'")
    return value


#: layers llama.cpp offloads: a count, -1 for all, or "auto" (what fits in free GPU memory)
GpuLayers = Annotated[int | Literal["auto"], AfterValidator(_gpu_layers)]
#: where the transformers engine runs: auto picks CUDA, then MPS, then the CPU
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")]
Dtype = Literal["auto", "float16", "bfloat16", "float32"]


class EmbeddedModel(ModelEntry):
    """A model the embedded backend serves, with its engine settings."""

    path: str | None = None
    chat_format: str | None = None
    n_ctx: int = Field(2048, ge=64)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: GpuLayers = Field(
        0,
        description="layers llama.cpp offloads to the GPU: a count, -1 for all, or auto (those "
        "that fit in the free GPU memory, from the GGUF's layer sizes and the KV cache for n_ctx)",
    )
    embedding: bool = False
    # Accelerators (the transformers engine, torch_engine.py and torch_batch.py).
    device: Device | None = Field(
        None, description="auto, cpu, cuda, cuda:N or mps; unset: the provider's"
    )
    dtype: Dtype | None = Field(None, description="weights' compute type; unset: the provider's")
    load_in_8bit: bool = Field(False, description="8-bit weights through bitsandbytes (CUDA)")
    load_in_4bit: bool = Field(False, description="4-bit (NF4) weights through bitsandbytes (CUDA)")
    max_batch: int | None = Field(
        None, ge=1, le=1024,
        description="requests generated together in one batch; unset: 64 on a GPU, 1 on the CPU",
    )  # fmt: skip
    cuda_graphs: bool = Field(True, description="decode in CUDA graphs (static KV cache)")
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

    @model_validator(mode="after")
    def _one_quantization(self) -> EmbeddedModel:
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("load_in_8bit and load_in_4bit: set one of them, not both")
        return self


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
    device: Device = Field("auto", description="the transformers engine's device for its models")
    dtype: Dtype = Field("auto", description="the transformers engine's compute type")
    llama_server: str | None = Field(
        None, description="llama-server binary, or 'llama-cpp-python' for its Python server"
    )


def accelerator_defaults(entry: EmbeddedModel, config: EmbeddedConfig) -> EmbeddedModel:
    """The provider's ``device`` and ``dtype`` for a model that sets none of its own."""
    update = {
        key: getattr(config, key) for key in ("device", "dtype") if getattr(entry, key) is None
    }
    return entry.model_copy(update=update) if update else entry
