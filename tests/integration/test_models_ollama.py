"""Ollama model management through turnout (HTTP and CLI): list, ps, show, pull with Ollama's
streamed progress, delete, and the LOCAL_LLM_ENABLE_PULL switch. Ollama cannot run here: the
backend is the fake of tests/fakes/ollama.py, which follows Ollama's documented API."""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest
from typer.testing import CliRunner

from tests.fakes.ollama import FakeOllama, run_fake_ollama
from tests.support import client
from tests.support.checks import check_error
from tests.support.servers import run_gateway
from turnout.cli import app


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with run_fake_ollama() as fake:
        yield fake


@pytest.fixture
def gateway(ollama: FakeOllama) -> Iterator[str]:
    config = {"providers": {"ollama": {"type": "ollama", "endpoint": ollama.url}}}
    with run_gateway(config, environ={}) as url:
        yield url


async def send(method: str, url: str, body: object) -> client.Reply:
    """Any method with a JSON body (tests/support/client has POST and GET only)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body) as resp,
    ):
        return client.Reply(resp.status, resp.headers.copy(), await resp.read(), 0.0)


def ndjson(body: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in body.decode().splitlines()]


async def test_tags_ps_show(gateway: str, ollama: FakeOllama) -> None:
    tags = await client.get(gateway + "/v1/ollama/ollama/tags")
    assert tags.status == 200
    assert [m["name"] for m in tags.json()["models"]] == list(ollama.models)
    ps = await client.get(gateway + "/v1/ollama/ollama/ps")
    assert ps.status == 200 and ps.json() == {"models": []}
    shown = await client.post(gateway + "/v1/ollama/ollama/show", {"model": "llama3.2"})
    assert shown.status == 200 and shown.json()["details"]["family"] == "llama"
    missing = await client.post(gateway + "/v1/ollama/ollama/show", {"model": "nope"})
    assert missing.status == 404
    check_error(missing.json(), type="not_found_error", code="model_not_found", param="model")
    unnamed = await client.post(gateway + "/v1/ollama/ollama/show", {})
    assert unnamed.status == 400 and unnamed.json()["error"]["param"] == "model"
    other = await client.get(gateway + "/v1/ollama/elsewhere/tags")
    assert other.status == 404 and "Ollama providers: ollama" in other.json()["error"]["message"]


async def test_pull_and_delete_are_disabled_by_default(
    gateway: str, ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_LLM_ENABLE_PULL", raising=False)
    for method, path in (("POST", "pull"), ("DELETE", "delete")):
        reply = await send(method, gateway + f"/v1/ollama/ollama/{path}", {"model": "qwen2.5:0.5b"})
        assert reply.status == 403
        check_error(reply.json(), type="permission_error", code="pull_disabled")
    assert ollama.bodies("/api/pull") == [] and ollama.bodies("/api/delete") == []


async def test_pull_streams_ollamas_progress_then_delete(
    gateway: str, ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    reply = await client.post(gateway + "/v1/ollama/ollama/pull", {"model": "qwen2.5:0.5b"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/x-ndjson")
    lines = ndjson(reply.body)
    assert lines == ollama.sent[-1]  # relayed line for line, as Ollama sent them
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    layer = [line for line in lines if "completed" in line]
    assert layer and layer[-1]["completed"] == layer[-1]["total"]
    assert ollama.bodies("/api/pull")[-1] == {
        "model": "qwen2.5:0.5b", "insecure": False, "stream": True,
    }  # fmt: skip
    tags = (await client.get(gateway + "/v1/ollama/ollama/tags")).json()
    assert "qwen2.5:0.5b" in [m["name"] for m in tags["models"]]

    deleted = await send("DELETE", gateway + "/v1/ollama/ollama/delete", {"model": "qwen2.5:0.5b"})
    assert deleted.status == 200 and deleted.json()["deleted"] is True
    assert "qwen2.5:0.5b" not in ollama.models
    again = await send("DELETE", gateway + "/v1/ollama/ollama/delete", {"model": "qwen2.5:0.5b"})
    assert again.status == 404
    check_error(again.json(), type="not_found_error", code="model_not_found", param="model")


async def test_a_failed_pull_ends_with_an_error_line(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    reply = await client.post(gateway + "/v1/ollama/ollama/pull", {"model": "no-such-model"})
    assert reply.status == 200  # committed with the first progress line, as Ollama is
    lines = ndjson(reply.body)
    assert lines[0] == {"status": "pulling manifest"}
    error = lines[-1]["error"]
    assert isinstance(error, dict) and "file does not exist" in error["message"]
    whole = await client.post(
        gateway + "/v1/ollama/ollama/pull", {"model": "qwen2.5:0.5b", "stream": False}
    )
    assert whole.status == 200 and whole.json() == {"status": "success"}


def test_cli(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_BASE_URL", ollama.url + "/api")
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    listed = runner.invoke(app, ["ollama", "list"])
    assert listed.exit_code == 0, listed.output
    assert "llama3.2:latest" in listed.stdout and "Q4_K_M" in listed.stdout
    shown = runner.invoke(app, ["ollama", "show", "llava:7b"])
    assert shown.exit_code == 0 and '"vision"' in shown.stdout
    monkeypatch.delenv("LOCAL_LLM_ENABLE_PULL", raising=False)
    refused = runner.invoke(app, ["ollama", "pull", "qwen2.5:0.5b"])
    assert refused.exit_code == 2 and "LOCAL_LLM_ENABLE_PULL=true" in refused.output
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    pulled = runner.invoke(app, ["ollama", "pull", "qwen2.5:0.5b"])
    assert pulled.exit_code == 0, pulled.output
    assert "qwen2.5:0.5b: success" in pulled.stdout and "verifying sha256 digest" in pulled.stdout
    assert "qwen2.5:0.5b" in ollama.models
    gone = runner.invoke(app, ["ollama", "delete", "qwen2.5:0.5b"])
    assert gone.exit_code == 0 and "qwen2.5:0.5b" not in ollama.models
    failed = runner.invoke(app, ["ollama", "pull", "no-such-model"])
    assert failed.exit_code == 1 and "file does not exist" in failed.output
    wrong = runner.invoke(app, ["ollama", "list", "--provider", "other"])
    assert wrong.exit_code == 2 and "Ollama providers: ollama" in wrong.output
