"""The admin key over real HTTP: every model-changing endpoint (Ollama pull and delete, Hugging
Face downloads, load and unload) refuses a request without ``Authorization: Bearer <key>`` with
401 in its front's dialect, and serves one with it; Ollama's official Python client (``ollama``)
does both through the gateway's Ollama-dialect routes; the CLI sends the key; ``turnout serve``
warns at start-up when the endpoints are open beyond this machine.

Ollama cannot run here: the backend is the fake of tests/fakes/ollama.py, which follows Ollama's
documented API. The local model is the real Gemma 3 270M GGUF.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama as ollama_sdk
import pytest
from typer.testing import CliRunner

from tests.fakes.ollama import FakeOllama, run_fake_ollama
from tests.support import client
from tests.support.checks import check_error
from tests.support.servers import free_port, run_gateway, wait_http
from turnout.cli import app

KEY = "adm-7f3c9e1b"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with run_fake_ollama() as server:
        yield server


@pytest.fixture
def models(gemma_path: Path, tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.gguf").symlink_to(gemma_path)
    return tmp_path / "models"


@pytest.fixture
def gateway(fake: FakeOllama, models: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    config = {
        "server": {"admin_key": KEY},
        "models_dir": str(models),
        "providers": {
            "ollama": {"type": "ollama", "endpoint": fake.url},
            "local": {"type": "embedded", "models_dir": str(models)},
        },
    }
    with run_gateway(config, environ={}) as url:
        yield url


async def send(method: str, url: str, body: object = None, key: str | None = None) -> client.Reply:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as resp,
    ):
        return client.Reply(resp.status, resp.headers.copy(), await resp.read(), 0.0)


CHANGING = [
    ("POST", "/v1/ollama/ollama/pull", {"model": "qwen2.5:0.5b"}),
    ("DELETE", "/v1/ollama/ollama/delete", {"model": "llama3.2"}),
    ("POST", "/v1/local/downloads", {"repo": "acme/tiny-GGUF"}),
    ("POST", "/v1/models/local/a/load", {}),
    ("POST", "/v1/models/local/a/unload", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), CHANGING)
async def test_v1_routes_refuse_without_the_key_openai_style(
    gateway: str, fake: FakeOllama, method: str, path: str, body: Any
) -> None:
    missing = await send(method, gateway + path, body)
    assert missing.status == 401, missing.body
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    check_error(missing.json(), type="authentication_error", code="missing_admin_key")
    message = missing.json()["error"]["message"]
    assert "Authorization: Bearer" in message and "server.admin_key" in message
    wrong = await send(method, gateway + path, body, key="not-" + KEY)
    assert wrong.status == 401
    check_error(wrong.json(), type="authentication_error", code="invalid_admin_key")
    assert KEY not in wrong.body.decode()
    assert fake.bodies("/api/pull") == [] and fake.bodies("/api/delete") == []
    assert "llama3.2:latest" in fake.models


async def test_v1_routes_serve_the_key(gateway: str, fake: FakeOllama) -> None:
    pulled = await send("POST", gateway + "/v1/ollama/ollama/pull", CHANGING[0][2], key=KEY)
    assert pulled.status == 200 and b'"status":"success"' in pulled.body
    assert "qwen2.5:0.5b" in fake.models
    deleted = await send("DELETE", gateway + "/v1/ollama/ollama/delete", CHANGING[1][2], KEY)
    assert deleted.status == 200 and deleted.json()["deleted"] is True
    loaded = await send("POST", gateway + "/v1/models/local/a/load", {}, key=KEY)
    assert loaded.status == 200 and loaded.json()["state"] == "loaded"
    unloaded = await send("POST", gateway + "/v1/models/local/a/unload", {}, key=KEY)
    assert unloaded.status == 200 and unloaded.json()["state"] == "unloaded"
    # Reading needs no key.
    for path in ("/v1/local/ps", "/v1/local/models", "/v1/ollama/ollama/tags", "/v1/providers"):
        assert (await client.get(gateway + path)).status == 200, path


async def test_the_key_comes_before_the_pull_switch(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Who you are (401) is settled before what this gateway allows (403)."""
    monkeypatch.delenv("LOCAL_LLM_ENABLE_PULL")
    anonymous = await send("POST", gateway + "/v1/local/downloads", {"repo": "acme/x"})
    assert anonymous.status == 401
    admin = await send("POST", gateway + "/v1/local/downloads", {"repo": "acme/x"}, key=KEY)
    assert admin.status == 403 and admin.json()["error"]["code"] == "pull_disabled"


def test_ollama_sdk_without_or_with_a_wrong_key_gets_401(gateway: str, fake: FakeOllama) -> None:
    host = gateway + "/v1/ollama/ollama"
    wrong = {"Authorization": "Bearer nope"}
    for sdk in (ollama_sdk.Client(host=host), ollama_sdk.Client(host=host, headers=wrong)):
        with pytest.raises(ollama_sdk.ResponseError) as pulling:
            sdk.pull("qwen2.5:0.5b")
        assert pulling.value.status_code == 401
        assert "admin key" in pulling.value.error  # Ollama's {"error": "..."}, unwrapped
        with pytest.raises(ollama_sdk.ResponseError) as streaming:
            list(sdk.pull("qwen2.5:0.5b", stream=True))
        assert streaming.value.status_code == 401
        with pytest.raises(ollama_sdk.ResponseError) as deleting:
            sdk.delete("llama3.2")
        assert deleting.value.status_code == 401
    assert fake.bodies("/api/pull") == [] and fake.bodies("/api/delete") == []


def test_ollama_sdk_with_the_key_pulls_and_deletes(
    gateway: str, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)  # what Ollama's client sends as its bearer token
    sdk = ollama_sdk.Client(host=gateway + "/v1/ollama/ollama")
    steps = list(sdk.pull("qwen2.5:0.5b", stream=True))
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    assert any(s.completed and s.completed == s.total for s in steps)
    assert "qwen2.5:0.5b" in [m.model for m in sdk.list().models]
    assert sdk.show("qwen2.5:0.5b").details is not None
    assert sdk.delete("qwen2.5:0.5b").status == "success"
    assert "qwen2.5:0.5b" not in fake.models
    assert sdk.pull("qwen2.5:0.5b", stream=False).status == "success"
    with pytest.raises(ollama_sdk.ResponseError) as missing:
        sdk.delete("nope")
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    with pytest.raises(ollama_sdk.ResponseError) as failed:
        list(sdk.pull("no-such-model", stream=True))  # an error line after the 200
    assert "file does not exist" in failed.value.error
    assert sdk.ps().models == []


def test_cli_load_and_unload_send_the_key(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("TURNOUT_SERVER__ADMIN_KEY", raising=False)
    refused = runner.invoke(app, ["models", "load", "local/a", "--url", gateway])
    assert refused.exit_code == 1 and "HTTP 401" in refused.output
    assert "admin key" in refused.output
    loaded = runner.invoke(app, ["models", "load", "local/a", "--url", gateway, "--admin-key", KEY])
    assert loaded.exit_code == 0, loaded.output
    monkeypatch.setenv("TURNOUT_SERVER__ADMIN_KEY", KEY)  # the server's own variable
    gone = runner.invoke(app, ["models", "unload", "local/a", "--url", gateway])
    assert gone.exit_code == 0 and "local/a unloaded" in gone.stdout, gone.output


@pytest.mark.parametrize(("key", "warned"), [(None, True), (KEY, False)])
def test_serve_warns_when_open_beyond_loopback(
    fake: FakeOllama, tmp_path: Path, key: str | None, warned: bool
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(f"providers:\n  ollama:\n    type: ollama\n    endpoint: {fake.url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    if key is not None:
        env["TURNOUT_SERVER__ADMIN_KEY"] = key
    port = free_port()
    # Without gateway keys a public address needs --allow-unauthenticated (tests/access covers
    # the refusal); the admin key's own warning is what this test is about.
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(config),
           "--host", "0.0.0.0", "--port", str(port), "--allow-unauthenticated"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, proc)  # type: ignore[arg-type]
    finally:
        proc.terminate()
        stderr = proc.communicate(timeout=30)[1].decode()
    lines = [line for line in stderr.splitlines() if "model-changing endpoints" in line]
    assert len(lines) == (1 if warned else 0), stderr
    if warned:
        assert "WARNING turnout.server:" in lines[0] and f"0.0.0.0:{port}" in lines[0]
