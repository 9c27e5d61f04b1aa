"""Configuration: one YAML file plus environment variables, validated once at start-up.

Sources, later ones winning: the YAML file (``--config`` or ``TURNOUT_CONFIG``), then providers
added by environment, as the web app of source document 003 does (``OPENAI_COMPATIBLE_DATA``,
``OLLAMA_BASE_URL``; turnout/providers/environment.py reads them), then ``TURNOUT_<SECTION>__<KEY>``
overrides, e.g. ``TURNOUT_SERVER__PORT=9000`` or ``TURNOUT_PROVIDERS__LOCAL__API_KEY=...`` (read
as YAML scalars). An invalid setting raises `ConfigError` naming the key and what is allowed.

No provider type is named here: turnout/providers registers each (`register_provider_type`)
with its dialect and settings model (a `ProviderConfig` subclass with the dialect's own options),
and ``import turnout`` does so before anything is validated (docs/decisions.md, issue 10).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError
from ..wire.durations import parse_keep_alive
from ..wire.screen import SecurityConfig
from .access import TEXT_SETTINGS, AuthConfig, LimitsConfig, StorageConfig
from .base import _Strict
from .health import HealthConfig
from .routes import (
    RETRY_CLASSES,
    STRATEGIES,
    RetryConfig,
    RouteConfig,
    RouteTargetConfig,
    TimeoutsConfig,
)

__all__ = [
    "RETRY_CLASSES",
    "STRATEGIES",
    "Config",
    "DiscoveryConfig",
    "HealthConfig",
    "ModelEntry",
    "PathsConfig",
    "ProviderConfig",
    "ProviderType",
    "RetryConfig",
    "RouteConfig",
    "RouteTargetConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "load_config",
    "provider_types",
    "register_env_source",
    "register_provider_type",
]

_ENV_PREFIX = "TURNOUT_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    sse_keepalive_seconds: float = Field(10.0, gt=0)
    models_refresh_seconds: float = Field(60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    responses_store: int = Field(
        0,
        ge=0,
        description="how many recent /v1/responses answers to keep for previous_response_id "
        "and GET/DELETE /v1/responses/{id}; 0: stateless (previous_response_id refused)",
    )
    admin_key: SecretStr | None = Field(
        None,
        min_length=1,
        description="required as 'Authorization: Bearer' by model-changing endpoints "
        "(turnout/server/admin.py); unset: they are open",
    )
    allow_unauthenticated: bool = Field(False, description="serve beyond loopback without keys")
    # Host names answered besides loopback names, `host` and IP addresses ('*': any), and the
    # browser origins that may call the gateway (turnout/server/guard.py).
    allowed_hosts: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    # Shutdown, and the client side of connections (turnout/server/protocol.py), in seconds:
    # the grace in-flight requests get on SIGTERM; the time a client has for a request's headers,
    # for its body, to take what is written to it (else its stream's backend slot is freed); an
    # idle keep-alive connection's life. Connections beyond max_connections get a 503.
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(60.0, gt=0)
    write_timeout_seconds: float = Field(30.0, gt=0)
    keepalive_timeout_seconds: float = Field(5.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    workers: int = Field(
        1, ge=1, le=256, description="gateway processes on the port (turnout/server/workers.py)"
    )


class ModelEntry(_Strict):
    """A model a provider serves, with what the configuration knows about it.

    Accepts source document 003's ``{"apiName", "uiName", "supportsTools"}`` spelling too.
    These are what every dialect reads; a dialect with options of its own per model (an engine's
    context size, a prompt template) declares a subclass in turnout/providers/ and names it in
    its `ProviderConfig` subclass's ``models``.
    """

    name: str = Field(alias="apiName", min_length=1)
    display_name: str | None = Field(None, alias="uiName")
    supports_tools: bool | None = Field(None, alias="supportsTools")
    supports_vision: bool | None = Field(None, alias="supportsVision")
    context_length: int | None = Field(None, ge=1)


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


@dataclass(frozen=True, slots=True)
class ProviderType:
    """One value ``providers.<name>.type`` may take, as turnout/providers registers it."""

    name: str
    dialect: str  # the provider class that speaks to it (a preset names an existing dialect)
    #: the type's settings model: `ProviderConfig` or a subclass adding the dialect's options;
    #: called when a provider of the type is validated (it may import the dialect's module)
    settings: Callable[[], type[ProviderConfig]]
    api_key_required: bool = False  # start-up fails without providers.<name>.api_key ...
    key_headers: frozenset[str] = frozenset()  # ... unless one of these headers carries it


#: providers the environment adds: (environment, providers so far) -> providers to set
EnvSource = Callable[[Mapping[str, str], Mapping[str, Any]], Mapping[str, Any]]
_TYPES: dict[str, ProviderType] = {}
_ENV_SOURCES: list[EnvSource] = []


def register_provider_type(spec: ProviderType) -> None:
    """Make ``spec.name`` a provider type (turnout/providers registers each dialect and preset)."""
    _TYPES[spec.name] = spec


def register_env_source(source: EnvSource) -> None:
    """Read providers from the environment too, after the file (turnout/providers registers
    ``OPENAI_COMPATIBLE_DATA`` and the variables presets declare); it raises `ConfigError`."""
    _ENV_SOURCES.append(source)


def provider_types() -> tuple[str, ...]:
    """Every registered provider type, sorted."""
    return tuple(sorted(_TYPES))


def _registered(type_: Any) -> type[ProviderConfig] | None:
    """The settings model of a ``type`` value, None where no such type is registered."""
    spec = _TYPES.get(type_) if isinstance(type_, str) else None
    return spec.settings() if spec is not None else None


class ProviderConfig(_Strict):
    """One provider: the settings every dialect reads. A type whose dialect reads more registers
    a subclass; validating a mapping, or calling ``ProviderConfig(type=...)``, gives an instance
    of the registered model for that type."""

    type: str
    endpoint: str | None = None
    api_key: str | None = None
    models: Sequence[ModelEntry] = Field(default_factory=list)
    enabled: bool = True
    timeout: float = Field(300.0, gt=0, description="seconds to the first byte and between chunks")
    connect_timeout: float = Field(5.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_concurrency: int | None = Field(None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    streaming: bool | None = None
    passthrough: bool = Field(
        True,
        description="relay a client's request as it came to a backend that speaks its dialect "
        "natively (its preset declares which), the reply's bytes back; false: always translate",
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
    # A stream's time limits per call (turnout/routing/attempt.py): to its first chunk (unset:
    # 120 s for a local backend, 60 s for a cloud one), between chunks, and in all.
    first_token_timeout: float | None = Field(None, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    # The keep_alive a request may set on this backend (Ollama, the embedded engine), within
    # security.request_keep_alive_min..max: a duration like "5m" or seconds; unset: those.
    request_keep_alive_min: float | str | None = None
    request_keep_alive_max: float | str | None = None
    total_timeout: float | None = Field(600.0, gt=0)
    # The health canary for this backend (turnout/config/health.py); unset: health.canary's
    # for a local backend, off for a cloud one.
    canary: bool | None = None

    def __new__(cls, *args: Any, **data: Any) -> Self:
        """``ProviderConfig(type="x", ...)`` builds the model type ``x`` registered."""
        model = _registered(data.get("type")) if cls is ProviderConfig else None
        return super().__new__(model or cls)  # type: ignore[return-value]  # a subclass of cls

    @model_validator(mode="wrap")
    @classmethod
    def _by_type(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """A mapping is validated by its type's model (errors keep their locations)."""
        if cls is ProviderConfig and isinstance(data, Mapping):
            model = _registered(data.get("type"))
            if model is not None and model is not cls:
                return model.model_validate(data)  # type: ignore[return-value]  # a subclass
        return handler(data)

    @classmethod
    def of(cls, config: ProviderConfig) -> Self:
        """``config`` as this model (a provider's own settings), else TypeError naming both."""
        if not isinstance(config, cls):
            got = type(config).__name__
            raise TypeError(f"a {config.type!r} provider needs {cls.__name__} settings, got {got}")
        return config

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
        if v not in _TYPES:
            allowed = ", ".join(provider_types()) or "none registered (import turnout.providers)"
            raise ValueError(f"unknown provider type {v!r}; allowed: {allowed}")
        return v

    @field_validator("request_keep_alive_min", "request_keep_alive_max")
    @classmethod
    def _duration(cls, v: float | str | None) -> float | str | None:
        if v is not None and not 0 < parse_keep_alive(v) < float("inf"):  # raises if malformed
            raise ValueError("must be a positive, finite duration (requests never unload or pin)")
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
        return _TYPES[self.type].dialect


class DiscoveryConfig(_Strict):
    """Finding local runtimes by their default ports (turnout/providers/discovery.py);
    ``discovery: true``
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
    #: SerializeAsAny: a provider is dumped with its type's own settings too
    providers: dict[str, SerializeAsAny[ProviderConfig]] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    #: ``default_embedded`` is the older name; unset: serve it beside the providers configured,
    #: unless one is in-process or its engine is not installed (turnout/gateway.py)
    embedded: bool | None = Field(
        None, validation_alias=AliasChoices("embedded", "default_embedded"),
        description="serve the embedded engine's default model (gemma-3-270m); false: never",
    )  # fmt: skip
    models_dir: str = Field("./models", description="where `turnout models` finds and puts models")
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    health: HealthConfig = Field(default_factory=lambda: HealthConfig())
    discovery: DiscoveryConfig = Field(default_factory=lambda: DiscoveryConfig())
    security: SecurityConfig = Field(default_factory=lambda: SecurityConfig())
    storage: StorageConfig = Field(default_factory=lambda: StorageConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())

    def secrets(self) -> list[str | None]:
        """Every credential in the configuration, which `turnout.errors.redact` never shows."""
        admin = self.server.admin_key
        values: list[str | None] = [admin.get_secret_value() if admin is not None else None]
        for provider in self.providers.values():
            values.append(provider.api_key)
            values.extend(provider.headers.values())
        return values

    @property
    def default_embedded(self) -> bool:
        return self.embedded is not False

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
        for name, provider in self.providers.items():
            spec = _TYPES[provider.type]
            if not spec.api_key_required or not provider.enabled or provider.api_key:
                continue
            if spec.key_headers & {key.lower() for key in provider.headers}:
                continue  # the key travels in a configured header (e.g. through a proxy)
            raise ValueError(
                f"providers.{name}.api_key: required for type '{provider.type}'; set it in the "
                f"file or as TURNOUT_PROVIDERS__{name.upper()}__API_KEY"
            )
        return self


def _check_routes(config: Config) -> None:
    """Route targets name configured providers; fallbacks name other routes, without cycles."""
    providers = set(config.providers) | ({"embedded"} if config.default_embedded else set())
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
        raise ConfigError(_describe(exc, data)) from None


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
    for source in _ENV_SOURCES:
        providers.update(source(env, providers))
    if providers:
        data["providers"] = providers


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
        if last in TEXT_SETTINGS or path[-2:-1] == ["headers"]:
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


def _allowed(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """The setting names allowed where ``loc`` points, found by walking the models down it (and
    the data beside them: a provider's model is the one its ``type`` registered)."""
    node: Any = Config
    for part in loc[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        else:  # a dict or list: step into its values
            node = get_args(node)[-1] if get_args(node) else None
        data = _step(data, part)
        if get_origin(node) is Annotated:  # SerializeAsAny[X]
            node = get_args(node)[0]
        present = [a for a in get_args(node) if a is not type(None)]
        if type(None) in get_args(node) and len(present) == 1:  # X | None
            node = present[0]
        if node is ProviderConfig and isinstance(data, Mapping):
            node = _registered(data.get("type")) or node
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _step(data: Any, part: int | str) -> Any:
    """``data[part]``, or None where the data has no such place."""
    if isinstance(data, Mapping):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return data[part]
    return None


def _describe(exc: ValidationError, data: Any = None) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed(tuple(err["loc"]), data)
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
