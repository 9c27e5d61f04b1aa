"""The ``turnout`` command line, through Typer's CliRunner (no server is started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from turnout import __version__
from turnout.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the real environment: keep the test runner's own settings out of it."""
    for key in list(os.environ):
        if key.startswith("TURNOUT_") or key in ("OPENAI_COMPATIBLE_DATA", "OLLAMA_BASE_URL"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "60")  # narrow, so that any wrapping would show


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return path


CONFIG = """\
providers:
  local:
    type: llamacpp
    endpoint: http://a-rather-long-hostname.lan.example.com:8080/some/proxy/prefix/v1
    api_key: sk-secret-123
    models: [qwen]
    parameters:
      headers: {Authorization: Bearer sk-hidden, X-Api-Key: k-999, X-Team: research}
aliases:
  fast: local/qwen
"""


def test_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "chat", "config", "version"):
        assert command in result.stdout
    assert "local-first LLM gateway" in result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout == f"{__version__}\n"


def test_config_check_prints_the_valid_config_with_secrets_masked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "-c", str(write(tmp_path, CONFIG))])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("configuration is valid\n")
    for secret in ("sk-secret-123", "sk-hidden", "k-999"):
        assert secret not in result.stdout
    shown = yaml.safe_load(result.stdout.removesuffix("configuration is valid\n"))
    local = shown["providers"]["local"]
    assert local["api_key"] == "***"
    assert local["headers"] == {"Authorization": "***", "X-Api-Key": "***", "X-Team": "research"}
    assert local["endpoint"] == (
        "http://a-rather-long-hostname.lan.example.com:8080/some/proxy/prefix/v1"
    )
    assert local["models"][0]["name"] == "qwen"
    expected = {
        "host": "127.0.0.1",
        "port": 8400,
        "max_body_bytes": 8388608,
        "sse_keepalive_seconds": 10.0,
        "models_refresh_seconds": 60.0,
        "log_level": "info",
        "admin_key": None,
        "shutdown_grace_seconds": 30.0,
        "header_timeout_seconds": 10.0,
        "body_timeout_seconds": 60.0,
        "write_timeout_seconds": 30.0,
        "keepalive_timeout_seconds": 5.0,
        "max_connections": 1000,
    }
    assert {k: shown["server"][k] for k in expected} == expected  # among the server's settings
    assert shown["aliases"] == {"fast": "local/qwen"}


def test_config_check_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_CONFIG", str(write(tmp_path, "server: {port: 8500}\n")))
    monkeypatch.setenv("TURNOUT_SERVER__PORT", "9000")
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://box:11434/api")
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.stderr
    shown = yaml.safe_load(result.stdout.removesuffix("configuration is valid\n"))
    assert shown["server"]["port"] == 9000
    assert shown["providers"]["ollama"]["endpoint"] == "http://box:11434"


def test_config_check_without_a_key_shows_none(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: {local: {type: vllm}}\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0
    assert "api_key: null" in result.stdout


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 70000\nproviders:\n  x: {type: nope}\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "server.port" in result.stderr
    assert "65535" in result.stderr
    assert "providers.x.type" in result.stderr
    assert "unknown provider type 'nope'" in result.stderr
    assert "configuration is valid" not in result.stderr


def test_long_error_lines_are_not_wrapped(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  prot: 1\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    from turnout.config import ServerConfig

    allowed = ", ".join(ServerConfig.model_fields)  # a long line, printed whole
    assert f"  server.prot: unknown setting; allowed: {allowed}\n" in result.stderr


def test_error_text_is_not_read_as_markup(tmp_path: Path) -> None:
    path = write(tmp_path, 'server:\n  "[/red]": 1\n')
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "server.[/red]: unknown setting" in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "-c", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "cannot read configuration file" in result.stderr
    assert "absent.yaml" in result.stderr
