"""Which engine serves a model: by its format under ``engine: auto``, or as configured."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...models.directory import ModelFile
from .thread_engine import ThreadEngine

__all__ = [
    "ENGINES_OF_FORMAT",
    "ENGINE_BY_FORMAT",
    "default_engine",
    "model_format",
    "thread_engine_class",
]

#: the engine ``engine: auto`` picks for each model format, and the engines that serve each
ENGINE_BY_FORMAT = {"gguf": "llama-cpp", "safetensors": "transformers", "onnx": "onnx"}
ENGINES_OF_FORMAT = {
    "gguf": ("llama-cpp", "llama-server"),
    "safetensors": ("transformers",),
    "onnx": ("onnx",),
}


def model_format(path: Path) -> str:
    """A model path's format: a Hugging Face folder is safetensors, an onnxruntime-genai folder
    onnx, a file by its suffix (GGUF when unknown: llama.cpp then says what is wrong)."""
    if path.is_dir():
        return "onnx" if (path / "genai_config.json").is_file() else "safetensors"
    return {".safetensors": "safetensors", ".onnx": "onnx"}.get(path.suffix.lower(), "gguf")


def default_engine(model: ModelFile) -> str | None:
    """The engine ``engine: auto`` runs a directory model on; None when none can (a lone
    safetensors or ONNX file without the folder around it)."""
    if model.format != "gguf" and not model.path.is_dir():
        return None
    return ENGINE_BY_FORMAT.get(model.format)


def thread_engine_class(kind: str) -> type[ThreadEngine]:
    """The engine class of ``transformers`` or ``onnx`` (imported only when used)."""
    if kind == "transformers":
        from .torch_engine import TransformersEngine

        return TransformersEngine
    try:
        from .onnx_engine import OnnxEngine
    except ImportError as exc:
        raise ConfigError(f"the onnx engine is not available here: {exc}") from None
    return OnnxEngine
