"""Every runtime quirk of shared/reference/runtimes.md §17 has a test here, run against the fake
that reproduces it (tests/fakes/openai_runtimes.py, gpt4all.py), with a control showing the fake
really does misbehave when turnout does not step in. Stream-parsing quirks already covered in
test_openai_compat.py (CRLF, comment pings, unknown named events, EOF without a blank line) are
not repeated here except where the fake of a named runtime proves the whole path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from turnout.config import ProviderConfig
from turnout.errors import (
    BackendError,
    BackendRejectedError,
    BackendUnavailableError,
    CapabilityError,
    ModelNotFoundError,
)
from turnout.gateway import Gateway
from turnout.providers import build_provider
from turnout.providers.openai_compat import OpenAICompatProvider
from turnout.providers.openai_quirks import StreamMender, mend_response, pool_token_embeddings
from turnout.providers.presets import ANSWER_TOKENS, PRESETS
from turnout.routing import Catalog, Router
from turnout.wire.types import Call, Chunk

MODEL = "fake-model"
HELLO = [{"role": "user", "content": "Hi there friend"}]


@contextlib.contextmanager
def fake(name: str) -> Iterator[FakeRuntime]:
    with run_fake_runtime(name, (MODEL,)) as server:
        yield server


@contextlib.asynccontextmanager
async def provider(type_: str, url: str, **settings: Any) -> AsyncIterator[OpenAICompatProvider]:
    if type_ == "jan":
        settings.setdefault("api_key", "jan-secret")
    made = build_provider("up", ProviderConfig(type=type_, endpoint=url, **settings))
    assert isinstance(made, OpenAICompatProvider)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


def chat(stream: bool = False, **fields: Any) -> Call:
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, **fields}
    if stream:
        body["stream"] = True
    return Call("chat", body, MODEL, stream)


async def collect(p: OpenAICompatProvider, call: Call) -> list[dict[str, Any]]:
    return [chunk.data async for chunk in p.stream(call)]


async def post(url: str, body: Any, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, **kw) as resp:
        return resp.status, await resp.text()


# --- 1. max_completion_tokens vs max_tokens ------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "field"),
    [(name, preset.token_field) for name, preset in PRESETS.items() if name != "openai-cloud"],
)
def test_the_limit_goes_under_the_name_each_runtime_reads(type_: str, field: str) -> None:
    made = build_provider("up", ProviderConfig(type=type_))
    assert isinstance(made, OpenAICompatProvider)
    for given in ({"max_completion_tokens": 7}, {"max_tokens": 7}):
        body = made.payload(chat(**given))
        assert body[field] == 7
        assert ({"max_tokens", "max_completion_tokens"} - {field}).isdisjoint(body)
    assert PRESETS["vllm"].token_field == "max_completion_tokens"  # max_tokens is deprecated there


async def test_a_runtime_that_reads_only_max_tokens_obeys_max_completion_tokens() -> None:
    with fake("fastchat") as server:
        # control: FastChat ignores max_completion_tokens and answers in full
        status, text = await post(
            server.url + "/v1/chat/completions",
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "a b c d"}],'
            b' "max_completion_tokens": 2}',
        )
        assert status == 200 and '"content": "You said: a b c d"' in text
        async with provider("fastchat", server.url) as p:
            result = await p.complete(chat(max_completion_tokens=2))
    assert result["choices"][0]["message"]["content"] == "You said:"
    assert result["choices"][0]["finish_reason"] == "length"


# --- 2. stream_options only with stream: true, never where rejected -----------------------------


async def test_vllm_gets_no_stream_options_without_stream() -> None:
    with fake("vllm") as server:
        status, text = await post(  # control: vLLM's validation error
            server.url + "/v1/chat/completions",
            b'{"model": "fake-model", "messages": [], "stream_options": {"include_usage": true}}',
        )
        assert status == 400 and "only be defined when `stream=True`" in text
        async with provider("vllm", server.url) as p:
            result = await p.complete(chat(stream_options={"include_usage": True}))
            chunks = await collect(p, chat(stream=True, stream_options={"include_usage": False}))
        sent = server.bodies("/v1/chat/completions")
    assert result["choices"][0]["message"]["content"] == "You said: Hi there friend"
    assert "stream_options" not in sent[1] and "stream" not in sent[1]
    assert sent[2]["stream_options"] == {"include_usage": True}  # turnout always meters usage
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("type_", ["fastchat", "koboldcpp-openai", "llama-cpp-python"])
async def test_stream_options_dropped_where_unsupported(type_: str) -> None:
    name = "fastchat" if type_ == "llama-cpp-python" else type_
    with fake(name) as server:
        async with provider(type_, server.url) as p:
            await collect(p, chat(stream=True, stream_options={"include_usage": True}))
        sent = server.bodies("/v1/chat/completions")[-1]
    assert sent["stream"] is True
    assert "stream_options" not in sent


# --- 3. usage: on a chunk that still has a choice, non-standard, or none at all ---------------


async def test_mistralrs_usage_on_the_finish_chunk_is_split_off() -> None:
    with fake("mistralrs") as server:
        async with provider("mistralrs", server.url) as p:
            chunks = await collect(p, chat(stream=True))
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["usage"] is None
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1


async def test_tabbyapi_usage_chunk_repeating_the_finish_is_deduplicated() -> None:
    with fake("tabbyapi") as server:
        async with provider("tabbyapi", server.url) as p:
            chunks = await collect(p, chat(stream=True))
    finishes = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finishes) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "You said: Hi there friend"  # CRLF framing and pings parsed


async def test_mlx_usage_chunk_becomes_a_chunk_object() -> None:
    with fake("mlx") as server:
        async with provider("mlx", server.url) as p:
            chunks = await collect(p, chat(stream=True))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("type_", ["fastchat", "koboldcpp-openai"])
async def test_usage_is_synthesised_when_the_runtime_sends_none(type_: str) -> None:
    with fake(type_) as server:
        config = {"providers": {"up": {"type": type_, "endpoint": server.url}}, "embedded": False}
        async with Gateway(config) as gw:
            chunks = [
                c async for c in gw.stream(MODEL, HELLO, stream_options={"include_usage": True})
            ]
            quiet = [c async for c in gw.stream(MODEL, HELLO)]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["choices"] for c in quiet)


def test_created_and_id_stay_those_of_the_first_chunk() -> None:
    # llama-server stamps each chunk with the second it is sent in
    mend = StreamMender("chat")
    first = Chunk({"id": "a", "created": 10, "choices": [{"index": 0, "delta": {}}]}, b"1")
    later = Chunk({"id": "a", "created": 11, "choices": [{"index": 0, "delta": {}}]}, b"2")
    assert mend(first) == [first]
    (out,) = mend(later)
    assert out.data["created"] == 10 and out.raw is None


def test_per_token_embeddings_are_mean_pooled() -> None:
    # llama-cpp-python's answer for a model without a pooling type: one vector per token
    result = {
        "data": [{"index": 0, "embedding": [[1.0, 0.0], [0.0, 1.0]]}, {"embedding": [0.6, 0.8]}]
    }
    pooled = pool_token_embeddings(result)["data"]
    assert pooled[0]["embedding"] == pytest.approx([0.70710678, 0.70710678])
    assert pooled[1]["embedding"] == [0.6, 0.8]


def test_stream_mender_leaves_a_right_chunk_alone() -> None:
    chunk = Chunk({"choices": [{"index": 0, "delta": {"content": "x"}}]}, b"raw")
    assert StreamMender("chat")(chunk) == [chunk]


# --- 4. finish_reason "null", 5. no blank line after [DONE] (KoboldCpp's OpenAI emulation) ---


@pytest.mark.timeout(10)
async def test_koboldcpp_openai_stream() -> None:
    with fake("koboldcpp-openai") as server:
        async with provider("koboldcpp-openai", server.url) as p:
            chunks = await collect(p, chat(stream=True))
        status, raw = await post(
            server.url + "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "stream": true}',
        )
    assert status == 200
    assert raw.endswith("data: [DONE]") and '"finish_reason": "null"' in raw.replace(":", ": ")
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]


# --- 6. required Content-Length ------------------------------------------------------------------


async def test_mlx_needs_content_length_which_turnout_sends() -> None:
    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "a"}]}'

    with fake("mlx") as server:
        # control: a chunked body (no Content-Length) is refused with 411
        status, text = await post(server.url + "/v1/chat/completions", chunked())
        assert (status, text) == (411, '{"error":"Content-Length header is required"}')
        async with provider("mlx", server.url) as p:
            result = await p.complete(chat())
            chunks = await collect(p, chat(stream=True))
        headers = [r.headers for r in server.requests if r.method == "POST"]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]
    assert all("Transfer-Encoding" not in h and int(h["Content-Length"]) > 0 for h in headers[1:])


# --- 7. error bodies of every shape --------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "status", "message", "cls"),
    [
        ("jan", 503, "No models are available", BackendUnavailableError),  # plain text
        ("jan", 404, "No running session found for model 'x'", ModelNotFoundError),
        ("mlx", 400, "Invalid value for temperature", BackendRejectedError),  # {"error": "str"}
        ("mistralrs", 500, "Model failed to load", BackendError),  # {"message": ...}
        ("tabbyapi", 400, "Context length exceeded", BackendRejectedError),  # {"error": {...}}
        ("koboldcpp-openai", 503, "Server is busy", BackendUnavailableError),  # {"detail": ...}
        ("vllm", 400, "temperature must be non-negative", BackendRejectedError),  # integer code
    ],
)
async def test_error_bodies_are_read(type_: str, status: int, message: str, cls: type) -> None:
    with fake(type_) as server:
        server.fail(status, message)
        async with provider(type_, server.url) as p:
            with pytest.raises(cls) as info:
                await p.complete(chat())
    assert type(info.value) is cls
    assert message in info.value.message
    assert info.value.backend == "up"


async def test_jan_without_its_key_is_a_credentials_error() -> None:
    with fake("jan") as server:
        async with provider("jan", server.url, api_key="wrong") as p:
            with pytest.raises(BackendError) as info:
                await p.complete(chat())
    assert info.value.code == "backend_auth_failed"
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("status", "message", "cls", "retryable"),
    [
        (404, "Only fake-model allowed now, your model x", ModelNotFoundError, False),
        (500, "NETWORK ERROR DUE TO HIGH TRAFFIC.", BackendError, True),
        (400, "Invalid value for top_p", BackendRejectedError, False),
        (429, "Rate limit exceeded", BackendError, True),
    ],
)
async def test_fastchat_always_400_is_read_by_its_code(
    status: int, message: str, cls: type, retryable: bool
) -> None:
    with fake("fastchat") as server:
        server.fail(status, message)
        status_seen, _ = await post(
            server.url + "/v1/chat/completions", b'{"model": "fake-model", "messages": []}'
        )
        assert status_seen == 400  # control: whatever went wrong
        async with provider("fastchat", server.url) as p:
            with pytest.raises(cls) as info:
                await p.complete(chat())
    assert isinstance(info.value, cls)
    assert info.value.retryable is retryable
    assert message in info.value.message


@pytest.mark.parametrize("type_", ["fastchat", "localai", "vllm"])
async def test_mid_stream_errors(type_: str) -> None:
    with fake(type_) as server:
        server.fail_midstream(after=1, message="CUDA out of memory")
        async with provider(type_, server.url) as p:
            got: list[dict[str, Any]] = []
            with pytest.raises(BackendError, match="failed mid-stream: CUDA out of memory"):
                async for chunk in p.stream(chat(stream=True)):
                    got.append(chunk.data)
    assert len(got) == 1


async def test_mistralrs_named_events_are_skipped() -> None:
    with fake("mistralrs") as server:
        async with provider("mistralrs", server.url) as p:
            chunks = await collect(p, chat(stream=True))
    assert all("step" not in c for c in chunks)


# --- 8. tiny default token limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "kind", "expected"),
    [
        ("llama-cpp-python", "completion", ANSWER_TOKENS),
        ("llama-cpp-python", "chat", None),  # chat's default runs to the end of the context
        ("mlx", "chat", ANSWER_TOKENS),
        ("koboldcpp-openai", "chat", ANSWER_TOKENS),
        ("koboldcpp-openai", "completion", ANSWER_TOKENS),
        ("vllm", "chat", None),
    ],
)
def test_small_defaults_are_replaced(type_: str, kind: str, expected: int | None) -> None:
    made = build_provider("up", ProviderConfig(type=type_))
    assert isinstance(made, OpenAICompatProvider)
    field = made.preset.token_field
    body = {"messages": HELLO} if kind == "chat" else {"prompt": "p"}
    assert made.payload(Call(kind, body, MODEL)).get(field) == expected
    assert made.payload(Call(kind, {**body, "max_tokens": 3}, MODEL))[field] == 3
    configured = build_provider("up", ProviderConfig(type=type_, default_max_tokens=64))
    assert isinstance(configured, OpenAICompatProvider)
    assert configured.payload(Call(kind, body, MODEL))[field] == 64


async def test_mlx_answer_is_not_cut_at_its_default_512() -> None:
    with fake("mlx") as server:
        server.reply = " ".join(["w"] * 600)
        async with provider("mlx", server.url) as p:
            result = await p.complete(chat())
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] == 600


# --- 9. tool arguments as objects, and KoboldCpp's tool quirks -----------------------------------


def test_tool_arguments_objects_become_strings() -> None:
    result = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}],
                },
                "finish_reason": "stop",
            }
        ]
    }
    mended = mend_response(result)
    assert mended["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert mended["choices"][0]["finish_reason"] == "tool_calls"
    chunk = Chunk(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": {}}}]}}]},
        b"raw",
    )
    (out,) = StreamMender("chat")(chunk)
    assert out.raw is None
    assert out.data["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == "{}"


async def test_koboldcpp_tools_need_tool_choice_and_finish_as_tool_calls() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with fake("koboldcpp-openai") as server:
        status, text = await post(  # control: without tool_choice KoboldCpp ignores the tools
            server.url + "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "tools": '
            b'[{"type": "function", "function": {"name": "lookup"}}]}',
        )
        assert status == 200 and "tool_calls" not in text
        async with provider("koboldcpp-openai", server.url) as p:
            result = await p.complete(chat(tools=tools))
        sent = server.bodies("/v1/chat/completions")[-1]
    assert sent["tool_choice"] == "auto"
    choice = result["choices"][0]
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert choice["finish_reason"] == "tool_calls"


async def test_koboldcpp_fixed_usage_is_recounted() -> None:
    with fake("koboldcpp-openai") as server:
        async with provider("koboldcpp-openai", server.url) as p:
            result = await p.complete(chat())
    # the fake's KoboldCpp says 100/100/200 whatever happened; its token counter counts words
    assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


# --- capability defaults of presets --------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "lacking"),
    [
        ("mlx", {"embeddings"}),
        ("fastchat", {"tools", "json_schema"}),
        ("koboldcpp-openai", {"embeddings", "json_schema"}),
        ("llama-cpp-python", set()),  # tools held to a schema by turnout
        ("vllm", set()),
    ],
)
def test_presets_declare_what_they_lack(type_: str, lacking: set[str]) -> None:
    made = build_provider("up", ProviderConfig(type=type_))
    everything = frozenset(
        {"chat", "completion", "embeddings", "streaming", "tools", "json_schema"}
    )
    assert set(made.capabilities(MODEL).lacks(everything)) == lacking


def test_configuration_still_wins_over_a_preset() -> None:
    config = {"type": "fastchat", "models": [{"name": "m", "supports_tools": True}]}
    made = build_provider("up", ProviderConfig.model_validate(config))
    assert made.capabilities("m").tools is True
    assert made.capabilities("other").tools is False


async def test_a_lacking_capability_is_refused_naming_the_part() -> None:
    made = build_provider("up", ProviderConfig(type="vllm"))
    assert isinstance(made, OpenAICompatProvider)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    messages = [HELLO[0], {"role": "user", "content": [image]}]
    router = Router(Catalog({"up": made}, {}))  # the router decides; the backend is never asked
    with pytest.raises(CapabilityError) as info:
        await router.complete("chat", {"model": f"up/{MODEL}", "messages": messages})
    assert info.value.param == "messages[1].content[0]"
    assert info.value.message == (
        "Backend 'up' cannot serve this request: it lacks vision "
        "(declare it in the configuration if the model can)."
    )
    assert info.value.fallback is True  # another backend of the same model may take it
    declared = ProviderConfig(type="vllm", models=[{"name": MODEL, "supports_vision": True}])
    vision = build_provider("up", declared)
    assert isinstance(vision, OpenAICompatProvider)
    assert vision.payload(Call("chat", {"messages": messages}, MODEL))["messages"] == messages


async def test_a_request_goes_to_the_backend_that_can_serve_it() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with fake("fastchat") as no_tools, fake("vllm") as with_tools:
        config = {
            "providers": {
                "first": {"type": "fastchat", "endpoint": no_tools.url},
                "second": {"type": "vllm", "endpoint": with_tools.url},
            },
            "embedded": False,
        }
        async with Gateway(config, environ={}) as gw:
            reply = await gw.chat(MODEL, HELLO, tools=tools)
            plain = await gw.chat(MODEL, HELLO)
        assert no_tools.bodies("/v1/chat/completions") == [
            {"model": MODEL, "messages": HELLO}  # only the request it can serve
        ]
    assert reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert plain["choices"][0]["message"]["content"] == "You said: Hi there friend"
