"""Acceptance: a KoboldCpp fake and a GPT4All fake, built from their documented wire formats, serve
chat and streaming through turnout over HTTP to the official ``openai`` SDK (GPT4All cannot stream:
turnout emulates the stream; KoboldCpp streams in its own SSE dialect, translated)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.fakes.gpt4all import FakeGPT4All, run_fake_gpt4all
from tests.fakes.kobold import FakeKobold, run_fake_kobold
from tests.support.servers import run_gateway

KOBOLD = "kcpp/koboldcpp/Llama-3.2-1B-Instruct"
GPT4ALL = "g4a/Llama 3.2 3B Instruct"
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@dataclass
class Setup:
    client: openai.OpenAI
    kobold: FakeKobold
    gpt4all: FakeGPT4All


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with run_fake_kobold() as kobold, run_fake_gpt4all() as gpt4all:
        config = {
            "providers": {
                "kcpp": {
                    "type": "koboldai",
                    "endpoint": kobold.url,
                    "models": [
                        {"name": "koboldcpp/Llama-3.2-1B-Instruct", "chat_format": "llama-3"}
                    ],
                },
                "g4a": {"type": "gpt4all", "endpoint": gpt4all.url},
            }
        }
        with run_gateway(config) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            yield Setup(client, kobold, gpt4all)


def test_models(setup: Setup) -> None:
    ids = [m.id for m in setup.client.models.list()]
    assert KOBOLD in ids
    assert GPT4ALL in ids


def test_kobold_chat(setup: Setup) -> None:
    setup.kobold.reply = "Hello there, traveller.<|eot_id|><|start_header_id|>user"
    reply = setup.client.chat.completions.create(model=KOBOLD, messages=HI, max_tokens=16)
    assert reply.choices[0].message.content == "Hello there, traveller."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    prompt = setup.kobold.bodies("/api/v1/generate")[-1]["prompt"]
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")  # llama-3 template


def test_kobold_stream(setup: Setup) -> None:
    setup.kobold.reply = "Hello there, traveller.<|eot_id|>"
    stream = setup.client.chat.completions.create(
        model=KOBOLD,
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, traveller."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert setup.kobold.bodies("/api/extra/generate/stream")


def test_gpt4all_chat(setup: Setup) -> None:
    reply = setup.client.chat.completions.create(
        model=GPT4ALL,
        messages=HI,
        max_completion_tokens=16,
        seed=1,
        presence_penalty=0.0,
        stop=["\n\n"],
    )
    assert reply.choices[0].message.content == "You said: Hi there"
    sent = setup.gpt4all.bodies("/v1/chat/completions")[-1]
    assert sent == {
        "model": "Llama 3.2 3B Instruct",
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
    }


def test_gpt4all_stream(setup: Setup) -> None:
    stream = setup.client.chat.completions.create(
        model=GPT4ALL,
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: Hi there"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert "stream" not in setup.gpt4all.bodies("/v1/chat/completions")[-1]


def test_gpt4all_refusal_is_an_openai_error(setup: Setup) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as info:
        setup.client.chat.completions.create(model=GPT4ALL, messages=HI, tools=tools)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "unsupported_capability"
    assert body["param"] == "tools"
