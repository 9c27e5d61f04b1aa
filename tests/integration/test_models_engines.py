"""Managed server engines on the real Gemma GGUF: llama.cpp's ``llama-server`` (built and cached
by scripts/build_llama_server.sh) and llama-cpp-python's server, each started on demand on a free
port, relayed to, and stopped when idle."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import client
from tests.support.checks import check_chat_stream
from tests.support.servers import run_gateway
from turnout import Gateway
from turnout.errors import ConfigError
from turnout.providers.embedded.server_engine import PYTHON_SERVER, command, find_llama_server

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]
NO_EOS = {"1": -100, "106": -100}
#: None: turnout's cached llama-server (the ``llama_server_binary`` fixture builds it first on a
#: fresh machine); PYTHON_SERVER: llama-cpp-python's server
SERVERS = [
    pytest.param(None, id="llama-server"),
    pytest.param(PYTHON_SERVER, id="llama-cpp-python"),
]


@pytest.fixture(autouse=True)
def _binary_built(llama_server_binary: Path) -> None:
    """Every test here may start llama-server, found where the build script caches it."""
    assert find_llama_server() is not None


@pytest.fixture(scope="module")
def models_dir(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served")
    (folder / "gemma.gguf").symlink_to(gemma_path)
    return folder


def config(models_dir: Path, server: str | None, **extra: Any) -> dict[str, Any]:
    provider = {
        "type": "embedded", "models_dir": str(models_dir), "engine": "llama-server",
        "llama_server": server, "keep_alive": "1s", **extra,
    }  # fmt: skip
    return {"providers": {"local": provider}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("server", SERVERS)
async def test_a_server_starts_on_demand_answers_and_stops_when_idle(
    models_dir: Path, server: str | None
) -> None:
    async with Gateway(config(models_dir, server), environ={}) as gw:
        provider: Any = gw.providers["local"]
        assert provider.status() == [], "no process before the first request"
        reply = await gw.chat("local/gemma", HI, max_tokens=6, logit_bias=NO_EOS)
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["completion_tokens"] == 6
        (entry,) = provider.status()
        expected = "llama-server" if server is None else PYTHON_SERVER
        assert entry["engine"] == expected and alive(entry["pid"])
        if server is None:  # llama-server's /health is open, so that probes need no key
            assert (await client.get(entry["url"] + "/health")).status == 200
        # The process listens on loopback: a local user going around the gateway is refused.
        assert (await client.get(entry["url"] + "/v1/models")).status == 401
        direct = {"model": "gemma", "messages": HI, "max_tokens": 2}
        assert (await client.post(entry["url"] + "/v1/chat/completions", direct)).status == 401
        forged = {"Authorization": "Bearer guess"}
        assert (await client.get(entry["url"] + "/v1/models", headers=forged)).status == 401
        pieces = [
            chunk
            async for chunk in gw.stream(
                "local/gemma", HI, max_tokens=6, logit_bias=NO_EOS,
                stream_options={"include_usage": True},
            )
        ]  # fmt: skip
        assert pieces[-1]["usage"]["completion_tokens"] == 6
        assert pieces[-1]["usage"]["prompt_tokens"] == reply["usage"]["prompt_tokens"]
        await until(lambda: provider.status() == [], 10, "the idle server stopped")
        await until(lambda: not alive(entry["pid"]), 5, "its process is gone")
        assert provider.scheduler.stats["idle"] == 1
        # The next request starts a new process.
        await gw.chat("local/gemma", HI, max_tokens=2)
        (again,) = provider.status()
        assert again["pid"] != entry["pid"]


async def test_stream_over_http_through_a_managed_server(models_dir: Path) -> None:
    server = None
    with run_gateway(config(models_dir, server, keep_alive="30s"), environ={}) as url:
        body = {
            "model": "local/gemma", "messages": HI, "max_tokens": 8, "stream": True,
            "logit_bias": NO_EOS, "stream_options": {"include_usage": True},
        }  # fmt: skip
        reply = await client.stream(url + "/v1/chat/completions", body)
        assert reply.status == 200 and reply.done
        check_chat_stream(reply.events, max_tokens=8, include_usage=True)
        ps = (await client.get(url + "/v1/local/ps")).json()["data"]
        assert ps[0]["engine"] in ("llama-server", PYTHON_SERVER) and ps[0]["pid"]
        unloaded = await client.post(url + "/v1/models/local/gemma/unload", {})
        assert unloaded.json()["state"] == "unloaded" and not alive(ps[0]["pid"])


async def test_a_server_that_cannot_load_the_model_fails_the_request(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    cfg = config(tmp_path, None)
    async with Gateway(cfg, environ={}) as gw:
        provider: Any = gw.providers["local"]
        with pytest.raises(Exception) as caught:
            await gw.chat("local/broken", HI, max_tokens=2)
        assert "exited with" in str(caught.value) and "broken" in str(caught.value)
        assert provider.status() == [] and provider.scheduler.stats["failed"] == 1


def test_a_missing_binary_is_a_configuration_error(models_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"providers\.local\.llama_server: '/nope'"):
        Gateway(config(models_dir, "/nope"), environ={})


def test_command_lines(gemma_path: Path) -> None:
    from turnout.providers.embedded.settings import EmbeddedModel

    entry = EmbeddedModel(name="g", chat_format="llama-2", n_ctx=1024, n_threads=3, use_mlock=True)
    binary = command("/bin/llama-server", entry, gemma_path, 9999)
    assert binary[:3] == ["/bin/llama-server", "-m", str(gemma_path)]
    for flag, value in (("--port", "9999"), ("-c", "1024"), ("-t", "3"), ("--alias", "g")):
        assert binary[binary.index(flag) + 1] == value
    assert binary[binary.index("--load-mode") + 1] == "mmap+mlock"
    assert binary[-3:] == ["--no-jinja", "--chat-template", "llama2"]
    python = command(None, entry, gemma_path, 9999)
    assert python[1:3] == ["-m", "llama_cpp.server"]
    assert python[python.index("--chat_format") + 1] == "llama-2"
    assert python[python.index("--use_mlock") + 1] == "True"


def test_bench_engines_reports_every_engine(gemma_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from turnout.cli import app

    args = ["bench-engines", str(gemma_path), "--max-tokens", "4", "--runs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["engine"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {
        "llama.cpp in-process", "llama-server (managed)", "llama-cpp-python server (managed)",
    }  # fmt: skip
    for row in rows.values():
        assert row["ok"], row
        assert row["completion_tokens"] == 4  # end tokens banned: exactly max_tokens each
        assert row["load_seconds"] > 0 and row["first_seconds"] > 0 and row["tokens_per_second"] > 0
    onnx = CliRunner().invoke(app, ["bench-engines", str(gemma_path.with_suffix(".onnx"))])
    assert onnx.exit_code == 2
