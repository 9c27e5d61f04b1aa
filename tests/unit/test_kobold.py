"""The Kobold dialect: chats rendered by named templates, requests in Kobold's fields, the native
SSE stream (``event: message``, string ``"null"``, no ``[DONE]``), usage from the token counter,
and the original KoboldAI's fallbacks, against the documented-format fake
(tests/fakes/kobold.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.fakes.kobold import FakeKobold, run_fake_kobold
from turnout.config import ProviderConfig
from turnout.errors import BackendError, BackendUnavailableError, CapabilityError, ConfigError
from turnout.gateway import Gateway
from turnout.providers import build_provider
from turnout.providers.chat_templates import TEMPLATES
from turnout.providers.kobold import KOBOLD_MAX_LENGTH, KoboldProvider, to_kobold
from turnout.wire.types import Call, Capabilities

MODEL = "koboldcpp/Llama-3.2-1B-Instruct"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a river."},
]


def make(**settings: Any) -> KoboldProvider:
    provider = build_provider("kcpp", ProviderConfig(type="kobold", **settings))
    assert isinstance(provider, KoboldProvider)
    return provider


@pytest.fixture
def fake() -> Iterator[FakeKobold]:
    with run_fake_kobold() as server:
        yield server


@contextlib.asynccontextmanager
async def started(provider: KoboldProvider) -> AsyncIterator[KoboldProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def chat(stream: bool = False, **fields: Any) -> Call:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        **fields,
    }
    if stream:
        body["stream"] = True
    return Call("chat", body, MODEL, stream)


# --- templates -----------------------------------------------------------------------------------

RENDERED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a river.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama-3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nName a river.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello."
    "<end_of_turn>\n<start_of_turn>user\nName a river.<end_of_turn>\n<start_of_turn>model\n",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.\n\n"
    "### Instruction:\nName a river.\n\n### Response:\n",
    "mistral": "[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Name a river. [/INST]",
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_templates_render_a_chat(name: str) -> None:
    messages = [(m["role"], m["content"]) for m in CHAT]
    assert TEMPLATES[name].render(messages) == RENDERED[name]


def test_alpaca_without_a_system_message_gets_its_preamble() -> None:
    prompt = TEMPLATES["alpaca"].render([("user", "Hi")])
    assert prompt.startswith("Below is an instruction that describes a task.")
    assert prompt.endswith("### Instruction:\nHi\n\n### Response:\n")


def test_the_template_is_chosen_per_model_default_chatml() -> None:
    provider = make(models=[{"name": "a", "chat_format": "llama-3"}, {"name": "b"}])
    assert provider.template("a") is TEMPLATES["llama-3"]
    assert provider.template("b") is TEMPLATES["chatml"]
    assert provider.template("unlisted") is TEMPLATES["chatml"]
    assert (
        make(models=[{"name": "m", "chat_format": "mistral-instruct"}]).template("m")
        is (TEMPLATES["mistral"])
    )


def test_an_unknown_template_fails_at_start_up_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        make(models=[{"name": "a"}, {"name": "b", "chat_format": "vicuna"}])
    message = str(info.value)
    assert "providers.kcpp.models.1.chat_format: unknown template 'vicuna'" in message
    assert "allowed: alpaca, chatml, gemma, llama-3, mistral, mistral-instruct" in message


def test_gateway_start_up_reports_the_template_error() -> None:
    with pytest.raises(ConfigError, match="chat_format"):
        Gateway(
            {
                "providers": {
                    "k": {"type": "koboldai", "models": [{"name": "m", "chat_format": "x"}]}
                }
            }
        )


# --- request translation -------------------------------------------------------------------------


def test_chat_becomes_a_kobold_generate_body() -> None:
    body = {
        "messages": CHAT,
        "max_completion_tokens": 32,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 11,
        "stop": "###",
        "user": "dropped",
        "presence_penalty": 0.2,
    }
    payload, stops = to_kobold("chat", body, TEMPLATES["chatml"], KOBOLD_MAX_LENGTH)
    assert payload == {
        "prompt": RENDERED["chatml"],
        "max_length": 32,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "rep_pen": 1.1,
        "sampler_seed": 11,
        "stop_sequence": ["###", "<|im_end|>", "<|im_start|>"],
        "trim_stop": True,
    }
    assert stops == ["###", "<|im_end|>", "<|im_start|>"]


def test_a_limit_is_always_sent_because_koboldcpp_stops_at_180() -> None:
    payload, _ = to_kobold("completion", {"prompt": ["Once"]}, TEMPLATES["chatml"], 512)
    assert payload == {"prompt": "Once", "max_length": 512}


def test_images_go_as_bare_base64() -> None:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    payload, _ = to_kobold(
        "chat", {"messages": [{"role": "user", "content": content}]}, TEMPLATES["chatml"], 9
    )
    assert payload["images"] == ["iVBORw0KGgo="]
    assert "What is it?" in payload["prompt"]
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(CapabilityError) as info:
        to_kobold(
            "chat", {"messages": [{"role": "user", "content": remote}]}, TEMPLATES["chatml"], 9
        )
    assert info.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "4"}]}, "messages[0].role"),
    ],
)
def test_what_kobold_cannot_do_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **fields}
    with pytest.raises(CapabilityError) as info:
        to_kobold("chat", body, TEMPLATES["chatml"], 9)
    assert info.value.param == param


def test_capabilities_are_declared() -> None:
    assert make().capabilities(MODEL) == Capabilities(
        embeddings=False, tools=False, vision=False, json_schema=False
    )
    assert make(models=[{"name": MODEL, "supports_vision": True}]).capabilities(MODEL).vision


def test_endpoints_and_names() -> None:
    assert make().base_url == "http://127.0.0.1:5001"
    assert make(endpoint="http://h:5001/api/v1").base_url == "http://h:5001"
    assert make().matches("Llama-3.2-1B-Instruct", MODEL)
    assert not make().matches("Llama", MODEL)


# --- against the fake ----------------------------------------------------------------------------


async def test_chat_is_answered_and_cut_at_the_template_stop(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        result = await provider.complete(Call("chat", {"messages": CHAT}, MODEL))
    sent = fake.bodies("/api/v1/generate")[-1]
    assert sent["prompt"] == RENDERED["chatml"]
    assert result["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hello there, traveller.", "refusal": None},
        }
    ]
    # usage from KoboldCpp's token counter (the fake counts words) of the rendered prompt
    assert result["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert result["object"] == "chat.completion"
    assert result["model"] == MODEL


async def test_length_finish(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        result = await provider.complete(chat(max_tokens=2))
    assert result["choices"][0]["message"]["content"] == "Hello there,"
    assert result["choices"][0]["finish_reason"] == "length"


async def test_native_stream(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        call = chat(stream=True, stream_options={"include_usage": True})
        chunks = [c.data async for c in provider.stream(call)]
    assert fake.bodies("/api/extra/generate/stream")
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas == [
        {"role": "assistant", "content": "Hello"},
        {"content": " there,"},
        {"content": " traveller."},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert len({c["id"] for c in chunks}) == 1


async def test_native_stream_without_usage_asked(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        chunks = [c.data async for c in provider.stream(chat(stream=True))]
    assert all(c["choices"] for c in chunks)
    assert fake.bodies("/api/extra/tokencount") == []  # nothing counted for nobody


async def test_a_stream_cut_before_its_finish_is_an_error(fake: FakeKobold) -> None:
    fake.cut_stream = True
    async with started(make(endpoint=fake.url)) as provider:
        got: list[str] = []
        with pytest.raises(BackendUnavailableError, match="closed the stream before it was done"):
            async for chunk in provider.stream(chat(stream=True)):
                got.append(chunk.data["choices"][0]["delta"]["content"])
    assert got == ["Hello", " there,", " traveller."]


async def test_completion_stream(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        call = Call("completion", {"prompt": "Once", "stream": True}, MODEL, True)
        chunks = [c.data async for c in provider.stream(call)]
    assert "".join(c["choices"][0]["text"] for c in chunks) == fake.reply
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "text_completion" for c in chunks)


async def test_busy_is_retryable_unavailability(fake: FakeKobold) -> None:
    fake.busy = True
    async with started(make(endpoint=fake.url)) as provider:
        with pytest.raises(BackendUnavailableError) as info:
            await provider.complete(chat())
    assert "Server is busy; please try again later." in info.value.message
    assert info.value.retryable is True


async def test_password(fake: FakeKobold) -> None:
    fake.password = "s3cret"
    async with started(make(endpoint=fake.url)) as provider:
        with pytest.raises(BackendError) as info:
            await provider.complete(chat())
    assert info.value.code == "backend_auth_failed"
    async with started(make(endpoint=fake.url, api_key="s3cret")) as provider:
        result = await provider.complete(chat())
        models = await provider.list_models()
    assert result["choices"][0]["message"]["content"] == "Hello there, traveller."
    assert [m.id for m in models] == [MODEL]


async def test_models_and_probe(fake: FakeKobold) -> None:
    async with started(make(endpoint=fake.url)) as provider:
        models = await provider.list_models()
        health = await provider.probe()
    assert [(m.id, m.owned_by) for m in models] == [(MODEL, "kcpp")]
    assert health.ok is True
    assert [r.path for r in fake.requests][-1] == "/api/extra/version"


async def test_original_koboldai_stream_and_usage_are_emulated() -> None:
    with run_fake_kobold(original=True) as fake:
        async with started(make(endpoint=fake.url)) as provider:
            health = await provider.probe()
            call = chat(stream=True, stream_options={"include_usage": True})
            chunks = [c.data async for c in provider.stream(call)]
            again = [c.data async for c in provider.stream(chat(stream=True))]
            await provider.complete(chat())
        paths = [r.path for r in fake.requests]
    assert health.ok is True
    assert "/api/v1/info/version" in paths
    assert chunks[0]["choices"][0]["delta"]["content"] == "Hello there, traveller."
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    prompt_chars = len(fake.bodies("/api/v1/generate")[0]["prompt"])
    assert chunks[2]["usage"]["prompt_tokens"] == (prompt_chars + 3) // 4  # estimated
    assert len(again) == 2  # no usage chunk unasked
    # the stream route is asked once and the counter for the first reply only (its two counts
    # go at once), then both are remembered as missing
    assert paths.count("/api/extra/generate/stream") == 1
    assert paths.count("/api/extra/tokencount") == 2
    assert paths.count("/api/v1/generate") == 3
