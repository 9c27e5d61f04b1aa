"""Runtimes as data: each preset names its dialect, default port, paths and known quirks.

Adding a runtime that speaks an existing dialect is one entry here, not new code. Facts come from
``shared/reference/runtimes.md`` (ports, health endpoints, usage-in-stream support, concurrency).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DIALECTS", "DIALECT_PORTS", "PRESETS", "Preset"]

#: dialect name -> "module:Class" (imported only when configured)
DIALECTS: dict[str, str] = {
    "openai": "turnout.providers.openai_compat:OpenAICompatProvider",
    "ollama": "turnout.providers.ollama:OllamaProvider",
    "embedded": "turnout.providers.embedded:EmbeddedProvider",
}

#: default port of a dialect used directly (no preset)
DIALECT_PORTS: dict[str, int] = {"ollama": 11434}


@dataclass(frozen=True, slots=True)
class Preset:
    """What turnout knows about one runtime that speaks an existing dialect."""

    dialect: str
    port: int
    health_path: str | None = None  # None: the models path doubles as the health probe
    tokenize_path: str | None = None
    max_concurrency: int | None = None
    stream_usage: bool = True  # honours stream_options.include_usage
    quirks: frozenset[str] = field(default_factory=frozenset)


PRESETS: dict[str, Preset] = {
    # llama.cpp's own llama-server: /health answers 503 while loading; usage in streams when asked.
    "llamacpp": Preset("openai", 8080, health_path="/health", tokenize_path="/tokenize"),
    # llama-cpp-python's server: no /health, no usage in streams, and a new request interrupts a
    # running stream (interrupt_requests=True), so it is served one request at a time, and
    # turnout's own calls (model list, tokenize) are made only within that one slot.
    "llama-cpp-python": Preset(
        "openai",
        8000,
        tokenize_path="/extras/tokenize",
        max_concurrency=1,
        stream_usage=False,
        quirks=frozenset(
            {"unknown_model_served", "traceback_errors", "tokenize_adds_bos", "interrupts_streams"}
        ),
    ),
    "vllm": Preset("openai", 8000, health_path="/health"),
    "localai": Preset("openai", 8080, health_path="/readyz"),
    "lmstudio": Preset("openai", 1234),
    "jan": Preset("openai", 1337),
    "tabbyapi": Preset("openai", 5000, health_path="/health"),
    "mlx": Preset("openai", 8080, health_path="/health"),
    "mistralrs": Preset("openai", 8080, health_path="/health"),
    "fastchat": Preset("openai", 7860, stream_usage=False),
    "textgen": Preset("openai", 5000, health_path="/v1/internal/health"),
}
