"""Configuration: one YAML file plus environment variables, validated once at start-up.

Sources, later ones winning: the YAML file (``--config`` or ``TURNOUT_CONFIG``), then
``OPENAI_COMPATIBLE_DATA`` and ``OLLAMA_BASE_URL`` (providers added by environment, as the web app
of source document 003 does), then ``TURNOUT_<SECTION>__<KEY>`` overrides, e.g.
``TURNOUT_SERVER__PORT=9000`` or ``TURNOUT_PROVIDERS__LOCAL__API_KEY=...`` (values are read as
YAML scalars). Any invalid setting raises `ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .providers.presets import API_KEY_REQUIRED, DIALECTS, PRESETS

__all__ = [
    "Config",
    "DiscoveryConfig",
    "HealthConfig",
    "ModelEntry",
    "PathsConfig",
    "ProviderConfig",
    "RouteConfig",
    "ServerConfig",
    "load_config",
]

_ENV_PREFIX = "TURNOUT_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PROVIDER_TYPES = tuple(sorted(set(DIALECTS) | set(PRESETS)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    sse_keepalive_seconds: float = Field(10.0, gt=0)
    models_refresh_seconds: float = Field(60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_key: SecretStr | None = Field(
        None,
        min_length=1,
        description="required as 'Authorization: Bearer' by model-changing endpoints "
        "(turnout/server/admin.py); unset: they are open",
    )
    allow_unauthenticated: bool = Field(False, description="serve beyond loopback without keys")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed")


class StorageConfig(_Strict):
    """Keys and the usage ledger (turnout/store); Redis shares limits between instances."""

    database_url: str | None = Field(None, description="unset: SQLite in the data directory")
    redis_url: str | None = Field(None, description="shared limits, budgets, revocations")
    spool_path: str | None = Field(None, description="ledger rows while the database is down")
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=4096)


class LimitsConfig(_Strict):
    on_store_error: Literal["allow", "deny"] = "allow"  # Redis away: count locally, or 503
    user_rpm: int | None = Field(None, ge=1, description="per end user and endpoint")
    user_tpm: int | None = Field(None, ge=1)


class AuthConfig(_Strict):
    required: bool = Field(False, description="ask for a gateway key even before one exists")


def _keep_alive(value: float | str | None) -> float | str | None:
    from .wire.durations import parse_keep_alive

    if value is not None:
        parse_keep_alive(value)  # raises ValueError saying what is allowed
    return value


#: idle time before a local model unloads: seconds, a duration like "10m", or -1 (never)
KeepAlive = Annotated[float | str | None, AfterValidator(_keep_alive)]
#: how a local model runs (turnout/providers/embedded/provider.py); auto picks by the model's format
Engine = Literal["auto", "llama-cpp", "llama-server", "transformers", "onnx"]


class ModelEntry(_Strict):
    """A model a provider serves, with what the configuration knows about it.

    Accepts source document 003's ``{"apiName", "uiName", "supportsTools"}`` spelling too.
    Engine settings (``path``, ``chat_format``, ``n_ctx``, ``n_threads``...) are read by the
    embedded engine; HTTP providers ignore them.
    """

    name: str = Field(alias="apiName", min_length=1)
    display_name: str | None = Field(None, alias="uiName")
    supports_tools: bool | None = Field(None, alias="supportsTools")
    supports_vision: bool | None = Field(None, alias="supportsVision")
    context_length: int | None = Field(None, ge=1)
    path: str | None = None
    chat_format: str | None = None
    n_ctx: int = Field(2048, ge=64)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)
    embedding: bool = False
    # Local model lifecycle and resources (embedded engine; see turnout/models/).
    use_mmap: bool = True
    use_mlock: bool = False
    max_memory_mb: int | None = Field(None, ge=1, description="refuse to load above this estimate")
    keep_alive: KeepAlive = Field(None, description="idle time before unloading")
    engine: Engine = Field(
        "auto",
        description="auto (by the model's format: gguf llama-cpp, safetensors transformers, "
        "onnx onnx), in-process llama.cpp, a managed llama-server, transformers, onnxruntime-genai",
    )


class PathsConfig(_Strict):
    """Endpoint paths, relative to the provider's endpoint (source document 002's custom paths)."""

    chat: str | None = None
    completions: str | None = None
    embeddings: str | None = None
    models: str | None = None
    health: str | None = None
    tokenize: str | None = None

    @field_validator("*")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("a path must start with '/'")
        return v


class BreakerConfig(_Strict):
    """When a backend's circuit opens (turnout/routing/breaker.py): after ``failures`` failures in
    a row, or when ``failure_ratio`` of the last ``window`` calls failed; it stays open
    ``cooldown`` seconds, doubling on each failed trial up to ``max_cooldown``."""

    failures: int = Field(5, ge=1)
    failure_ratio: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=2)
    cooldown: float = Field(5.0, gt=0)
    max_cooldown: float = Field(60.0, gt=0)


class ProviderConfig(_Strict):
    type: str
    endpoint: str | None = None
    api_key: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    enabled: bool = True
    timeout: float = Field(300.0, gt=0, description="seconds to the first byte and between chunks")
    connect_timeout: float = Field(5.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_concurrency: int | None = Field(None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    streaming: bool | None = None
    default_max_tokens: int | None = Field(
        None,
        ge=1,
        description="output token limit sent when a request gives none (Anthropic requires one)",
    )
    # Local model lifecycle (embedded engine; see turnout/models/ and turnout/providers/embedded).
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
    # Routing (turnout/routing): prices, circuit breaker, queue and timeouts of this backend.
    cost_per_1k_input: float | None = Field(
        None, ge=0, description="price of 1,000 prompt tokens; unset: 0 for a local backend"
    )
    cost_per_1k_output: float | None = Field(None, ge=0)
    breaker: BreakerConfig = Field(default_factory=lambda: BreakerConfig())
    queue_size: int = Field(
        64, ge=0, description="requests that may wait for a slot beyond max_concurrency"
    )
    first_token_timeout: float | None = Field(None, gt=0, description="send to first chunk")
    total_timeout: float | None = Field(None, gt=0, description="one call, end of stream included")

    @model_validator(mode="before")
    @classmethod
    def _legacy_parameters(cls, data: Any) -> Any:
        """Fold source document 002's ``parameters:`` block into the flat settings."""
        if not isinstance(data, Mapping) or "parameters" not in data:
            return data
        data = dict(data)
        params = data.pop("parameters") or {}
        if not isinstance(params, Mapping):
            raise ValueError("'parameters' must be a mapping")
        params = dict(params)
        paths = dict(data.get("paths") or {})
        for legacy, key in (("model_endpoint", "models"), ("chat_endpoint", "chat")):
            if legacy in params:
                paths[key] = params.pop(legacy)
        if paths:
            data["paths"] = paths
        if "streaming_support" in params:
            data["streaming"] = params.pop("streaming_support")
        for key, value in params.items():
            data.setdefault(key, value)
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider type {v!r}; allowed: {', '.join(PROVIDER_TYPES)}")
        return v

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")

    @property
    def dialect(self) -> str:
        return PRESETS[self.type].dialect if self.type in PRESETS else self.type


#: route strategies (turnout/routing/strategies.py implements one function per name)
STRATEGIES = (
    "priority",
    "cost",
    "round_robin",
    "weighted",
    "least_latency",
    "least_busy",
    "capability",
    "prefix_affinity",
)
#: failure classes a retry policy may retry on the same backend
RETRY_CLASSES = ("connection", "timeout", "429", "5xx", "protocol", "model_not_found")


class RetryConfig(_Strict):
    max_retries: int | None = Field(None, ge=0, le=10, description="unset: the provider's")
    backoff_base: float = Field(0.1, ge=0)
    backoff_cap: float = Field(2.0, ge=0)
    retry_on: list[str] = Field(default_factory=lambda: list(RETRY_CLASSES[:5]))
    honour_retry_after: bool = True
    recovery_wait: float = Field(
        2.0, ge=0, description="how long a request waits for a cooling backend to recover"
    )

    @field_validator("retry_on", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = [str(c) for c in v]  # YAML reads 429 as a number
        for c in out:
            if c not in RETRY_CLASSES:
                allowed = ", ".join(RETRY_CLASSES)
                raise ValueError(f"unknown failure class {c!r}; allowed: {allowed}")
        return out


class TimeoutsConfig(_Strict):
    first_token: float | None = Field(None, gt=0, description="per attempt: send to first chunk")
    total: float | None = Field(None, gt=0, description="the whole request, retries included")


class RouteTargetConfig(_Strict):
    provider: str
    model: str | None = Field(None, min_length=1, description="unset: the route's name")
    weight: float = Field(1.0, ge=0)
    priority: int = 0
    cost_per_1k_input: float | None = Field(None, ge=0, description="unset: the provider's")
    cost_per_1k_output: float | None = Field(None, ge=0)


class RouteConfig(_Strict):
    strategy: Literal[STRATEGIES] = "priority"  # type: ignore[valid-type]
    targets: list[RouteTargetConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    timeouts: TimeoutsConfig = Field(default_factory=lambda: TimeoutsConfig())

    @model_validator(mode="after")
    def _some_weight(self) -> RouteConfig:
        if self.strategy == "weighted" and not any(t.weight > 0 for t in self.targets):
            raise ValueError("strategy 'weighted' needs a target with a weight above 0")
        return self


class HealthConfig(_Strict):
    """The background health monitor (turnout/routing/health.py)."""

    enabled: bool = True
    interval: float = Field(10.0, gt=0, description="seconds between probes of each backend")
    timeout: float = Field(2.0, gt=0, description="a probe slower than this counts as down")


class DiscoveryConfig(_Strict):
    """Finding local runtimes by their default ports (turnout/discovery.py); ``discovery: true``
    is short for ``discovery: {enabled: true}``."""

    enabled: bool = False
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1)
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        None, description="ports to probe; unset: every runtime preset's default port"
    )
    interval_seconds: float = Field(60.0, gt=0, description="how often to look again")
    timeout: float = Field(1.0, gt=0, description="seconds a probe may take")

    @model_validator(mode="before")
    @classmethod
    def _flag(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


class Config(_Strict):
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    default_embedded: bool = Field(
        True, description="serve the embedded engine when no provider is configured"
    )
    models_dir: str = Field("./models", description="where `turnout models` finds and puts models")
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    health: HealthConfig = Field(default_factory=lambda: HealthConfig())
    discovery: DiscoveryConfig = Field(default_factory=lambda: DiscoveryConfig())
    storage: StorageConfig = Field(default_factory=lambda: StorageConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_names(cls, v: Any) -> Any:
        for name in v if isinstance(v, Mapping) else ():
            if not _NAME.match(name) or "/" in name:
                raise ValueError(
                    f"provider name {name!r} must be letters, digits, '.', '_' or '-' (no '/')"
                )
        return v

    @model_validator(mode="after")
    def _aliases_resolve(self) -> Config:
        for alias, target in self.aliases.items():
            if target in self.aliases:
                raise ValueError(
                    f"aliases.{alias}: points at another alias {target!r}; "
                    "an alias must name a model or provider/model"
                )
            # "org/model" with an unconfigured prefix is a bare model name (Hugging Face style),
            # which the catalog resolves by asking the providers; it is not an error here.
        return self

    @model_validator(mode="after")
    def _routes_resolve(self) -> Config:
        _check_routes(self)
        return self

    @model_validator(mode="after")
    def _cloud_api_keys(self) -> Config:
        """A cloud provider without a key would fail every request with 401: fail at start-up."""
        auth = {"authorization", "x-api-key", "x-goog-api-key"}
        for name, provider in self.providers.items():
            if provider.type not in API_KEY_REQUIRED or not provider.enabled or provider.api_key:
                continue
            if auth & {key.lower() for key in provider.headers}:
                continue  # the key travels in a configured header (e.g. through a proxy)
            raise ValueError(
                f"providers.{name}.api_key: required for type '{provider.type}'; set it in the "
                f"file or as TURNOUT_PROVIDERS__{name.upper()}__API_KEY"
            )
        return self


def _check_routes(config: Config) -> None:
    """Route targets name configured providers; fallbacks name other routes, without cycles."""
    providers = set(config.providers) or ({"embedded"} if config.default_embedded else set())
    for name, route in config.routes.items():
        if name in config.aliases:
            raise ValueError(f"routes.{name}: also an alias; a name is either a route or an alias")
        if name.partition("/")[0] in config.providers and "/" in name:
            raise ValueError(
                f"routes.{name}: starts with provider '{name.partition('/')[0]}/', which "
                "addresses that provider directly; choose another name"
            )
        for i, target in enumerate(route.targets):
            if target.provider not in providers:
                raise ValueError(
                    f"routes.{name}.targets[{i}].provider: unknown provider "
                    f"{target.provider!r}; configured: {', '.join(sorted(providers)) or 'none'}"
                )
        for i, other in enumerate(route.fallbacks):
            if other not in config.routes or other == name:
                raise ValueError(
                    f"routes.{name}.fallbacks[{i}]: {other!r} is not another route; routes: "
                    f"{', '.join(r for r in config.routes if r != name) or 'none'}"
                )
    for name in config.routes:  # depth-first walk: a fallback chain must end
        path = [name]
        stack = [(name, iter(config.routes[name].fallbacks))]
        while stack:
            step = next(stack[-1][1], None)
            if step is None:
                stack.pop()
                path.pop()
            elif step in path:
                raise ValueError(
                    f"routes.{name}.fallbacks: the chain {' -> '.join([*path, step])} is a cycle"
                )
            else:
                path.append(step)
                stack.append((step, iter(config.routes[step].fallbacks)))


def load_config(
    source: str | Path | Mapping[str, Any] | Config | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from a YAML path, a mapping or a `Config`, plus the environment."""
    if isinstance(source, Config):
        return source
    env = os.environ if environ is None else environ
    if source is None and env.get("TURNOUT_CONFIG"):
        source = env["TURNOUT_CONFIG"]
    data = _read_yaml(Path(source)) if isinstance(source, str | Path) else dict(source or {})
    _add_env_providers(data, env)
    _apply_overrides(data, env)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _add_env_providers(data: dict[str, Any], env: Mapping[str, str]) -> None:
    providers = dict(data.get("providers") or {})
    raw = env.get("OPENAI_COMPATIBLE_DATA")
    if raw:
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"OPENAI_COMPATIBLE_DATA: not valid JSON ({exc.msg})") from None
        if not isinstance(entries, list):
            raise ConfigError("OPENAI_COMPATIBLE_DATA: must be a JSON array of providers")
        for i, entry in enumerate(entries):
            name, provider = _openai_compatible_entry(i, entry)
            providers[name] = provider
    ollama = env.get("OLLAMA_BASE_URL")
    if ollama:
        url = ollama.rstrip("/")
        providers.setdefault("ollama", {"type": "ollama"})
        providers["ollama"] = {**providers["ollama"], "endpoint": url.removesuffix("/api")}
    if providers:
        data["providers"] = providers


def _openai_compatible_entry(i: int, entry: Any) -> tuple[str, dict[str, Any]]:
    where = f"OPENAI_COMPATIBLE_DATA[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with provider, baseUrl and models")
    for key in ("provider", "baseUrl"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}.{key}: required, a non-empty string")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", entry["provider"]).strip("-") or f"provider{i}"
    provider: dict[str, Any] = {"type": "openai", "endpoint": entry["baseUrl"]}
    if entry.get("apiKey"):
        provider["api_key"] = entry["apiKey"]
    if "models" in entry:
        provider["models"] = entry["models"]
    return name, provider


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key.startswith(_ENV_PREFIX) or key == "TURNOUT_CONFIG":
            continue
        path = [part.lower() for part in key[len(_ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            part = _existing_key(node, part)
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = _existing_key(node, path[-1])
        if last in ("api_key", "admin_key", "database_url", "redis_url") or path[-2:-1] == [
            "headers"
        ]:
            node[last] = value  # secrets and header values are text, never YAML-typed
            continue
        try:
            node[last] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[last] = value


def _existing_key(node: dict[str, Any], part: str) -> str:
    """Environment names are upper case; provider names keep their case (``LocalVLLM``)."""
    if part in node:
        return part
    return next((k for k in node if isinstance(k, str) and k.lower() == part), part)


def _allowed(loc: tuple[int | str, ...]) -> list[str]:
    """The setting names allowed where ``loc`` points, found by walking the models down it."""
    node: Any = Config
    for part in loc[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        else:  # a dict or list: step into its values
            node = get_args(node)[-1] if get_args(node) else None
        present = [a for a in get_args(node) if a is not type(None)]
        if type(None) in get_args(node) and len(present) == 1:  # X | None
            node = present[0]
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed(tuple(err["loc"]))
            msg = "unknown setting" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif err["type"] == "missing":
            msg = "required setting is missing"
        got = err.get("input")
        quiet = err["type"] in ("missing", "extra_forbidden", "value_error") or isinstance(
            got, dict
        )
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{shown}" if err["loc"] else f"{msg}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
