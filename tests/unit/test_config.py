"""Configuration loading: YAML files, mappings, source documents 002/003 and the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from turnout.config import Config, ModelEntry, ProviderConfig, load_config
from turnout.errors import ConfigError
from turnout.providers import PROVIDER_TYPES

SEED_002_YAML = """\
providers:
  vllm:
    type: vllm
    endpoint: "http://localhost:8000"
    api_key: ""  # Optional
    models: ["llama-2-7b-chat-hf"]
    parameters:
      timeout: 30.0
      max_retries: 3
      streaming_support: true
  custom:
    type: openai
    endpoint: "http://gpu-box:9000/"
    api_key: "sk-local"
    models: ["mistral-7b"]
    parameters:
      timeout: 12.5
      max_retries: 0
      streaming_support: false
      headers:
        X-Team: research
      model_endpoint: /api/models
      chat_endpoint: /api/chat
"""

SEED_003_DATA = [
    {
        "provider": "LocalVLLM",
        "models": [
            {
                "apiName": "deepseek-r1-distill-qwen-7b",
                "uiName": "DeepSeek R1 7B Local",
                "supportsTools": False,
            }
        ],
        "apiKey": "",
        "baseUrl": "http://localhost:8000/v1",
    }
]


def _error(source: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, environ=environ or {})
    return str(info.value)


# --- sources and defaults -------------------------------------------------------------------


def test_defaults_listen_on_loopback_8400() -> None:
    cfg = load_config({}, environ={})
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8400)
    assert cfg.providers == {}
    assert cfg.aliases == {}
    assert cfg.default_embedded is True
    assert cfg.server.max_body_bytes == 8 * 1024 * 1024


def test_none_source_without_turnout_config_is_defaults() -> None:
    assert load_config(None, environ={}) == Config()


def test_config_instance_is_returned_as_is() -> None:
    cfg = Config()
    assert load_config(cfg, environ={"TURNOUT_SERVER__PORT": "1"}) is cfg


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(
        "server:\n  port: 8500\n  log_level: debug\n"
        "providers:\n  local:\n    type: llamacpp\n    endpoint: http://127.0.0.1:8080\n"
        "    models: [qwen, {name: gemma, context_length: 8192}]\n"
        "aliases:\n  fast: local/qwen\n"
    )
    for source in (path, str(path)):
        cfg = load_config(source, environ={})
        assert cfg.server.port == 8500
        assert cfg.server.log_level == "debug"
        local = cfg.providers["local"]
        assert local.type == "llamacpp"
        assert local.dialect == "openai"
        assert [m.name for m in local.models] == ["qwen", "gemma"]
        assert local.models[1].context_length == 8192
        assert cfg.aliases == {"fast": "local/qwen"}


def test_turnout_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 8600}\n")
    assert load_config(None, environ={"TURNOUT_CONFIG": str(path)}).server.port == 8600


def test_empty_yaml_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path, environ={}) == Config()


def test_dict_source_is_not_mutated() -> None:
    source: dict[str, Any] = {"providers": {"a": {"type": "vllm"}}}
    load_config(source, environ={"OLLAMA_BASE_URL": "http://h:11434", "TURNOUT_SERVER__PORT": "1"})
    assert source == {"providers": {"a": {"type": "vllm"}}}


def test_endpoint_trailing_slash_is_dropped() -> None:
    cfg = load_config(
        {"providers": {"a": {"type": "vllm", "endpoint": "http://h:8000/"}}}, environ={}
    )
    assert cfg.providers["a"].endpoint == "http://h:8000"


def test_provider_defaults() -> None:
    p = load_config({"providers": {"a": {"type": "vllm"}}}, environ={}).providers["a"]
    assert p.endpoint is None
    assert p.api_key is None
    assert p.timeout == 300.0
    assert p.connect_timeout == 5.0
    assert p.max_retries == 2
    assert p.max_concurrency is None
    assert p.enabled is True
    assert p.streaming is None
    assert p.headers == {}


# --- source document 002: YAML with a parameters block --------------------------------------


def test_seed_002_parameters_are_folded(tmp_path: Path) -> None:
    path = tmp_path / "helix.yaml"
    path.write_text(SEED_002_YAML)
    cfg = load_config(path, environ={})
    vllm = cfg.providers["vllm"]
    assert vllm.type == "vllm"
    assert vllm.endpoint == "http://localhost:8000"
    assert vllm.api_key == ""
    assert [m.name for m in vllm.models] == ["llama-2-7b-chat-hf"]
    assert vllm.timeout == 30.0
    assert vllm.max_retries == 3
    assert vllm.streaming is True
    assert vllm.paths.chat is None

    custom = cfg.providers["custom"]
    assert custom.endpoint == "http://gpu-box:9000"
    assert custom.api_key == "sk-local"
    assert custom.timeout == 12.5
    assert custom.max_retries == 0
    assert custom.streaming is False
    assert custom.headers == {"X-Team": "research"}
    assert custom.paths.models == "/api/models"
    assert custom.paths.chat == "/api/chat"


def test_explicit_settings_win_over_parameters() -> None:
    cfg = load_config(
        {
            "providers": {
                "a": {
                    "type": "vllm",
                    "timeout": 7,
                    "paths": {"embeddings": "/e"},
                    "parameters": {"timeout": 30, "chat_endpoint": "/c"},
                }
            }
        },
        environ={},
    )
    a = cfg.providers["a"]
    assert a.timeout == 7
    assert (a.paths.chat, a.paths.embeddings) == ("/c", "/e")


def test_empty_parameters_block_is_accepted() -> None:
    cfg = load_config({"providers": {"a": {"type": "vllm", "parameters": None}}}, environ={})
    assert cfg.providers["a"].timeout == 300.0


def test_parameters_must_be_a_mapping() -> None:
    message = _error({"providers": {"a": {"type": "vllm", "parameters": [1]}}})
    assert "providers.a" in message
    assert "'parameters' must be a mapping" in message


# --- source document 003: providers from the environment ------------------------------------


def test_seed_003_openai_compatible_data() -> None:
    cfg = load_config({}, environ={"OPENAI_COMPATIBLE_DATA": json.dumps(SEED_003_DATA)})
    assert list(cfg.providers) == ["LocalVLLM"]
    p = cfg.providers["LocalVLLM"]
    assert p.type == "openai"
    assert p.endpoint == "http://localhost:8000/v1"
    assert p.api_key is None  # "" means no key
    assert p.models == [
        ModelEntry(
            name="deepseek-r1-distill-qwen-7b",
            display_name="DeepSeek R1 7B Local",
            supports_tools=False,
        )
    ]


def test_openai_compatible_data_names_are_slugged_and_keys_kept() -> None:
    data = [
        {
            "provider": "My Local vLLM (GPU)",
            "baseUrl": "http://gpu:8000/v1",
            "apiKey": "sk-1",
            "models": [{"apiName": "a", "supportsTools": True}, {"apiName": "b"}],
        },
        {"provider": "!!!", "baseUrl": "http://other:1234"},
    ]
    cfg = load_config({}, environ={"OPENAI_COMPATIBLE_DATA": json.dumps(data)})
    assert list(cfg.providers) == ["My-Local-vLLM-GPU", "provider1"]
    gpu = cfg.providers["My-Local-vLLM-GPU"]
    assert gpu.api_key == "sk-1"
    assert [(m.name, m.supports_tools) for m in gpu.models] == [("a", True), ("b", None)]
    assert cfg.providers["provider1"].models == []


def test_openai_compatible_data_adds_to_yaml_providers() -> None:
    cfg = load_config(
        {"providers": {"local": {"type": "llamacpp"}}},
        environ={"OPENAI_COMPATIBLE_DATA": json.dumps(SEED_003_DATA)},
    )
    assert list(cfg.providers) == ["local", "LocalVLLM"]


@pytest.mark.parametrize(
    "url", ["http://localhost:11434/api", "http://localhost:11434/api/", "http://localhost:11434"]
)
def test_ollama_base_url_with_and_without_api(url: str) -> None:
    cfg = load_config({}, environ={"OLLAMA_BASE_URL": url})
    assert cfg.providers["ollama"].type == "ollama"
    assert cfg.providers["ollama"].endpoint == "http://localhost:11434"


def test_ollama_base_url_keeps_yaml_settings_of_the_ollama_provider() -> None:
    cfg = load_config(
        {"providers": {"ollama": {"type": "ollama", "timeout": 9, "models": ["llama3"]}}},
        environ={"OLLAMA_BASE_URL": "http://box:11434/api"},
    )
    ollama = cfg.providers["ollama"]
    assert ollama.endpoint == "http://box:11434"
    assert ollama.timeout == 9
    assert [m.name for m in ollama.models] == ["llama3"]


# --- TURNOUT_* overrides ---------------------------------------------------------------------


def test_port_override_is_typed() -> None:
    cfg = load_config({}, environ={"TURNOUT_SERVER__PORT": "9000"})
    assert cfg.server.port == 9000


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 8500, host: 0.0.0.0}\n")
    env = {"TURNOUT_SERVER__PORT": "9001", "TURNOUT_SERVER__SSE_KEEPALIVE_SECONDS": "2.5"}
    cfg = load_config(path, environ=env)
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9001)
    assert cfg.server.sse_keepalive_seconds == 2.5


def test_provider_api_key_override() -> None:
    cfg = load_config(
        {"providers": {"x": {"type": "vllm", "api_key": "old"}}},
        environ={"TURNOUT_PROVIDERS__X__API_KEY": "sk-new"},
    )
    assert cfg.providers["x"].api_key == "sk-new"


@pytest.mark.parametrize("key", ["12345", "0123", "#secret", "true", "null", "[a"])
def test_api_key_override_is_kept_as_text(key: str) -> None:
    # Secrets are never YAML-typed: "0123" must not become 83, "#secret" must not become None.
    cfg = load_config(
        {"providers": {"x": {"type": "vllm"}}}, environ={"TURNOUT_PROVIDERS__X__API_KEY": key}
    )
    assert cfg.providers["x"].api_key == key


def test_override_reaches_a_provider_whose_name_has_capitals() -> None:
    env = {
        "OPENAI_COMPATIBLE_DATA": json.dumps(SEED_003_DATA),
        "TURNOUT_PROVIDERS__LOCALVLLM__API_KEY": "sk-env",
        "TURNOUT_PROVIDERS__LOCALVLLM__TIMEOUT": "5",
    }
    cfg = load_config({}, environ=env)
    assert list(cfg.providers) == ["LocalVLLM"]
    assert cfg.providers["LocalVLLM"].api_key == "sk-env"
    assert cfg.providers["LocalVLLM"].timeout == 5


def test_override_typed_values() -> None:
    env = {
        "TURNOUT_PROVIDERS__X__ENABLED": "false",
        "TURNOUT_PROVIDERS__X__MAX_RETRIES": "4",
        "TURNOUT_PROVIDERS__X__HEADERS__X-TOKEN": "007",
        "TURNOUT_DEFAULT_EMBEDDED": "no",
    }
    cfg = load_config({"providers": {"x": {"type": "vllm"}}}, environ=env)
    x = cfg.providers["x"]
    assert x.enabled is False
    assert x.max_retries == 4
    assert x.headers == {"x-token": "007"}
    assert cfg.default_embedded is False


def test_unrelated_environment_is_ignored() -> None:
    cfg = load_config({}, environ={"PATH": "/bin", "TURNOUT_": "x", "OLLAMA_HOST": "h"})
    assert cfg == Config()


def test_override_creates_a_provider_when_complete() -> None:
    cfg = load_config({}, environ={"TURNOUT_PROVIDERS__NEW__TYPE": "lmstudio"})
    assert cfg.providers["new"].type == "lmstudio"


# --- invalid settings: the message names the key and what is allowed ------------------------


def test_unknown_key_lists_the_allowed_ones() -> None:
    message = _error({"server": {"prot": 9000}})
    assert "server.prot: unknown setting" in message
    assert "allowed: host, port, max_body_bytes" in message


def test_unknown_top_level_key() -> None:
    message = _error({"provider": {}})
    assert "provider: unknown setting; allowed: server, providers, aliases" in message


def test_unknown_provider_key() -> None:
    message = _error({"providers": {"a": {"type": "vllm", "base_url": "http://h"}}})
    assert "providers.a.base_url: unknown setting" in message
    assert "endpoint" in message.split("allowed:")[1]


def test_unknown_model_key() -> None:
    message = _error({"providers": {"a": {"type": "vllm", "models": [{"name": "m", "ctx": 1}]}}})
    assert "providers.a.models.0.ctx: unknown setting" in message
    assert "context_length" in message


def test_unknown_provider_type_lists_allowed_types() -> None:
    message = _error({"providers": {"a": {"type": "ollama2"}}})
    assert "providers.a.type" in message
    assert "unknown provider type 'ollama2'" in message
    assert "allowed: " + ", ".join(PROVIDER_TYPES) in message
    for name in ("llamacpp", "llama-cpp-python", "vllm", "ollama", "openai", "embedded"):
        assert name in PROVIDER_TYPES


def test_missing_provider_type() -> None:
    message = _error({"providers": {"a": {"endpoint": "http://h"}}})
    assert "providers.a.type: required setting is missing" in message


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_port_names_the_range(port: int) -> None:
    message = _error({"server": {"port": port}})
    assert "server.port" in message
    assert ("65535" in message) if port > 0 else ("greater than or equal to 1" in message)
    assert f"(got {port})" in message


def test_bad_port_from_the_environment() -> None:
    message = _error({}, {"TURNOUT_SERVER__PORT": "eighty"})
    assert "server.port" in message
    assert "valid integer" in message
    assert "'eighty'" in message


@pytest.mark.parametrize("timeout", [-1, 0])
def test_non_positive_timeout(timeout: float) -> None:
    message = _error({"providers": {"a": {"type": "vllm", "timeout": timeout}}})
    assert "providers.a.timeout: Input should be greater than 0" in message


def test_negative_timeout_in_parameters_block() -> None:
    message = _error({"providers": {"a": {"type": "vllm", "parameters": {"timeout": -5}}}})
    assert "providers.a.timeout" in message
    assert "greater than 0" in message


@pytest.mark.parametrize(
    "endpoint", ["localhost:8000", "ftp://h:21", "http://", "http:// spaced", "h/v1"]
)
def test_endpoint_must_be_an_http_url(endpoint: str) -> None:
    message = _error({"providers": {"a": {"type": "vllm", "endpoint": endpoint}}})
    assert "providers.a.endpoint" in message
    assert "must be an http:// or https:// URL" in message


@pytest.mark.parametrize("where", ["paths", "parameters"])
def test_path_without_leading_slash(where: str) -> None:
    block = {"chat": "v1/chat"} if where == "paths" else {"chat_endpoint": "v1/chat"}
    message = _error({"providers": {"a": {"type": "vllm", where: block}}})
    assert "providers.a.paths.chat" in message
    assert "must start with '/'" in message


@pytest.mark.parametrize("name", ["bad name", "a/b", "-lead", "ünï", ""])
def test_invalid_provider_name(name: str) -> None:
    message = _error({"providers": {name: {"type": "vllm"}}})
    assert "providers: provider name" in message
    assert repr(name) in message
    assert "letters, digits, '.', '_' or '-'" in message


def test_alias_to_org_slash_model_is_a_bare_name() -> None:
    # "meta-llama/Llama-3.1-8B" names no provider: it is a model name the catalog resolves.
    cfg = load_config(
        {"providers": {"local": {"type": "vllm"}}, "aliases": {"big": "meta-llama/Llama-3.1-8B"}},
        environ={},
    )
    assert cfg.aliases == {"big": "meta-llama/Llama-3.1-8B"}


def test_alias_to_alias() -> None:
    message = _error(
        {"providers": {"local": {"type": "vllm"}}, "aliases": {"a": "b", "b": "local/m"}}
    )
    assert "aliases.a: points at another alias 'b'" in message


def test_valid_aliases() -> None:
    cfg = load_config(
        {"providers": {"local": {"type": "vllm"}}, "aliases": {"a": "local/m", "b": "m"}},
        environ={},
    )
    assert cfg.aliases == {"a": "local/m", "b": "m"}


@pytest.mark.parametrize("raw", ["[{", "{'a': 1}", "not json"])
def test_bad_json_in_openai_compatible_data(raw: str) -> None:
    message = _error({}, {"OPENAI_COMPATIBLE_DATA": raw})
    assert message.startswith("OPENAI_COMPATIBLE_DATA: not valid JSON")


def test_openai_compatible_data_must_be_an_array() -> None:
    message = _error({}, {"OPENAI_COMPATIBLE_DATA": '{"provider": "a"}'})
    assert message == "OPENAI_COMPATIBLE_DATA: must be a JSON array of providers"


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"provider": "a", "models": []}, "baseUrl"),
        ({"provider": "a", "baseUrl": ""}, "baseUrl"),
        ({"baseUrl": "http://h"}, "provider"),
        ({"provider": 3, "baseUrl": "http://h"}, "provider"),
    ],
)
def test_openai_compatible_data_required_keys(entry: dict[str, Any], key: str) -> None:
    ok = {"provider": "ok", "baseUrl": "http://ok"}
    message = _error({}, {"OPENAI_COMPATIBLE_DATA": json.dumps([ok, entry])})
    assert message == f"OPENAI_COMPATIBLE_DATA[1].{key}: required, a non-empty string"


def test_openai_compatible_data_entry_must_be_an_object() -> None:
    message = _error({}, {"OPENAI_COMPATIBLE_DATA": '["http://h"]'})
    assert message.startswith("OPENAI_COMPATIBLE_DATA[0]: must be an object")


def test_openai_compatible_data_bad_base_url() -> None:
    data = [{"provider": "lan", "baseUrl": "lan-box:8000"}]
    message = _error({}, {"OPENAI_COMPATIBLE_DATA": json.dumps(data)})
    assert "providers.lan.endpoint" in message


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = _error(missing)
    assert message == f"cannot read configuration file {str(missing)!r}: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = _error(tmp_path)
    assert message.startswith(f"cannot read configuration file {str(tmp_path)!r}")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: [8400\n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid YAML:")
    assert "line" in message


def test_top_level_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- providers\n- server\n")
    assert _error(path) == f"{path}: the top level must be a mapping, got list"


def test_several_errors_are_all_reported() -> None:
    message = _error({"server": {"port": 0, "log_level": "loud"}})
    assert message.startswith("invalid configuration:\n  ")
    assert "server.port" in message
    assert "server.log_level" in message
    assert "'debug', 'info', 'warning' or 'error'" in message


# --- each dialect's own options ---------------------------------------------------------------


def test_an_option_of_another_dialect_is_unknown_naming_the_allowed_keys() -> None:
    message = _error({"providers": {"a": {"type": "vllm", "models_dir": "./models"}}})
    assert "providers.a.models_dir: unknown setting; allowed: type, endpoint" in message
    allowed = message.split("allowed:")[1]
    assert "default_max_tokens" in allowed and "models_dir" not in allowed


def test_an_engine_option_on_an_http_model_is_unknown() -> None:
    message = _error(
        {"providers": {"a": {"type": "llamacpp", "models": [{"name": "m", "n_ctx": 8}]}}}
    )
    assert (
        "providers.a.models.0.n_ctx: unknown setting; allowed: name, display_name, "
        "supports_tools, supports_vision, context_length" in message
    )


def test_the_embedded_dialects_options_are_listed_where_it_is_the_type() -> None:
    message = _error({"providers": {"e": {"type": "embedded", "models_dri": "./m"}}})
    allowed = message.split("providers.e.models_dri: unknown setting; allowed: ")[1]
    for key in ("endpoint", "models_dir", "keep_alive", "engine", "llama_server"):
        assert key in allowed
    message = _error(
        {"providers": {"e": {"type": "embedded", "models": [{"name": "m", "ctx": 1}]}}}
    )
    allowed = message.split("providers.e.models.0.ctx: unknown setting; allowed: ")[1]
    assert "n_ctx" in allowed and "use_mlock" in allowed


@pytest.mark.parametrize(
    ("settings", "where", "says"),
    [
        ({"keep_alive": "soon"}, "providers.e.keep_alive", "duration"),
        ({"engine": "vllm"}, "providers.e.engine", "'llama-cpp'"),
        ({"models": [{"name": "m", "n_ctx": 8}]}, "providers.e.models.0.n_ctx", "64"),
        ({"models": [{"name": "m", "keep_alive": "x"}]}, "providers.e.models.0.keep_alive", ""),
    ],
)
def test_invalid_embedded_options_fail_at_load_naming_the_key(
    settings: dict[str, Any], where: str, says: str
) -> None:
    message = _error({"providers": {"e": {"type": "embedded", **settings}}})
    assert where in message and says in message


def test_kobold_models_take_a_chat_format_and_anthropic_an_output_limit() -> None:
    cfg = load_config(
        {
            "providers": {
                "k": {"type": "koboldai", "models": [{"name": "m", "chat_format": "gemma"}]},
                "c": {"type": "anthropic", "api_key": "k", "default_max_tokens": 64},
            }
        },
        environ={},
    )
    assert cfg.providers["k"].models[0].chat_format == "gemma"  # type: ignore[attr-defined]
    assert cfg.providers["c"].default_max_tokens == 64  # type: ignore[attr-defined]
    message = _error({"providers": {"o": {"type": "ollama", "default_max_tokens": 64}}})
    assert "providers.o.default_max_tokens: unknown setting" in message


def test_a_provider_config_is_its_types_model() -> None:
    from turnout.providers.embedded.settings import EmbeddedConfig

    made = ProviderConfig(type="embedded", models_dir="./m")
    assert isinstance(made, EmbeddedConfig) and made.models_dir == "./m"
    validated = ProviderConfig.model_validate({"type": "embedded", "engine": "onnx"})
    assert isinstance(validated, EmbeddedConfig) and validated.engine == "onnx"
    assert type(
        load_config({"providers": {"e": {"type": "embedded"}}}, environ={}).providers["e"]
    ) is (EmbeddedConfig)
    dumped = load_config({"providers": {"e": {"type": "embedded"}}}, environ={}).model_dump()
    assert dumped["providers"]["e"]["swap_after_seconds"] == 5.0  # `config check` shows them


def test_environment_providers_are_declared_by_their_type() -> None:
    from turnout.providers.presets import DIALECT_ENV

    (name, declared), *_ = DIALECT_ENV.items()
    cfg = load_config({}, environ={declared.variable: "http://h:1/"})
    assert cfg.providers[name].type == name and cfg.providers[name].endpoint == "http://h:1"


def test_a_provider_refuses_another_dialects_settings() -> None:
    from turnout.providers.embedded import EmbeddedProvider

    with pytest.raises(TypeError, match="'vllm' provider needs EmbeddedConfig settings"):
        EmbeddedProvider("x", ProviderConfig(type="vllm"))
