"""The GPT4All dialect: requests rebuilt to pass GPT4All's strict validation, refusals named,
``stop`` applied to the reply, a stream emulated from the whole reply, against the documented-format
fake (tests/fakes/gpt4all.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.gpt4all import FakeGPT4All, run_fake_gpt4all
from turnout.config import ProviderConfig
from turnout.errors import BackendRejectedError, BackendUnavailableError, CapabilityError
from turnout.providers import build_provider
from turnout.providers.gpt4all import GPT4AllProvider, to_gpt4all
from turnout.providers.presets import ANSWER_TOKENS
from turnout.wire.types import Call, Capabilities

MODEL = "Llama 3.2 3B Instruct"
#: what an OpenAI client commonly sends, nearly all of which GPT4All refuses
EVERYTHING = {
    "model": "alias",
    "messages": [
        {"role": "developer", "content": "Be brief.", "name": "ops"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        },
    ],
    "max_completion_tokens": 40,
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 7,
    "stop": ["\n\n"],
    "frequency_penalty": 0.0,
    "presence_penalty": 0.5,
    "logit_bias": {"50256": -100},
    "user": "u-1",
    "top_k": 40,
    "stream_options": {"include_usage": True},
    "parallel_tool_calls": False,
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "none",
}


def make(**settings: Any) -> GPT4AllProvider:
    provider = build_provider("g4a", ProviderConfig(type="gpt4all", **settings))
    assert isinstance(provider, GPT4AllProvider)
    return provider


@pytest.fixture
def fake() -> Iterator[FakeGPT4All]:
    with run_fake_gpt4all() as server:
        yield server


@contextlib.asynccontextmanager
async def started(provider: GPT4AllProvider) -> AsyncIterator[GPT4AllProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def chat(stream: bool = False, **fields: Any) -> Call:
    body = {"model": "alias", "messages": [{"role": "user", "content": "Hi there"}], **fields}
    if stream:
        body["stream"] = True
    return Call("chat", body, MODEL, stream)


# --- translation ------------------------------------------------------------------------------


def test_only_what_gpt4all_accepts_is_sent() -> None:
    assert to_gpt4all("chat", EVERYTHING, MODEL, 99) == {
        "model": MODEL,
        "max_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
    }


def test_a_limit_is_always_sent_because_gpt4all_stops_at_16() -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert to_gpt4all("chat", body, MODEL, ANSWER_TOKENS)["max_tokens"] == ANSWER_TOKENS
    assert to_gpt4all("chat", {**body, "max_tokens": 5}, MODEL, 99)["max_tokens"] == 5


def test_completion_translation() -> None:
    body = {"prompt": ["Once"], "echo": True, "max_tokens": 3, "suffix": ""}
    assert to_gpt4all("completion", body, MODEL, 99) == {
        "model": MODEL,
        "max_tokens": 3,
        "prompt": "Once",
        "echo": True,
    }
    with pytest.raises(CapabilityError) as info:
        to_gpt4all("completion", {"prompt": ["a", "b"]}, MODEL, 99)
    assert info.value.param == "prompt"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AA=="},
                            },
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "4"}]}, "messages[0].role"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **fields}
    with pytest.raises(CapabilityError) as info:
        to_gpt4all("chat", body, MODEL, 99)
    assert info.value.param == param
    assert info.value.status == 400
    assert info.value.message.startswith("GPT4All's API server cannot")


def test_capabilities_are_declared() -> None:
    caps = make().capabilities(MODEL)
    assert caps == Capabilities(embeddings=False, tools=False, vision=False, json_schema=False)
    assert caps.lacks(frozenset({"chat", "streaming"})) == []  # streaming is emulated


def test_default_port() -> None:
    assert make().base_url == "http://127.0.0.1:4891"
    assert make(endpoint="http://h:4891/v1").base_url == "http://h:4891"


# --- against the fake ----------------------------------------------------------------------------


async def test_the_strict_fake_rejects_what_turnout_strips(fake: FakeGPT4All) -> None:
    # The control: sent as is, a common OpenAI request fails GPT4All's validation...
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.url}/v1/chat/completions", json={**EVERYTHING, "model": MODEL}
        ) as resp,
    ):
        assert resp.status == 400
        # 0.0 is a double, which server.cpp refuses for a penalty (only the integer 0 passes)
        assert (await resp.json())["error"]["message"] == "'frequency_penalty' is not supported"
    # ...and through turnout it is answered.
    async with started(make(endpoint=fake.url)) as provider:
        result = await provider.complete(Call("chat", EVERYTHING, MODEL))
    assert result["choices"][0]["message"]["content"] == "You said: Hi there"
    assert result["id"].startswith("chatcmpl-") and result["id"] != "placeholder"
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_without_a_limit_the_answer_is_not_cut_at_16_tokens(fake: FakeGPT4All) -> None:
    fake.reply = " ".join(f"w{i}" for i in range(30))
    async with started(make(endpoint=fake.url)) as provider:
        result = await provider.complete(chat())
    assert len(result["choices"][0]["message"]["content"].split()) == 30
    assert result["choices"][0]["finish_reason"] == "stop"
    assert fake.bodies("/v1/chat/completions")[-1]["max_tokens"] == ANSWER_TOKENS
    async with started(make(endpoint=fake.url, default_max_tokens=5)) as provider:
        result = await provider.complete(chat())
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5


async def test_stop_is_applied_by_turnout(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        result = await provider.complete(chat(stop="there"))
        completion = await provider.complete(
            Call("completion", {"prompt": "ab cd", "stop": ["cd"]}, MODEL)
        )
    assert result["choices"][0]["message"]["content"] == "You said: Hi "
    assert result["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["text"] == "You said: ab "
    assert all("stop" not in body for body in fake.bodies("/v1/chat/completions"))


async def test_stream_is_emulated_from_the_whole_reply(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        chunks = [c.data async for c in provider.stream(chat(stream=True))]
    assert fake.bodies("/v1/chat/completions")[-1].get("stream") is None
    assert [c["choices"] for c in chunks] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "You said: Hi there"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_completion_stream_is_emulated(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        call = Call("completion", {"prompt": "Once", "stream": True}, MODEL, True)
        chunks = [c.data async for c in provider.stream(call)]
    assert [c["object"] for c in chunks] == ["text_completion"] * 3
    assert chunks[0]["choices"][0]["text"] == "You said: Once"
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


async def test_no_chat_to_serve_is_unavailable_not_bad_credentials(fake: FakeGPT4All) -> None:
    fake.available = False
    async with started(make(endpoint=fake.url)) as provider:
        with pytest.raises(BackendUnavailableError) as info:
            await provider.complete(chat())
        health = await provider.probe()
    assert "Enable Local API Server" in info.value.message
    assert info.value.retryable is True
    assert health.ok is False


async def test_a_rejection_names_gpt4all_message(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        with pytest.raises(BackendRejectedError) as info:
            await provider.complete(chat(temperature=3))
    assert "3 is greater than the maximum of 2 - 'temperature'" in info.value.message


async def test_embeddings_are_refused(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        with pytest.raises(CapabilityError, match="embeddings"):
            await provider.complete(Call("embedding", {"input": "x"}, MODEL))
    assert fake.requests == []


async def test_models_and_probe(fake: FakeGPT4All) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        models = await provider.list_models()
        health = await provider.probe()
    assert [(m.id, m.owned_by) for m in models] == [
        (MODEL, "humanity"),
        ("Reasoner v1", "humanity"),
    ]
    assert health.ok is True and health.latency_ms is not None
