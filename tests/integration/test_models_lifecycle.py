"""Local model lifecycle on the real Gemma 3 270M GGUF: a models directory served by the embedded
engine, load and unload (in process, over HTTP, from the CLI), LRU eviction, idle unload, the
thrash workload, cancelled loads and the memory budget.

The directory holds three models: ``a`` and ``c`` (links to the Q4_K_M file under two names)
and ``b`` (a Q8_0 requantization of it), so each is a separate model to load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support import client
from tests.support.checks import check_error
from tests.support.servers import run_gateway
from turnout import Gateway
from turnout.cli import app
from turnout.models.directory import scan
from turnout.models.quantize import quantize

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens


@pytest.fixture(scope="module")
def models_dir(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    (folder / "a.gguf").symlink_to(gemma_path)
    (folder / "c.gguf").symlink_to(gemma_path)
    quantize(gemma_path, folder / "b.gguf", "Q8_0")
    return folder


def config(models_dir: Path, **settings: Any) -> dict[str, Any]:
    provider = {"type": "embedded", "models_dir": str(models_dir), **settings}
    return {"providers": {"local": provider}, "models_dir": str(models_dir)}


def provider(gw: Gateway) -> Any:
    return gw.providers["local"]


def state(gw: Gateway) -> dict[str, str]:
    return {entry["name"]: entry["state"] for entry in provider(gw).status()}


async def ask(gw: Gateway, model: str, tokens: int = 4) -> dict[str, Any]:
    reply: dict[str, Any] = await gw.chat(
        f"local/{model}", HI, max_tokens=tokens, logit_bias=NO_EOS
    )
    assert reply["choices"][0]["finish_reason"] == "length"
    return reply


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.02)


def test_directory_listing_reads_the_real_gguf(models_dir: Path) -> None:
    found = {m.name: m.to_json() for m in scan(models_dir)}
    assert sorted(found) == ["a", "b", "c"]
    for name, quant in (("a", "Q4_K_M"), ("b", "Q8_0"), ("c", "Q4_K_M")):
        entry = found[name]
        assert entry["format"] == "gguf" and entry["architecture"] == "gemma3"
        assert entry["parameters"] == 268_098_176 and entry["parameter_label"] == "268M"
        assert entry["quantization"] == quant and entry["context_length"] == 32768
    assert found["a"]["size"] == 253_113_024


def test_cli_models_list(models_dir: Path) -> None:
    result = CliRunner().invoke(app, ["models", "list", "--dir", str(models_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert '"quantization": "Q8_0"' in result.stdout and '"architecture": "gemma3"' in result.stdout


async def test_directory_models_load_on_first_use_and_unload_on_request(
    models_dir: Path,
) -> None:
    async with Gateway(config(models_dir), environ={}) as gw:
        assert state(gw) == {}, "directory models must not load at start"
        ids = [m["id"] for m in await gw.models()]
        assert {"local/a", "local/b", "local/c"} <= set(ids)
        await ask(gw, "a")  # waits while a loads, never fails for it
        assert state(gw) == {"a": "loaded"}
        engine = provider(gw).engines["a"]
        await until(lambda: engine.pool.qsize() == 1, 5, "the instance is back in its pool")
        assert await provider(gw).unload_model("a") is True
        assert state(gw) == {} and engine.pool.qsize() == 0
        seconds = await provider(gw).load_model("a")
        assert seconds > 0 and state(gw) == {"a": "loaded"}
        await ask(gw, "a")
        assert provider(gw).scheduler.stats["loads"] == 2


async def test_lru_eviction_with_one_model_loaded(models_dir: Path) -> None:
    async with Gateway(config(models_dir, max_models_loaded=1), environ={}) as gw:
        await ask(gw, "a")
        await ask(gw, "b")
        assert state(gw) == {"b": "loaded"}
        assert provider(gw).engines["a"].pool.qsize() == 0  # its llama.cpp instance was closed
        await ask(gw, "a")
        assert state(gw) == {"a": "loaded"}
        stats = provider(gw).scheduler.stats
        assert (stats["loads"], stats["evicted"]) == (3, 2)


async def test_idle_model_unloads_after_keep_alive(models_dir: Path) -> None:
    cfg = {**config(models_dir, keep_alive="1s"), "security": {"request_keep_alive_min": "1s"}}
    async with Gateway(cfg, environ={}) as gw:
        await ask(gw, "a")
        await until(lambda: provider(gw).status()[0]["active"] == 0, 5, "the request ended")
        (entry,) = provider(gw).status()
        assert entry["state"] == "loaded" and entry["expires_at"] > time.time()
        await until(lambda: state(gw) == {}, 5, "a unloaded after 1 s idle")
        assert provider(gw).scheduler.stats["idle"] == 1
        # A request's own keep_alive applies within security.request_keep_alive_min..max: its 0
        # (Ollama's "unload now") becomes the least it may ask, here 1 s; unloading at once is
        # the admin's act (POST /v1/models/{id}/unload).
        await gw.chat("local/b", HI, max_tokens=2, keep_alive=0)
        await asyncio.sleep(0.3)
        assert state(gw) == {"b": "loaded"}, "a request cannot unload a model at once"
        await until(lambda: state(gw) == {}, 5, "b unloaded after the least keep_alive")


async def test_thrash_workload_every_request_answered_with_few_swaps(models_dir: Path) -> None:
    """A, B, A, A, C at once with room for two models (llama-swap#612): all answered; loads at
    most the optimum (3) plus one."""
    async with Gateway(config(models_dir, max_models_loaded=2), environ={}) as gw:
        replies = await asyncio.gather(*(ask(gw, m) for m in ["a", "b", "a", "a", "c"]))
        assert len(replies) == 5
        loads = provider(gw).scheduler.stats["loads"]
        assert loads <= 3 + 1, f"{loads} loads for A, B, A, A, C"


async def test_a_load_every_request_gave_up_on_is_cancelled(models_dir: Path) -> None:
    async with Gateway(config(models_dir), environ={}) as gw:
        request = asyncio.create_task(ask(gw, "c"))
        await until(lambda: state(gw).get("c") == "loading", 10, "c starts loading")
        request.cancel()
        await until(lambda: state(gw) == {}, 10, "the abandoned load is gone")
        stats = provider(gw).scheduler.stats
        assert stats["cancelled"] == 1 and stats["loads"] == 0
        assert provider(gw).engines["c"].pool.qsize() == 0


@pytest.fixture(scope="module")
def gateway_url(models_dir: Path) -> Iterator[str]:
    with run_gateway(config(models_dir, max_models_loaded=1), environ={}) as url:
        yield url


async def test_http_load_ps_unload(gateway_url: str) -> None:
    loaded = await client.post(gateway_url + "/v1/models/local/a/load", {"keep_alive": "10m"})
    assert loaded.status == 200, loaded.body
    assert loaded.json()["id"] == "local/a" and loaded.json()["state"] == "loaded"
    ps = (await client.get(gateway_url + "/v1/local/ps")).json()
    (entry,) = ps["data"]
    assert entry["id"] == "local/a" and entry["state"] == "loaded" and entry["progress"] == 1.0
    assert entry["estimate_bytes"] > 253_113_024
    assert ps["stats"]["local"]["loads"] >= 1
    listing = (await client.get(gateway_url + "/v1/local/models")).json()
    served = {m["name"]: m["served_as"] for m in listing["data"]}
    assert served == {"a": "local/a", "b": "local/b", "c": "local/c"}
    gone = await client.post(gateway_url + "/v1/models/local/a/unload", {})
    assert gone.status == 200 and gone.json()["state"] == "unloaded"
    again = await client.post(gateway_url + "/v1/models/local/a/unload", {})
    assert again.json()["state"] == "not_loaded"
    assert (await client.get(gateway_url + "/v1/local/ps")).json()["data"] == []


async def test_http_errors_are_openai_shaped(gateway_url: str) -> None:
    missing = await client.post(gateway_url + "/v1/models/local/nope/load", {})
    assert missing.status == 404
    check_error(missing.json(), type="not_found_error", code="model_not_found", param="model")
    bad = await client.post(gateway_url + "/v1/models/local/a/load", {"keep_alive": "soon"})
    assert bad.status == 400
    check_error(bad.json(), type="invalid_request_error", code="invalid_value", param="keep_alive")


async def test_two_models_one_slot_over_http_both_answered(gateway_url: str) -> None:
    """With room for one model, requests for two arrive together: both wait their turn."""
    url = gateway_url + "/v1/chat/completions"
    bodies = [
        {"model": f"local/{m}", "messages": HI, "max_tokens": 4, "logit_bias": NO_EOS}
        for m in ("b", "c", "b")
    ]
    replies = await asyncio.gather(*(client.post(url, body) for body in bodies))
    assert [r.status for r in replies] == [200, 200, 200], [r.body for r in replies]


def test_cli_load_ps_unload(gateway_url: str) -> None:
    runner = CliRunner()
    loaded = runner.invoke(app, ["models", "load", "local/b", "--url", gateway_url])
    assert loaded.exit_code == 0, loaded.output
    assert "local/b loaded" in loaded.stdout
    ps = runner.invoke(app, ["models", "ps", "--url", gateway_url])
    assert ps.exit_code == 0 and "local/b" in ps.stdout and "loaded" in ps.stdout
    gone = runner.invoke(app, ["models", "unload", "local/b", "--url", gateway_url])
    assert gone.exit_code == 0 and "local/b unloaded" in gone.stdout
    missing = runner.invoke(app, ["models", "load", "local/nope", "--url", gateway_url])
    assert missing.exit_code == 1 and "HTTP 404" in missing.output


async def test_memory_budget_refuses_a_model_that_cannot_fit(models_dir: Path) -> None:
    with run_gateway(config(models_dir, max_memory_mb=200), environ={}) as url:
        body = {"model": "local/a", "messages": HI, "max_tokens": 2}
        reply = await client.post(url + "/v1/chat/completions", body)
    assert reply.status == 503, reply.body
    check_error(reply.json(), type="backend_error", code="insufficient_memory")
    assert "max_memory_mb" in reply.json()["error"]["message"]


async def test_per_model_resources_reach_llama_cpp(gemma_path: Path) -> None:
    entry = {
        "name": "tuned", "path": str(gemma_path), "chat_format": "gemma", "n_ctx": 512,
        "n_threads": 1, "n_batch": 64, "use_mmap": False, "use_mlock": False,
    }  # fmt: skip
    config = {"providers": {"local": {"type": "embedded", "models": [entry]}}}
    async with Gateway(config, environ={}) as gw:
        llm = provider(gw).engines["tuned"].pool._queue[0]
        assert llm.n_ctx() == 512 and llm.n_batch == 64
        assert llm.context_params.n_threads == 1
        assert llm.model_params.load_mode == 0  # LLAMA_LOAD_MODE_NONE: read, not mapped
        await ask(gw, "tuned")
        (status,) = provider(gw).status()
        size = await asyncio.to_thread(lambda: gemma_path.stat().st_size)
        # Weights, plus a KV cache of 512 tokens (18 layers x 1 KV head x 512 dims x 2 bytes).
        assert status["estimate_bytes"] >= size + 18 * 512 * 512 * 2


async def test_a_models_own_memory_limit_is_enforced(gemma_path: Path) -> None:
    entry = {"name": "capped", "path": str(gemma_path), "max_memory_mb": 100}
    config = {"providers": {"local": {"type": "embedded", "models": [entry]}}}
    with run_gateway(config, environ={}) as url:
        body = {"model": "local/capped", "messages": HI, "max_tokens": 2}
        reply = await client.post(url + "/v1/chat/completions", body)
    assert reply.status == 503, reply.body
    check_error(reply.json(), type="backend_error", code="insufficient_memory")
    assert "its max_memory_mb (100 MB)" in reply.json()["error"]["message"]
