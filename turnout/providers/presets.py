"""Runtimes as data: each preset names its dialect, default port, paths and known quirks.

Adding a runtime that speaks an existing dialect is one entry here, not new code. Facts come from
``shared/reference/runtimes.md`` (ports, health endpoints, usage-in-stream support, concurrency).

Each runtime also declares its `Signature`: what its answers look like, so that discovery
(turnout/providers/discovery.py, one generic prober) can tell it apart on a port, read its version
and list its models. Signatures are tried by ``rank``, the most specific first.

Cloud services: ``openai-cloud`` is OpenAI's own API as a preset of the OpenAI-compatible dialect
(type ``openai`` stays the generic dialect for anything that speaks it); ``anthropic`` and
``gemini`` are dialects of their own. All three need an ``api_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ANSWER_TOKENS",
    "API_KEY_REQUIRED",
    "DIALECTS",
    "DIALECT_ENDPOINTS",
    "DIALECT_ENV",
    "DIALECT_NATIVE",
    "DIALECT_PORTS",
    "DIALECT_SIGNATURES",
    "KEY_HEADERS",
    "PRESETS",
    "EnvEndpoint",
    "Listed",
    "Match",
    "ModelList",
    "Preset",
    "Probe",
    "Signature",
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

#: client dialects a dialect used directly serves natively (passthrough, as `Preset.native`)
DIALECT_NATIVE: dict[str, dict[str, str]] = {
    # Ollama's own API (docs/api.md): what the Ollama front speaks
    "ollama": {"ollama/chat": "/api/chat", "ollama/generate": "/api/generate"},
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

#: headers that carry an API key (OpenAI's, Anthropic's, Gemini's): one configured under
#: ``headers`` stands in for a required ``api_key`` (a key added by a proxy, say)
KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key"})


@dataclass(frozen=True, slots=True)
class EnvEndpoint:
    """An environment variable whose URL adds a provider of a type, named after the type."""

    variable: str
    suffix: str = ""  # dropped from the URL's end


#: providers added by the environment (source document 003's web app): type -> its variable
DIALECT_ENV: dict[str, EnvEndpoint] = {
    "ollama": EnvEndpoint("OLLAMA_BASE_URL", suffix="/api"),  # clients often give .../api
}


@dataclass(frozen=True, slots=True)
class Probe:
    """A check of the answer to ``GET path`` (discovery asks every declared path at once)."""

    path: str
    status: Literal["ok", "any"] | tuple[int, ...] = "ok"  # a 2xx, any answer, or one of these
    key: str | None = None  # the answer is a JSON object with this key ...
    value: str | None = None  # ... whose value is this
    shape: Literal["", "json", "object"] = ""  # the answer is JSON, or a JSON object
    text: str | None = None  # the body contains this, in any case
    html: bool = True  # False: an HTML page does not count (a web server answering every path)


@dataclass(frozen=True, slots=True)
class Listed:
    """A check of the entries ``GET /v1/models`` lists."""

    owned_by: str | None = None  # an entry's ``owned_by`` is this
    unowned: bool = False  # an entry has no ``owned_by``
    key: str | None = None  # an entry has this key


@dataclass(frozen=True, slots=True)
class Match:
    """Checks that together name a runtime, and what to tell people when they do."""

    checks: tuple[Probe | Listed, ...]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ModelList:
    """Where a runtime lists its models: the JSON answer's ``key`` holds entries named by
    ``field``, or (``field`` None) one model's name."""

    path: str = "/v1/models"
    key: str = "data"
    field: str | None = "id"


@dataclass(frozen=True, slots=True)
class Signature:
    """How discovery tells a runtime by its answers: it is this one when every check of one of
    ``matches`` holds, and no signature of a lower ``rank`` matched."""

    label: str  # what it is, for people
    rank: int
    matches: tuple[Match, ...]
    version: tuple[str, str] | None = None  # (path, key) of the JSON answer naming its version
    models: ModelList = ModelList()
    ports: tuple[int, ...] = ()  # default ports besides the preset's (runtimes.md's, say)


def _is(
    label: str,
    rank: int,
    *checks: Probe | Listed,
    version: tuple[str, str] | None = None,
    models: ModelList = ModelList(),
    ports: tuple[int, ...] = (),
) -> Signature:
    """A signature of one match (the common case)."""
    return Signature(label, rank, (Match(checks),), version, models, ports)


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
    signature: Signature | None = None  # None: discovery never names it
    #: client dialects the runtime serves itself, each at its route: a request of that dialect
    #: is relayed as it came, the reply's bytes back (turnout/providers/relay.py), unless the
    #: provider says ``passthrough: false``. Names are the fronts': ``messages`` (Anthropic
    #: Messages), ``responses`` (OpenAI Responses), ``ollama/chat``, ``ollama/generate``.
    native: dict[str, str] = field(default_factory=dict, hash=False)


PRESETS: dict[str, Preset] = {
    # llama.cpp's own llama-server: /health answers 503 while loading; usage in streams when asked.
    # Its tools need --jinja; told otherwise, turnout holds tools to a JSON schema itself.
    "llamacpp": Preset(
        "openai",
        8080,
        health_path="/health",
        tokenize_path="/tokenize",
        quirks=frozenset({"jinja_tools"}),
        # Anthropic's Messages API at /v1/messages (tools/server/README.md since PR #17570,
        # November 2025; tool use needs --jinja there too)
        native={"messages": "/v1/messages"},
        signature=Signature(
            "llama.cpp server",
            50,
            (Match((Probe("/props", shape="json"),)), Match((Listed(owned_by="llamacpp"),))),
            ports=(9931,),  # the newest builds' default (runtimes.md)
        ),
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
        signature=_is("llama-cpp-python server", 60, Listed(owned_by="me")),
    ),
    # vLLM marks max_tokens deprecated; stream_options without stream:true is a 400 (never sent).
    "vllm": Preset(
        "openai",
        8000,
        health_path="/health",
        token_field="max_completion_tokens",
        # OpenAI's Responses API at /v1/responses (docs: serving/online_serving, "Supported
        # APIs"); newer releases also list Anthropic's /v1/messages, older ones lack it
        native={"responses": "/v1/responses"},
        signature=Signature(
            "vLLM",
            70,
            (
                Match((Listed(owned_by="vllm"),)),
                Match((Probe("/version", key="version"), Probe("/health", status="any"))),
            ),
            version=("/version", "version"),
        ),
    ),
    # LocalAI: /readyz answers 503 "starting" while it loads its models.
    "localai": Preset(
        "openai",
        8080,
        health_path="/readyz",
        signature=Signature(
            "LocalAI",
            20,
            (
                Match((Probe("/readyz", html=False),)),
                Match(
                    (Probe("/readyz", status=(503,), text="starting", html=False),),
                    detail="still starting",
                ),
            ),
        ),
    ),
    "lmstudio": Preset(
        "openai", 1234, signature=_is("LM Studio", 110, Probe("/api/v0/models", shape="json"))
    ),
    # Jan: an API key is mandatory and errors are plain text (http.error_message reads them).
    # (Discovery: Swagger at /, and /v1/models wants the key.)
    "jan": Preset(
        "openai",
        1337,
        signature=Signature(
            "Jan",
            150,
            (
                Match(
                    (Probe("/", status="any", text="swagger"), Probe("/v1/models", status=(401,))),
                    detail="needs its API key (providers.<name>.api_key)",
                ),
            ),
        ),
    ),
    # TabbyAPI: CRLF SSE, and its usage chunk repeats the finish choice (split apart on arrival).
    "tabbyapi": Preset(
        "openai",
        5000,
        health_path="/health",
        signature=Signature(
            "TabbyAPI",
            40,
            (Match((Probe("/health", key="issues"),)), Match((Listed(owned_by="tabbyAPI"),))),
        ),
    ),
    # MLX: 411 without Content-Length (aiohttp sends it for the bytes body), no embeddings.
    "mlx": Preset(
        "openai",
        8080,
        health_path="/health",
        default_max_tokens={"chat": ANSWER_TOKENS, "completion": ANSWER_TOKENS},
        lacks=frozenset({"embeddings"}),
        signature=_is(
            "MLX (mlx_lm.server)", 100, Probe("/health", shape="object"), Listed(unowned=True)
        ),
    ),
    # mistral.rs (runtimes.md: port 1234; source document 002: 8080): usage rides on the finish
    # chunk whatever stream_options says; named agentic events are skipped; errors {"message"}.
    "mistralrs": Preset(
        "openai",
        8080,
        health_path="/health",
        signature=_is("mistral.rs", 90, Listed(key="tools_available"), ports=(1234,)),
    ),
    # FastChat's API server (runtimes.md: port 8000; source document 002: 7860): no usage in
    # streams, no stream_options, no tools; every error is HTTP 400 with a FastChat code.
    "fastchat": Preset(
        "openai",
        7860,
        stream_usage=False,
        quirks=frozenset({"fastchat_error_codes"}),
        lacks=frozenset({"tools", "json_schema"}),
        signature=_is("FastChat", 130, Listed(owned_by="fastchat"), ports=(8000,)),
    ),
    "textgen": Preset(
        "openai",
        5000,
        health_path="/v1/internal/health",
        signature=_is("text-generation-webui", 80, Probe("/v1/internal/health", key="status")),
    ),
    # KoboldCpp's OpenAI emulation (the native API is the `kobold` dialect): usage hard-coded to
    # 100/100/200 (recounted), tools ignored without tool_choice, finish_reason "null" strings,
    # no blank line after [DONE], no stream_options, no embeddings (Oct-2024 snapshot). Discovery
    # names KoboldCpp by the native dialect's signature (the native API is preferred).
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

#: signatures of the dialects used directly, as a runtime of their own
_KOBOLD_MODEL = ModelList("/api/v1/model", "result", None)  # {"result": "koboldcpp/<name>"}
DIALECT_SIGNATURES: dict[str, Signature] = {
    # KoboldCpp, before Ollama: newer KoboldCpp emulates Ollama's API too.
    "kobold": _is(
        "KoboldCpp",
        10,
        Probe("/api/extra/version", key="result", value="KoboldCpp"),
        version=("/api/extra/version", "version"),
        models=_KOBOLD_MODEL,
    ),
    "ollama": _is(
        "Ollama",
        30,
        Probe("/", status="any", text="Ollama is running"),
        version=("/api/version", "version"),
        models=ModelList("/api/tags", "models", "name"),
    ),
    "gpt4all": _is("GPT4All", 120, Listed(owned_by="humanity")),
    # The original KoboldAI (runtimes.md: port 5000).
    "koboldai": _is(
        "KoboldAI",
        140,
        Probe("/api/v1/info/version", key="result"),
        version=("/api/v1/info/version", "result"),
        models=_KOBOLD_MODEL,
        ports=(5000,),
    ),
    # Anything else that lists models the OpenAI way, or wants a key for the list: last.
    "openai": Signature(
        "OpenAI-compatible server",
        1000,
        (
            Match((Probe("/v1/models", key="data"),)),
            Match((Probe("/v1/models", status=(401, 403)),), detail="needs an API key"),
        ),
    ),
}

#: provider types that cannot start without an api_key
API_KEY_REQUIRED: frozenset[str] = frozenset(
    {*DIALECT_ENDPOINTS, *(name for name, preset in PRESETS.items() if preset.api_key_required)}
)
