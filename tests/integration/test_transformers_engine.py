"""The transformers engine on the real Gemma 3 270M, converted from its GGUF to a Hugging Face
safetensors folder by transformers itself (fixture ``hf_model_dir``): listing, load and unload
over HTTP, chats and completions through the gateway with the official ``openai`` SDK, usage
from real token counts, stop strings, a client that leaves, LRU across a GGUF and the
safetensors model, forced engines, refusals, and ``bench-engines``.

Gemma 3 270M is a base model: the answers prove the path, not quality.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, BadRequestError
from typer.testing import CliRunner

from tests.support import client
from tests.support.checks import check_chat, check_chat_stream, check_completion, check_error
from tests.support.servers import run_gateway
from turnout import Gateway
from turnout.cli import app
from turnout.errors import ConfigError

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]
GEMMA_PROMPT = "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def models_dir(
    gemma_path: Path, hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``g`` (the GGUF) and ``hf`` (its safetensors folder, files linked, not copied)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "g.gguf").symlink_to(gemma_path)
    (folder / "hf").mkdir()
    for item in hf_model_dir.iterdir():
        (folder / "hf" / item.name).symlink_to(item)
    return folder


@pytest.fixture(scope="module")
def gateway(models_dir: Path) -> Iterator[tuple[Gateway, str]]:
    provider = {"type": "embedded", "models_dir": str(models_dir), "max_models_loaded": 1}
    gw = Gateway({"providers": {"local": provider}, "models_dir": str(models_dir)}, environ={})
    with run_gateway(gw) as url:
        yield gw, url


@pytest.fixture(scope="module")
def tokenizer(hf_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_model_dir)


@pytest.fixture(scope="module")
def prompt_tokens(tokenizer: Any) -> int:
    """The chat's prompt tokens counted apart from the engine: the tokenizer of the folder on
    the Gemma template's text (it adds BOS itself)."""
    return len(tokenizer(GEMMA_PROMPT)["input_ids"])


def sdk(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def engine_of(gw: Gateway, name: str = "hf") -> Any:
    return gw.providers["local"].engines[name]  # type: ignore[attr-defined]


async def test_listing_shows_format_engine_and_metadata(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    listing = {m["name"]: m for m in (await client.get(url + "/v1/local/models")).json()["data"]}
    hf = listing["hf"]
    assert (hf["format"], hf["engine"], hf["served_as"]) == (
        "safetensors",
        "transformers",
        "local/hf",
    )
    assert hf["architecture"] == "Gemma3ForCausalLM" and hf["quantization"] == "BF16"
    assert hf["parameters"] == 268_098_176 and hf["context_length"] == 32768
    assert listing["g"]["engine"] == "llama-cpp"
    models = {m["id"]: m for m in (await client.get(url + "/v1/models")).json()["data"]}
    assert models["local/hf"]["engine"] == "transformers"
    assert models["local/g"]["engine"] == "llama-cpp"


def test_cli_list_names_the_engine(models_dir: Path) -> None:
    listed = CliRunner().invoke(app, ["models", "list", "--dir", str(models_dir), "--json"])
    assert listed.exit_code == 0, listed.output
    engines = {m["name"]: m["engine"] for m in json.loads(listed.stdout) if not m.get("default")}
    assert engines == {"g": "llama-cpp", "hf": "transformers"}


async def test_http_load_ps_unload(gateway: tuple[Gateway, str], hf_model_dir: Path) -> None:
    _, url = gateway
    loaded = await client.post(url + "/v1/models/local/hf/load", {})
    assert loaded.status == 200, loaded.body
    assert loaded.json()["state"] == "loaded"
    (entry,) = [e for e in (await client.get(url + "/v1/local/ps")).json()["data"]]
    assert entry["id"] == "local/hf" and entry["engine"] == "transformers"
    weights = (hf_model_dir / "model.safetensors").stat().st_size
    assert entry["estimate_bytes"] > weights and entry["progress"] == 1.0
    gone = await client.post(url + "/v1/models/local/hf/unload", {})
    assert gone.status == 200 and gone.json()["state"] == "unloaded"
    assert (await client.get(url + "/v1/local/ps")).json()["data"] == []


async def test_chat_through_the_openai_sdk(
    gateway: tuple[Gateway, str], prompt_tokens: int
) -> None:
    _, url = gateway
    async with sdk(url) as openai:
        raw = await openai.chat.completions.with_raw_response.create(
            model="local/hf",
            messages=HI,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        again = await openai.chat.completions.create(
            model="local/hf",
            messages=HI,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
    body = json.loads(raw.content)  # the reply as sent, checked against OpenAI's schema
    choice = check_chat(body, max_tokens=8)
    assert raw.parse().choices[0].message.content == choice["message"]["content"]
    assert choice["message"]["content"] == again.choices[0].message.content  # greedy
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert "<end_of_turn>" not in choice["message"]["content"]


async def test_chat_stream_with_usage(gateway: tuple[Gateway, str], prompt_tokens: int) -> None:
    _, url = gateway
    body = {
        "model": "local/hf", "messages": HI, "max_tokens": 6, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    raw = await client.stream(url + "/v1/chat/completions", body)
    assert raw.status == 200 and raw.done
    usage = check_chat_stream(raw.events, max_tokens=6, include_usage=True)
    assert usage is not None and usage["prompt_tokens"] == prompt_tokens
    async with sdk(url) as openai:
        stream = await openai.chat.completions.create(
            model="local/hf",
            messages=HI,
            max_tokens=6,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        texts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(texts) == raw.text()  # the same greedy answer, streamed by the SDK
    finish = [e["choices"][0]["finish_reason"] for e in raw.chunks][-1]
    if finish == "length":
        assert usage["completion_tokens"] == 6


async def test_stop_string_cuts_the_answer(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    async with sdk(url) as openai:
        whole = await openai.completions.create(
            model="local/hf", prompt="The capital of France is", max_tokens=10, temperature=0
        )
        text = whole.choices[0].text
        stop = text.strip()[3:6]  # a few characters inside the greedy answer
        assert len(stop) == 3, text
        raw = await openai.completions.with_raw_response.create(
            model="local/hf", prompt="The capital of France is", max_tokens=10, temperature=0,
            stop=[stop],
        )  # fmt: skip
    check_completion(json.loads(raw.content), max_tokens=10)
    cut = raw.parse()
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


async def test_seeded_sampling_repeats(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    texts = []
    async with sdk(url) as openai:
        for seed in (7, 7):
            reply = await openai.completions.create(
                model="local/hf", prompt="Once upon a time", max_tokens=6, temperature=1.0,
                top_p=0.95, seed=seed,
            )  # fmt: skip
            texts.append(reply.choices[0].text)
    assert texts[0] == texts[1]


async def test_logit_bias_bans_the_greedy_token(
    gateway: tuple[Gateway, str], tokenizer: Any
) -> None:
    _, url = gateway
    prompt = "The capital of France is"
    async with sdk(url) as openai:
        first = await openai.completions.create(
            model="local/hf", prompt=prompt, max_tokens=3, temperature=0
        )
        ids = tokenizer(prompt + first.choices[0].text)["input_ids"]
        greedy = ids[len(tokenizer(prompt)["input_ids"])]
        banned = await openai.completions.create(
            model="local/hf", prompt=prompt, max_tokens=3, temperature=0,
            logit_bias={str(greedy): -100}, frequency_penalty=0.5,
        )  # fmt: skip
    text = banned.choices[0].text
    assert text != first.choices[0].text
    assert tokenizer(prompt + text)["input_ids"][len(tokenizer(prompt)["input_ids"])] != greedy


async def test_a_client_that_leaves_stops_generation(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    await client.post(url + "/v1/models/local/hf/load", {})
    engine = engine_of(gw)
    generated = {"tokens": 0}
    original = engine._tokens

    def counting(ids: Any, sampling: Any) -> Iterator[str]:
        for piece in original(ids, sampling):
            generated["tokens"] += 1
            yield piece

    engine._tokens = counting
    try:
        body = {"model": "local/hf", "messages": HI, "max_tokens": 400, "stream": True}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/v1/chat/completions", json=body) as resp,
        ):
            seen = 0
            async for line in resp.content:
                seen += line.startswith(b"data: ")
                if seen == 3:
                    break  # leave after the role and two tokens
        left = generated["tokens"]
        deadline = time.monotonic() + 30
        while engine._workers:  # the worker ends between two tokens
            assert time.monotonic() < deadline, "generation went on after the client left"
            await asyncio.sleep(0.05)
        assert generated["tokens"] - left <= 3, generated
        assert generated["tokens"] < 16
    finally:
        del engine._tokens
    status = {e["name"]: e for e in gw.providers["local"].status()}  # type: ignore[attr-defined]
    assert status["hf"]["active"] == 0


async def test_lru_across_a_gguf_and_the_safetensors_model(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    scheduler = gw.providers["local"].scheduler  # type: ignore[attr-defined]
    before = dict(scheduler.stats)
    async with sdk(url) as openai:
        for model in ("g", "hf", "g"):
            reply = await openai.chat.completions.create(
                model=f"local/{model}",
                messages=HI,
                max_tokens=2,  # type: ignore[arg-type]
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
            loaded = [e["name"] for e in scheduler.status() if e["state"] == "loaded"]
            assert loaded == [model]
    assert scheduler.stats["evicted"] - before["evicted"] >= 2
    assert engine_of(gw).model is None  # the transformers model let go of its weights


async def test_requests_it_cannot_serve_get_a_clear_error(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": "local/hf", "messages": HI, "max_tokens": 2, "tools": tools}
    reply = await client.post(url + "/v1/chat/completions", body)
    assert reply.status == 400, reply.body
    check_error(
        reply.json(), type="invalid_request_error", code="unsupported_capability", param="tools"
    )
    embed = await client.post(url + "/v1/embeddings", {"model": "local/hf", "input": "x"})
    assert embed.status == 400, embed.body
    assert "embeddings" in embed.json()["error"]["message"]
    async with sdk(url) as openai:
        with pytest.raises(BadRequestError, match="lacks tools"):
            await openai.chat.completions.create(
                model="local/hf",
                messages=HI,
                max_tokens=2,
                tools=tools,  # type: ignore[arg-type]
            )


async def test_forced_engine_and_a_wrong_format(gemma_path: Path, hf_model_dir: Path) -> None:
    entry = {"name": "forced", "path": str(hf_model_dir), "engine": "transformers", "n_threads": 1}
    config = {"providers": {"local": {"type": "embedded", "models": [entry]}}}
    async with Gateway(config, environ={}) as gw:
        assert engine_of(gw, "forced").kind == "transformers"
        reply = await gw.chat("local/forced", HI, max_tokens=3)
        assert reply["usage"]["completion_tokens"] <= 3
    wrong = {"name": "wrong", "path": str(gemma_path), "engine": "transformers"}
    with pytest.raises(ConfigError, match="'transformers' cannot serve a gguf model"):
        Gateway({"providers": {"local": {"type": "embedded", "models": [wrong]}}}, environ={})
    wrong = {"name": "wrong", "path": str(hf_model_dir), "engine": "llama-server"}
    with pytest.raises(ConfigError, match="'llama-server' cannot serve a safetensors model"):
        Gateway({"providers": {"local": {"type": "embedded", "models": [wrong]}}}, environ={})


def test_bench_engines_on_the_safetensors_folder(hf_model_dir: Path) -> None:
    args = ["bench-engines", str(hf_model_dir), "--max-tokens", "4", "--runs", "1", "--json"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    (result,) = json.loads(done.stdout)
    assert result["engine"] == "transformers (in-process)" and result["ok"], result
    assert result["load_seconds"] > 0 and 0 < result["completion_tokens"] <= 4
    assert result["tokens_per_second"] > 0


def test_convert_cli_refuses_an_existing_target(gemma_path: Path, hf_model_dir: Path) -> None:
    args = ["models", "convert", str(gemma_path), str(hf_model_dir), "--to", "safetensors"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "already exists" in done.output


def test_a_cancelled_load_of_the_real_model_frees_it(hf_model_dir: Path) -> None:
    from turnout.providers.embedded.llama_engine import LoadCancelled
    from turnout.providers.embedded.settings import EmbeddedModel
    from turnout.providers.embedded.torch_engine import TransformersEngine

    engine = TransformersEngine(EmbeddedModel(name="hf"), lambda: hf_model_dir)
    cancel = threading.Event()

    def progress(fraction: float) -> None:
        if fraction >= 0.3:  # the tokenizer is read: give up before the weights
            cancel.set()

    with pytest.raises(LoadCancelled):
        asyncio.run(engine.load(progress, cancel))
    assert engine.model is None and engine.tokenizer is None
