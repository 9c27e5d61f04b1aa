"""Runtimes as data: each preset names its dialect, default port, paths and known quirks.

Adding a runtime that speaks an existing dialect is one entry here, not new code. Facts come from
``shared/reference/runtimes.md`` (ports, health endpoints, usage-in-stream support, concurrency).

Cloud services: ``openai-cloud`` is OpenAI's own API as a preset of the OpenAI-compatible dialect
(type ``openai`` stays the generic dialect for anything that speaks it); ``anthropic`` and
``gemini`` are dialects of their own. All three need an ``api_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ANSWER_TOKENS",
    "API_KEY_REQUIRED",
    "DIALECTS",
    "DIALECT_ENDPOINTS",
    "DIALECT_PORTS",
    "PRESETS",
    "Preset",
]

#: dialect name -> "module:Class" (imported only when configured)
DIALECTS: dict[str, str] = {
    "openai": "turnout.providers.openai_compat:OpenAICompatProvider",
    "ollama": "turnout.providers.ollama:OllamaProvider",
    "embedded": "turnout.providers.embedded:EmbeddedProvider",
    "gpt4all": "turnout.providers.gpt4all:GPT4AllProvider",
    "kobold": "turnout.providers.kobold:KoboldProvider",
    "koboldai": "turnout.providers.kobold:KoboldProvider",  # source document 002's name
    "anthropic": "turnout.providers.anthropic:AnthropicProvider",
    "gemini": "turnout.providers.gemini:GeminiProvider",
}

#: default port of a dialect used directly (no preset)
DIALECT_PORTS: dict[str, int] = {
    "ollama": 11434,
    "gpt4all": 4891,
    "kobold": 5001,
    "koboldai": 5001,
}

#: what a runtime answers when a client names no output limit is often tiny; this is sent instead
ANSWER_TOKENS = 2048

#: default base URL of a cloud dialect used directly
DIALECT_ENDPOINTS: dict[str, str] = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


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
    endpoint: str | None = None  # default base URL when it is not http://127.0.0.1:<port>
    token_field: str = "max_tokens"  # the name the backend reads for the output token limit
    api_key_required: bool = False  # start-up fails without providers.<name>.api_key
    vision: bool = False  # its models take image parts unless the configuration says otherwise
    #: output token limit sent, per request kind, when the client gives none: the runtime's own
    #: default is tiny (GPT4All 16, llama-cpp-python completions 16, MLX 512, KoboldCpp 180/400)
    default_max_tokens: dict[str, int] = field(default_factory=dict, hash=False)
    #: capabilities the runtime never has (names of `Capabilities` fields); the configuration
    #: still wins where it can declare one (``supports_tools``, ``streaming``)
    lacks: frozenset[str] = field(default_factory=frozenset)


PRESETS: dict[str, Preset] = {
    # llama.cpp's own llama-server: /health answers 503 while loading; usage in streams when asked.
    # Its tools need --jinja; told otherwise, turnout holds tools to a JSON schema itself.
    "llamacpp": Preset(
        "openai",
        8080,
        health_path="/health",
        tokenize_path="/tokenize",
        quirks=frozenset({"jinja_tools"}),
    ),
    # llama-cpp-python's server: no /health, no usage in streams, and a new request interrupts a
    # running stream (interrupt_requests=True), so it is served one request at a time, and
    # turnout's own calls (model list, tokenize) are made only within that one slot.
    "llama-cpp-python": Preset(
        "openai",
        8000,
        tokenize_path="/extras/tokenize",
        max_concurrency=1,
        stream_usage=False,
        # Its template chat formats ignore tools (only functionary / chatml-function-calling
        # call them), and it knows JSON schemas as {"type": "json_object", "schema": ...}:
        # turnout holds tools to a schema itself and spells response_format its way.
        quirks=frozenset(
            {
                "unknown_model_served",
                "traceback_errors",
                "tokenize_adds_bos",
                "interrupts_streams",
                "schema_tools",
                "json_object_schema",
            }
        ),
        default_max_tokens={"completion": ANSWER_TOKENS},  # chat: until the context is full
    ),
    # vLLM marks max_tokens deprecated; stream_options without stream:true is a 400 (never sent).
    "vllm": Preset("openai", 8000, health_path="/health", token_field="max_completion_tokens"),
    "localai": Preset("openai", 8080, health_path="/readyz"),
    "lmstudio": Preset("openai", 1234),
    # Jan: an API key is mandatory and errors are plain text (http.error_message reads them).
    "jan": Preset("openai", 1337),
    # TabbyAPI: CRLF SSE, and its usage chunk repeats the finish choice (split apart on arrival).
    "tabbyapi": Preset("openai", 5000, health_path="/health"),
    # MLX: 411 without Content-Length (aiohttp sends it for the bytes body), no embeddings.
    "mlx": Preset(
        "openai",
        8080,
        health_path="/health",
        default_max_tokens={"chat": ANSWER_TOKENS, "completion": ANSWER_TOKENS},
        lacks=frozenset({"embeddings"}),
    ),
    # mistral.rs (runtimes.md: port 1234; source document 002: 8080): usage rides on the finish
    # chunk whatever stream_options says; named agentic events are skipped; errors {"message"}.
    "mistralrs": Preset("openai", 8080, health_path="/health"),
    # FastChat's API server (runtimes.md: port 8000; source document 002: 7860): no usage in
    # streams, no stream_options, no tools; every error is HTTP 400 with a FastChat code.
    "fastchat": Preset(
        "openai",
        7860,
        stream_usage=False,
        quirks=frozenset({"fastchat_error_codes"}),
        lacks=frozenset({"tools", "json_schema"}),
    ),
    "textgen": Preset("openai", 5000, health_path="/v1/internal/health"),
    # KoboldCpp's OpenAI emulation (the native API is the `kobold` dialect): usage hard-coded to
    # 100/100/200 (recounted), tools ignored without tool_choice, finish_reason "null" strings,
    # no blank line after [DONE], no stream_options, no embeddings (Oct-2024 snapshot).
    "koboldcpp-openai": Preset(
        "openai",
        5001,
        health_path="/api/extra/version",
        tokenize_path="/api/extra/tokencount",
        stream_usage=False,
        quirks=frozenset({"fixed_usage", "tools_need_tool_choice"}),
        default_max_tokens={"chat": ANSWER_TOKENS, "completion": ANSWER_TOKENS},
        lacks=frozenset({"embeddings", "json_schema"}),
    ),
    # OpenAI's own API: its reasoning models refuse max_tokens ("Use 'max_completion_tokens'
    # instead"), and every model takes the new name, so the limit is always sent under it.
    "openai-cloud": Preset(
        "openai",
        443,
        endpoint="https://api.openai.com",
        token_field="max_completion_tokens",
        api_key_required=True,
        vision=True,
        quirks=frozenset({"developer_role"}),
    ),
}

#: provider types that cannot start without an api_key
API_KEY_REQUIRED: frozenset[str] = frozenset(
    {*DIALECT_ENDPOINTS, *(name for name, preset in PRESETS.items() if preset.api_key_required)}
)
