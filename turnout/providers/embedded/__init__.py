"""The embedded backend: models served in-process (llama.cpp, transformers, onnxruntime-genai) or by
a `llama-server` that turnout manages, behind one `Provider`.

Everything the backend needs lives in this package: the provider (`provider`), the lifecycle
scheduler (`scheduler`), the engines (`llama_engine`, `thread_engine`, `torch_engine`,
`onnx_engine`, `server_engine`), llama-cpp-python's wire (`llama_wire`) and token text handling
(`token_text`). The offline file tools it reads models with (formats, the models directory,
downloads, conversions) live in `turnout.models`, which imports nothing from here.
"""

from .choice import (
    ENGINE_BY_FORMAT,
    ENGINES_OF_FORMAT,
    default_engine,
    model_format,
    thread_engine_class,
)
from .provider import DEFAULT_MODEL, EmbeddedProvider, default_model_path

__all__ = [
    "DEFAULT_MODEL",
    "ENGINES_OF_FORMAT",
    "ENGINE_BY_FORMAT",
    "EmbeddedProvider",
    "default_engine",
    "default_model_path",
    "model_format",
    "thread_engine_class",
]
