"""The transformers engine's batched generation on the CPU (``max_batch: 4``) through a real
gateway over HTTP, on the real Gemma 3 270M (fixture ``hf_model_dir``), against the same model
generating one request at a time: concurrent chats get the same greedy answers and usage, they
share decoding steps, stop strings and ``logit_bias`` work, a bad token id is refused naming
``logit_bias``, and the status shows the batch. float32 on both sides, so the batch's padded
prefill and the single request's agree to the last bit that matters for argmax."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import client
from tests.support.servers import run_gateway
from turnout import Gateway

pytestmark = pytest.mark.slow

QUESTIONS = ["Say hi.", "Count to five.", "What is the capital of France?", "Name a colour."]


@pytest.fixture(scope="module")
def gateway(hf_model_dir: Path) -> Iterator[tuple[Gateway, str]]:
    common = {"path": str(hf_model_dir), "engine": "transformers", "dtype": "float32",
              "n_ctx": 256}  # fmt: skip
    models = [
        {"name": "one", "max_batch": 1, **common},
        {"name": "batch", "max_batch": 4, **common},
    ]
    provider = {"type": "embedded", "device": "cpu", "models": models, "max_models_loaded": 2}
    gw = Gateway({"providers": {"local": provider}}, environ={})
    with run_gateway(gw) as url:
        yield gw, url


async def chat(url: str, model: str, question: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 12, "temperature": 0, **extra}  # fmt: skip
    reply = await client.post(url + "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    return reply.json()  # type: ignore[no-any-return]


async def test_concurrent_chats_in_a_batch_answer_as_one_at_a_time(
    gateway: tuple[Gateway, str],
) -> None:
    gw, url = gateway
    alone = [await chat(url, "one", q) for q in QUESTIONS]
    engine = gw.providers["local"].engines["batch"]  # type: ignore[attr-defined]
    together = await asyncio.gather(*(chat(url, "batch", q) for q in QUESTIONS))
    for a, b in zip(alone, together, strict=True):
        assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
        assert b["usage"] == a["usage"]
        assert b["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"]
    assert engine.batcher.mode == "eager" and engine.device == "cpu"
    # four requests of 12 tokens shared their steps: far fewer than 4 x 11 decoding passes
    assert engine.batcher.steps < 4 * 11
    status = (await client.get(url + "/v1/local/ps")).json()
    row = next(r for r in status["data"] if r["name"] == "batch")
    assert row["batch"]["slots"] == 4 and row["batch"]["mode"] == "eager"
    assert row["device"] == "cpu"


async def test_stream_with_a_stop_string_and_logit_bias(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    body = {
        "model": "batch", "prompt": "One, two, three,", "max_tokens": 20, "temperature": 0,
        "stop": [" six"], "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    stream = await client.stream(url + "/v1/completions", body)
    assert stream.status == 200 and stream.done
    text = "".join(c["choices"][0]["text"] for c in stream.chunks)
    assert text == " four, five,"
    assert stream.chunks[-1]["choices"][0]["finish_reason"] == "stop"
    usage = [e["usage"] for e in stream.events if e.get("usage")][-1]
    assert usage["completion_tokens"] == 5  # the stop string's token counted, not shown
    # banning " four"'s first token changes the answer
    plain = await chat(url, "batch", "Count to five.")
    first = plain["choices"][0]["message"]["content"]
    from transformers import AutoTokenizer

    engine = gateway[0].providers["local"].engines["batch"]  # type: ignore[attr-defined]
    tokenizer = AutoTokenizer.from_pretrained(engine.path)
    banned = tokenizer(first, add_special_tokens=False)["input_ids"][0]
    biased = await chat(url, "batch", "Count to five.", logit_bias={str(banned): -100})
    assert biased["choices"][0]["message"]["content"] != first


async def test_a_token_outside_the_vocabulary_is_refused_naming_logit_bias(
    gateway: tuple[Gateway, str],
) -> None:
    _, url = gateway
    body = {"model": "batch", "messages": [{"role": "user", "content": "Hi"}],
            "logit_bias": {"999999999": 5}}  # fmt: skip
    reply = await client.post(url + "/v1/chat/completions", body)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["param"] == "logit_bias" and "vocabulary" in error["message"]
