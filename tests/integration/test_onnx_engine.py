"""The onnx engine on a real ONNX model: the Gemma 3 270M GGUF converted to a Hugging Face folder,
then built to an int4 onnxruntime-genai model by turnout's build_onnx (the ``onnx_model_dir``
fixture, once per machine). Served from a models directory by the embedded provider: listed,
loaded and unloaded over HTTP, answering the official ``openai`` SDK with the text and token
counts onnxruntime-genai itself gives for the same prompt, stopping when its client leaves.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from typer.testing import CliRunner

from tests.support import client
from tests.support.servers import run_gateway
from turnout import Gateway
from turnout.cli import app
from turnout.errors import ConfigError
from turnout.models.directory import scan

# The first test here may build the model (GGUF -> HF folder -> ONNX: about two minutes here).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "gemma-onnx"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi."}]
#: Gemma's chat template, written out here rather than taken from turnout's
GEMMA_PROMPT = "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # a prompt the model continues for long


def link(source: Path, target: Path) -> None:
    """A hard link (the files are hundreds of MB), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@pytest.fixture(scope="module")
def models_dir(onnx_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the ONNX folder (hard links: the scan does not follow a
    symlinked folder) and nothing else."""
    folder = tmp_path_factory.mktemp("onnx-models")
    (folder / MODEL).mkdir()
    for file in onnx_model_dir.iterdir():
        if file.is_file():
            link(file, folder / MODEL / file.name)
    return folder


def config(models_dir: Path, **settings: Any) -> dict[str, Any]:
    provider = {"type": "embedded", "models_dir": str(models_dir), **settings}
    return {"providers": {"local": provider}, "models_dir": str(models_dir)}


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[tuple[str, Gateway]]:
    gateway = Gateway(config(models_dir, keep_alive="10m"), environ={})
    with run_gateway(gateway) as url:
        yield url, gateway


def engine_of(gateway: Gateway) -> Any:
    return gateway.providers["local"].engines[MODEL]  # type: ignore[attr-defined]


def direct_greedy(folder: Path, prompt: str, max_tokens: int) -> tuple[list[int], list[int], str]:
    """(prompt ids, generated ids, their text) from onnxruntime-genai itself, greedy, without
    turnout: BOS then the prompt; generation ends at <eos> (1) or <end_of_turn> (106), which
    are not counted."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = [tokenizer.bos_token_id, *(int(i) for i in tokenizer.encode(prompt))]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max(max_tokens, 512), do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    out: list[int] = []
    while len(out) < max_tokens and not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in (1, 106):
            break
        out.append(token)
    return ids, out, str(tokenizer.decode(np.asarray(out, dtype=np.int32)))


def test_the_directory_lists_the_onnx_model(models_dir: Path, served: tuple[str, Gateway]) -> None:
    (found,) = scan(models_dir)
    entry = found.to_json()
    assert (entry["name"], entry["format"]) == (MODEL, "onnx")
    assert entry["architecture"] == "gemma3_text" and entry["context_length"] == 32768
    assert entry["size"] > 200_000_000  # int4 weights and the tokenizer
    listed = CliRunner().invoke(app, ["models", "list", "--dir", str(models_dir), "--json"])
    assert listed.exit_code == 0, listed.output
    in_dir = [m for m in json.loads(listed.stdout) if not m.get("default")]  # not the package's
    assert {m["name"]: m["format"] for m in in_dir} == {MODEL: "onnx"}

    url, gateway = served

    async def listing() -> None:
        models = await gateway.providers["local"].list_models()
        (info,) = [m for m in models if m.id == MODEL]
        assert (info.meta["format"], info.meta["engine"]) == ("onnx", "onnx")
        http = (await client.get(url + "/v1/local/models")).json()
        (item,) = http["data"]
        assert (item["format"], item["served_as"]) == ("onnx", f"local/{MODEL}")
        ids = [m["id"] for m in (await client.get(url + "/v1/models")).json()["data"]]
        assert f"local/{MODEL}" in ids

    asyncio.run(listing())


async def test_load_and_unload_over_http(served: tuple[str, Gateway], models_dir: Path) -> None:
    url, gateway = served
    engine = engine_of(gateway)
    loaded = await client.post(url + f"/v1/models/local/{MODEL}/load", {})
    assert loaded.status == 200, loaded.body
    assert loaded.json()["state"] == "loaded" and engine.model is not None
    (entry,) = (await client.get(url + "/v1/local/ps")).json()["data"]
    assert (entry["id"], entry["state"], entry["engine"]) == (f"local/{MODEL}", "loaded", "onnx")
    files = sum(p.stat().st_size for p in (models_dir / MODEL).iterdir())
    assert entry["estimate_bytes"] > files  # the files, the KV cache and the runtime's buffers
    gone = await client.post(url + f"/v1/models/local/{MODEL}/unload", {})
    assert gone.status == 200 and gone.json()["state"] == "unloaded"
    assert engine.model is None and engine.tokenizer is None
    assert (await client.get(url + "/v1/local/ps")).json()["data"] == []


async def test_openai_sdk_chat_matches_onnxruntime_genai(
    served: tuple[str, Gateway], onnx_model_dir: Path
) -> None:
    """Non-streamed and streamed chat through the gateway give the text and the token counts
    that onnxruntime-genai gives directly for the same prompt (greedy)."""
    url, _ = served
    prompt_ids, expected, text = direct_greedy(onnx_model_dir, GEMMA_PROMPT, 12)
    assert text.strip(), "the model said nothing: no test of the engine"
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    async with sdk:
        reply = await sdk.chat.completions.create(
            model=f"local/{MODEL}", messages=HI, max_tokens=12, temperature=0
        )
        stream = await sdk.chat.completions.create(
            model=f"local/{MODEL}", messages=HI, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    finish = "length" if len(expected) == 12 else "stop"
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == finish
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        len(prompt_ids), len(expected)
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt_ids), len(expected))
    assert usage.total_tokens == len(prompt_ids) + len(expected)


async def test_a_completion_and_its_limits(served: tuple[str, Gateway]) -> None:
    url, _ = served
    body = {"model": f"local/{MODEL}", "prompt": COUNTING, "max_tokens": 6, "temperature": 0}
    reply = await client.post(url + "/v1/completions", body)
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["choices"][0]["finish_reason"] == "length" and data["choices"][0]["text"]
    assert data["usage"]["completion_tokens"] == 6
    sampled = {**body, "temperature": 0.9, "top_p": 0.9, "top_k": 20, "seed": 7}
    first, second = [(await client.post(url + "/v1/completions", sampled)).json() for _ in "12"]
    assert first["choices"][0]["text"] == second["choices"][0]["text"]  # the seed is honoured
    too_long = await client.post(
        url + "/v1/completions", {**body, "prompt": "word " * 2100, "max_tokens": 2}
    )
    assert too_long.status == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


async def test_a_client_that_leaves_stops_the_generation(served: tuple[str, Gateway]) -> None:
    """A stream asked for 400 tokens; its client reads the first piece of text and goes: the
    engine stops within a few tokens. Without the stop it would pass 16: the same greedy
    generation, asked for 16 tokens, runs to its length (the prompt makes the model count on)."""
    url, gateway = served
    engine = engine_of(gateway)
    control = {"model": f"local/{MODEL}", "prompt": COUNTING, "max_tokens": 16, "temperature": 0}
    reply = (await client.post(url + "/v1/completions", control)).json()
    assert reply["choices"][0]["finish_reason"] == "length", reply
    generated: list[int] = []
    original = engine._tokens

    def counted(prompt_ids: list[int], sampling: Any) -> Iterator[str]:
        for piece in original(prompt_ids, sampling):
            generated.append(1)
            yield piece

    engine._tokens = counted  # counts what the runtime really generated
    try:
        body = {"model": f"local/{MODEL}", "prompt": COUNTING, "max_tokens": 400,
                "temperature": 0, "stream": True}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            resp = await session.post(url + "/v1/completions", json=body)
            assert resp.status == 200
            while True:  # until the first piece of text
                line = (await resp.content.readline()).decode()
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    break
            resp.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 30
        while engine._workers:  # the worker thread ends once it sees the client gone
            assert time.monotonic() < deadline, "the generation did not stop"
            await asyncio.sleep(0.05)
        assert 1 <= len(generated) < 16, f"{len(generated)} tokens generated for a gone client"
    finally:
        engine._tokens = original


async def test_forcing_onnx_on_a_gguf_is_refused_at_start(gemma_path: Path) -> None:
    entry = {"name": "g", "path": str(gemma_path), "engine": "onnx"}
    with pytest.raises(ConfigError) as caught:
        Gateway({"providers": {"local": {"type": "embedded", "models": [entry]}}}, environ={})
    message = str(caught.value)
    assert "engine" in message and "'onnx'" in message and "gguf" in message


async def test_a_lone_onnx_file_is_refused_at_start(tmp_path: Path, onnx_model_dir: Path) -> None:
    """A model declared as a .onnx file with no genai_config.json beside it: the gateway does
    not start, and says what is missing and how to make it."""
    link(onnx_model_dir / "model.onnx", tmp_path / "lone.onnx")
    entry = {"name": "lone", "path": str(tmp_path / "lone.onnx")}
    gateway = Gateway({"providers": {"local": {"type": "embedded", "models": [entry]}}}, environ={})
    with pytest.raises(ConfigError, match=r"has no genai_config\.json .*--to onnx"):
        await gateway.start()
    await gateway.close()


def test_bench_engines_reports_the_onnx_engine(onnx_model_dir: Path) -> None:
    args = ["bench-engines", str(onnx_model_dir), "--max-tokens", "8", "--runs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["engine"] == "onnxruntime-genai (in-process)"
    assert row["ok"] is True and row["error"] is None, row
    assert row["load_seconds"] > 0 and len(row["generation_seconds"]) == 1
    # the end tokens of genai_config.json banned: every run generates exactly 8 tokens
    assert row["completion_tokens"] == 8 and row["tokens_per_second"] > 0


OWN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\nSure: "
    "{% endif %}"
)


@pytest.fixture
def templated(onnx_model_dir: Path, tmp_path: Path) -> Path:
    """A models directory holding the ONNX model with a chat template of its own."""
    folder = tmp_path / "templated"
    folder.mkdir()
    for file in onnx_model_dir.iterdir():
        if file.name != "tokenizer_config.json":
            link(file, folder / file.name)
    tokenizer_config = json.loads((onnx_model_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = OWN_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


async def test_a_chat_template_of_the_models_own_is_used(templated: Path) -> None:
    """A model whose tokenizer_config.json brings a chat template is prompted with it (here one
    that opens the answer with "Sure: "), BOS once although the template writes it too."""
    rendered = "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\nSure: "
    prompt_ids, expected, text = direct_greedy(templated, rendered, 4)
    async with Gateway(config(templated.parent), environ={}) as gateway:
        reply = await gateway.chat("local/templated", HI, max_tokens=4, temperature=0)
    assert reply["choices"][0]["message"]["content"] == text
    usage = reply["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(prompt_ids), len(expected))


async def test_logit_bias_and_penalties_steer_the_generation(
    served: tuple[str, Gateway], onnx_model_dir: Path
) -> None:
    """The model counts on after COUNTING, with commas. Banning the comma token removes every
    comma; a frequency penalty makes it stop repeating itself; banning Gemma's end tokens makes
    a chat run to max_tokens; an id outside the vocabulary is a 400 naming logit_bias."""
    import onnxruntime_genai as og

    (comma,) = [int(i) for i in og.Tokenizer(str(onnx_model_dir)).encode(",")]
    url, _ = served
    base = {"model": f"local/{MODEL}", "prompt": COUNTING, "max_tokens": 16, "temperature": 0}

    async def text(**extra: Any) -> str:
        reply = await client.post(url + "/v1/completions", {**base, **extra})
        assert reply.status == 200, reply.body
        return str(reply.json()["choices"][0]["text"])

    plain = await text()
    assert plain.count(",") >= 3
    assert "," not in await text(logit_bias={str(comma): -100})
    assert await text(frequency_penalty=2.0) != plain
    chat = {"model": f"local/{MODEL}", "messages": HI, "max_tokens": 12, "temperature": 0,
            "logit_bias": {"1": -100, "106": -100}}  # fmt: skip
    reply = (await client.post(url + "/v1/chat/completions", chat)).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 12
    bad = await client.post(url + "/v1/completions", {**base, "logit_bias": {"999999999": 5}})
    assert bad.status == 400
    error = bad.json()["error"]
    assert (error["param"], error["code"]) == ("logit_bias", "invalid_value"), error


def test_cli_convert_to_onnx_builds_a_model_the_engine_reads(
    hf_model_dir: Path, tmp_path: Path
) -> None:
    """`turnout models convert HF_FOLDER DST --to onnx`: a complete folder at DST, nothing else
    beside it; a bad precision or a folder that is not a model: exit 2, a clear message."""
    target = tmp_path / "out"
    runner = CliRunner()
    args = ["models", "convert", str(hf_model_dir), str(target), "--to", "onnx"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Gemma3ForCausalLM int4" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"} <= {
        p.name for p in target.iterdir()
    }
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    bad = runner.invoke(
        app, [*args[:3], str(tmp_path / "x"), "--to", "onnx", "--precision", "fp16"]
    )
    assert bad.exit_code == 2 and "allowed: int4, int8, fp32" in bad.output
    not_model = tmp_path / "empty"
    not_model.mkdir()
    missing = runner.invoke(
        app, ["models", "convert", str(not_model), str(tmp_path / "y"), "--to", "onnx"]
    )
    assert missing.exit_code == 2 and "has no config.json" in missing.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
