"""The dialect contract: one test class every registered runtime (tests/contract/runtimes.py)
passes through turnout: real servers for the OpenAI dialect (llama-cpp-python's server and
llama.cpp's ``llama-server``), the embedded engine in-process, and documented-format fakes for
the rest (every other OpenAI-dialect runtime, GPT4All, Kobold, Ollama, Anthropic, Gemini).
A case per capability: where the runtime lacks it (as declared), the case asserts the clear
refusal (400, the field named) instead of being skipped.

Everything goes through the `Gateway` (catalog, router, provider) and is checked against OpenAI's
schemas by tests/support/checks.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.contract.runtimes import REGISTRY, Runtime
from tests.support.checks import (
    check_chat,
    check_chat_stream,
    check_completion,
    check_completion_stream,
    check_error,
)
from turnout.errors import CapabilityError, GatewayError, ModelNotFoundError
from turnout.gateway import Gateway

MAX_TOKENS = 8
HI = [{"role": "user", "content": "Say hello to the sea."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
WORD = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 8}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}

RUNTIMES = [entry.param() for entry in REGISTRY.values()]


@contextlib.asynccontextmanager
async def gateway(runtime: Runtime) -> AsyncIterator[Gateway]:
    if runtime.gateway is not None:  # kept up across the cases
        yield runtime.gateway
        return
    async with Gateway(runtime.config(), environ={}) as gw:
        yield gw


def refused(error: GatewayError, param: str) -> None:
    assert isinstance(error, CapabilityError), error
    if error.param and error.param.startswith(param):  # a more precise param: messages[0]...
        param = error.param
    check_error(
        error.to_openai(), type="invalid_request_error", code="unsupported_capability", param=param
    )
    assert error.status == 400


@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
@pytest.mark.asyncio(loop_scope="module")  # one loop: the embedded engine's gateway is shared
class TestDialectContract:
    async def test_declared_capabilities(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            assert gw.providers["up"].capabilities(runtime.model) == runtime.caps

    async def test_models_list(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            ids = [m["id"] for m in await gw.models()]
        assert runtime.address in ids

    async def test_probe(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            health = await gw.providers["up"].probe()
        assert health.ok, health.detail
        assert health.latency_ms is not None and health.latency_ms >= 0

    async def test_chat(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            body = await gw.chat(runtime.address, HI, max_tokens=MAX_TOKENS)
        choice = check_chat(body, max_tokens=MAX_TOKENS)
        assert choice["message"]["content"].strip()

    @pytest.mark.parametrize("include_usage", [True, False])
    async def test_chat_stream(self, runtime: Runtime, include_usage: bool) -> None:
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        async with gateway(runtime) as gw:
            events = [
                e async for e in gw.stream(runtime.address, HI, max_tokens=MAX_TOKENS, **options)
            ]
        usage = check_chat_stream(events, max_tokens=MAX_TOKENS, include_usage=include_usage)
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
        )
        assert text.strip()
        assert (usage is not None) is include_usage

    async def test_completion(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            if not runtime.caps.completion:
                with pytest.raises(GatewayError) as info:
                    await gw.completion(runtime.address, "Once upon a time", max_tokens=8)
                refused(info.value, "prompt")
                return
            body = await gw.completion(runtime.address, "Once upon a time", max_tokens=MAX_TOKENS)
        check_completion(body, max_tokens=MAX_TOKENS)

    async def test_completion_stream(self, runtime: Runtime) -> None:
        body = {
            "model": runtime.address,
            "prompt": "Once upon a time",
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with gateway(runtime) as gw:
            if not runtime.caps.completion:
                with pytest.raises(GatewayError) as info:
                    await gw.open_stream("completion", body)
                refused(info.value, "prompt")
                return
            reply = await gw.open_stream("completion", body)
            events = [chunk.data async for chunk in reply.chunks]
        check_completion_stream(events, max_tokens=MAX_TOKENS, include_usage=True)

    async def test_embeddings(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            if not runtime.caps.embeddings:
                with pytest.raises(GatewayError) as info:
                    await gw.embed(runtime.embed_address, "the sea")
                refused(info.value, "model")
                return
            body = await gw.embed(runtime.embed_address, ["the sea", "the land"])
        assert [item["index"] for item in body["data"]] == [0, 1]
        vectors = [item["embedding"] for item in body["data"]]
        assert all(isinstance(v, float) for vector in vectors for v in vector)
        assert len(vectors[0]) == len(vectors[1]) > 0
        assert vectors[0] != vectors[1]

    async def test_tools(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            if not runtime.caps.tools:
                with pytest.raises(GatewayError) as info:
                    await gw.chat(runtime.address, HI, tools=TOOLS, max_tokens=MAX_TOKENS)
                refused(info.value, "tools")
                return
            # a real base model may answer "auto" in words: "required" must call
            choice_ = "required" if runtime.real else "auto"
            body = await gw.chat(runtime.address, HI, tools=TOOLS, tool_choice=choice_)
        choice = body["choices"][0]
        assert len(choice["message"]["tool_calls"]) == 1
        assert choice["message"]["tool_calls"][0]["id"]
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "lookup"
        assert isinstance(orjson.loads(call["function"]["arguments"]), dict)  # a JSON string
        assert choice["finish_reason"] == "tool_calls"

    async def test_tools_streamed(self, runtime: Runtime) -> None:
        choice_ = "required" if runtime.real else "auto"
        async with gateway(runtime) as gw:
            if not runtime.caps.tools:
                with pytest.raises(GatewayError) as info:
                    [e async for e in gw.stream(runtime.address, HI, tools=TOOLS)]
                refused(info.value, "tools")
                return
            events = [
                e async for e in gw.stream(runtime.address, HI, tools=TOOLS, tool_choice=choice_)
            ]
        parts = [
            p for e in events for c in e["choices"] for p in c["delta"].get("tool_calls") or ()
        ]
        # id, type and name once per call, in its first delta; then arguments alone
        firsts = [p for p in parts if "id" in p]
        assert firsts and all(p["type"] == "function" and p["function"]["name"] for p in firsts)
        assert len({p["id"] for p in firsts}) == len(firsts) == len({p["index"] for p in parts})
        assert all("name" not in p["function"] for p in parts if "id" not in p)
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert finishes == ["tool_calls"]

    async def test_vision(self, runtime: Runtime) -> None:
        messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
        async with gateway(runtime) as gw:
            if not runtime.caps.vision:
                with pytest.raises(GatewayError) as info:
                    await gw.chat(runtime.address, messages, max_tokens=MAX_TOKENS)
                refused(info.value, "messages")
                return
            body = await gw.chat(runtime.address, messages, max_tokens=MAX_TOKENS)
        check_chat(body, max_tokens=MAX_TOKENS)

    async def test_json_schema(self, runtime: Runtime) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "word", "schema": WORD}}
        async with gateway(runtime) as gw:
            if not runtime.caps.json_schema:
                with pytest.raises(GatewayError) as info:
                    await gw.chat(runtime.address, HI, response_format=fmt, max_tokens=32)
                refused(info.value, "response_format")
                return
            body = await gw.chat(runtime.address, HI, response_format=fmt, max_tokens=32)
        check_chat(body, max_tokens=32)

    async def test_backend_error(self, runtime: Runtime) -> None:
        failure = runtime.failure
        failure.arm()
        async with gateway(runtime) as gw:
            with pytest.raises(GatewayError) as info:
                await gw.chat(runtime.address, failure.messages or HI, max_tokens=MAX_TOKENS)
        error = check_error(
            info.value.to_openai(), type=failure.type, code=failure.code, param=failure.param
        )
        assert failure.text in error["message"], error
        assert "'up'" in error["message"]  # the backend is named
        assert info.value.backend == "up"

    async def test_unknown_model(self, runtime: Runtime) -> None:
        async with gateway(runtime) as gw:
            with pytest.raises(ModelNotFoundError) as info:
                await gw.chat("up/no-such-model", HI, max_tokens=MAX_TOKENS)
        check_error(
            info.value.to_openai(), type="not_found_error", code="model_not_found", param="model"
        )


def test_every_preset_and_dialect_is_in_the_suite() -> None:
    """A preset or dialect added to turnout without a registered runtime fails here."""
    from turnout.providers.presets import DIALECTS, PRESETS

    covered = {name for entry in REGISTRY.values() for name in entry.covers}
    # cloud presets (openai-cloud) are tested in tests/integration/test_cloud_gateway.py
    local = {name for name, preset in PRESETS.items() if preset.endpoint is None}
    assert local <= covered, f"presets outside the contract: {local - covered}"
    # the OpenAI dialect is what every OpenAI-dialect preset runs on
    dialects = covered | {PRESETS[name].dialect for name in covered & set(PRESETS)}
    assert set(DIALECTS) <= dialects, f"dialects outside the contract: {set(DIALECTS) - dialects}"
