"""Passthrough for the Ollama dialect: the official ``ollama`` client, unchanged, against turnout
in front of an Ollama backend (the fake that follows Ollama's documented wire format, as Ollama
cannot run here) gets the backend's own objects, byte for byte; its request reaches the backend
as it came, only ``model`` rewritten (and ``keep_alive`` kept within the configured range);
usage is counted from the final object's ``prompt_eval_count`` and ``eval_count``. The same
backend with ``passthrough: false``, and an OpenAI-compatible runtime (which does not speak
Ollama's API), are translated as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import orjson
import pytest

from tests.fakes.ollama import FakeOllama, run_fake_ollama
from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support.dialects import check_ollama, check_ollama_lines
from tests.support.servers import run_gateway

ASK = [{"role": "user", "content": "one two three four"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOllama, FakeRuntime]]:
    with run_fake_ollama() as fake_ollama, run_fake_runtime("vllm") as fake_vllm:
        yield fake_ollama, fake_vllm


@pytest.fixture(scope="module")
def url(fakes: tuple[FakeOllama, FakeRuntime]) -> Iterator[str]:
    fake_ollama, fake_vllm = fakes
    config = {
        "providers": {
            "ollama": {"type": "ollama", "endpoint": fake_ollama.url, "max_retries": 0},
            "quiet": {"type": "ollama", "endpoint": fake_ollama.url, "max_retries": 0,
                      "passthrough": False},
            "vllm": {"type": "vllm", "endpoint": fake_vllm.url, "max_retries": 0},
        },
        "health": {"enabled": False},
    }  # fmt: skip
    with run_gateway(config) as base:
        yield base


@pytest.fixture(autouse=True)
def _reset(fakes: tuple[FakeOllama, FakeRuntime]) -> Iterator[None]:
    for fake in fakes:
        fake.reset()
    yield


def _lines(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(obj) + b"\n" for obj in sent)


def _tokens(url: str, backend: str) -> tuple[int, int]:
    stats = httpx.get(url + "/stats", timeout=10).json()["backends"].get(backend) or {}
    return stats.get("tokens_in", 0), stats.get("tokens_out", 0)


def test_chat_is_relayed(url: str, fakes: Any) -> None:
    fake = fakes[0]
    before = _tokens(url, "ollama")
    client = ollama.Client(host=url, timeout=30)
    reply = client.chat(
        model="ollama/llama3.2", messages=ASK, options={"num_predict": 3, "seed": 7}, think=False
    )
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 3
    answered = fake.sent[-1][0]
    assert reply.created_at == answered["created_at"]  # the backend's own, not turnout's clock
    assert reply.total_duration == answered["total_duration"]
    # the request as it came: model rewritten, nothing translated
    received = fake.bodies("/api/chat")[-1]
    assert received["model"] == "llama3.2:latest" and received["stream"] is False
    assert received["options"] == {"num_predict": 3, "seed": 7} and received["think"] is False
    assert received["messages"] == ASK
    raw = httpx.post(url + "/api/chat", json={"model": "ollama/llama3.2", "messages": ASK,
                                              "stream": False}, timeout=30)  # fmt: skip
    assert raw.headers["x-turnout-passthrough"] == "1"
    assert raw.json() == fake.sent[-1][0]  # the fake's own object, as it sent it
    check_ollama(raw.json(), "ChatDone")
    prompt, out = reply.prompt_eval_count or 0, reply.eval_count or 0
    last = raw.json()
    after = _tokens(url, "ollama")
    assert after == (
        before[0] + prompt + last["prompt_eval_count"],
        before[1] + out + last["eval_count"],
    )


def test_streams_are_relayed_byte_for_byte(url: str, fakes: Any) -> None:
    fake = fakes[0]
    body = {"model": "ollama/llama3.2", "messages": ASK, "options": {"num_predict": 3}}
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=30) as reply:
        assert reply.headers["x-turnout-passthrough"] == "1"
        assert reply.headers["content-type"] == "application/x-ndjson"
        data = reply.read()
    assert data == _lines(fake.sent[-1])  # Ollama streams unless told otherwise
    last = check_ollama_lines([json.loads(x) for x in data.splitlines()], "chat")
    assert last["eval_count"] == 3
    client = ollama.Client(host=url, timeout=30)
    parts = list(client.generate(model="ollama/llama3.2", prompt="x y z", stream=True))
    assert parts[-1].done and "x y z" in "".join(p.response or "" for p in parts)
    assert parts[-1].total_duration == fake.sent[-1][-1]["total_duration"]
    assert fake.bodies("/api/generate")[-1]["prompt"] == "x y z"


def test_keep_alive_and_redirecting_fields_are_still_screened(url: str, fakes: Any) -> None:
    fake = fakes[0]
    client = ollama.Client(host=url, timeout=30)
    client.chat(model="ollama/llama3.2", messages=ASK, keep_alive=0)  # would unload it
    assert fake.bodies("/api/chat")[-1]["keep_alive"] == 60  # security.request_keep_alive_min
    body = {"model": "ollama/llama3.2", "messages": ASK, "base_url": "http://10.0.0.1"}
    reply = httpx.post(url + "/api/chat", json=body, timeout=30)
    assert reply.status_code == 400 and "base_url" in reply.json()["error"]
    assert len(fake.bodies("/api/chat")) == 1  # never sent


def test_backend_errors_in_ollamas_shape(url: str, fakes: Any) -> None:
    fake = fakes[0]
    fake.fail(500, f"runner at {fake.url} crashed")
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=url, timeout=30).chat(model="ollama/llama3.2", messages=ASK)
    assert caught.value.status_code >= 500
    assert "ollama" in caught.value.error and fake.url.split("//")[1] not in caught.value.error


@pytest.mark.parametrize("model", ["quiet/llama3.2", "vllm/fake-model"])
def test_translated_where_passthrough_does_not_apply(url: str, fakes: Any, model: str) -> None:
    """``passthrough: false`` on an Ollama backend, and a backend that does not speak Ollama's
    API: translated, as before."""
    body = {"model": model, "messages": ASK, "stream": False, "options": {"num_predict": 3}}
    reply = httpx.post(url + "/api/chat", json=body, timeout=30)
    assert reply.status_code == 200 and "x-turnout-passthrough" not in reply.headers
    obj = reply.json()
    check_ollama(obj, "ChatDone")
    assert obj["model"] == model  # as turnout names it
    client = ollama.Client(host=url, timeout=30)
    parts = list(client.chat(model=model, messages=ASK, stream=True, options={"num_predict": 2}))
    assert parts[-1].done and parts[-1].eval_count == 2
