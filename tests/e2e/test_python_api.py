"""turnout as a library: `Gateway` built from a YAML file, a dict or a `Config`, used with
``async with`` and no HTTP server, answering in OpenAI's shapes and raising turnout's errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.support.checks import (
    check_chat,
    check_chat_stream,
    check_completion,
    check_usage,
)
from tests.support.openapi import assert_valid
from tests.support.servers import free_port
from turnout import Config, Gateway, GatewayError, load_config
from turnout.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MODEL = "gemma-3-270m"
HI = [{"role": "user", "content": "Tell me a story."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens
SETTINGS = {
    "server": {"sse_keepalive_seconds": 5},
    "providers": {
        "local": {
            "type": "embedded",
            "models": [{"name": MODEL, "chat_format": "gemma", "n_ctx": 1024}],
        }
    },
    "aliases": {"tiny": f"local/{MODEL}"},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[Gateway]:
    async with Gateway(SETTINGS, environ={}) as gateway:
        yield gateway


def _source(kind: str, tmp_path: Path) -> Any:
    if kind == "dict":
        return SETTINGS
    if kind == "config":
        return load_config(SETTINGS, environ={})
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    return str(path) if kind == "str" else path


@pytest.mark.parametrize("kind", ["dict", "config", "path", "str"])
async def test_built_from_any_kind_of_config(kind: str, tmp_path: Path) -> None:
    source = _source(kind, tmp_path)
    if kind == "config":
        assert isinstance(source, Config)
    async with Gateway(source, environ={}) as gateway:
        assert gateway.config.server.sse_keepalive_seconds == 5
        ids = [m["id"] for m in await gateway.models()]
        reply = await gateway.chat("tiny", HI, max_tokens=3, logit_bias=NO_EOS)
    assert ids == [f"local/{MODEL}", "tiny"]
    check_chat(reply, max_tokens=3)


async def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    async with Gateway(environ={"TURNOUT_CONFIG": str(path)}) as gateway:
        assert "tiny" in [m["id"] for m in await gateway.models()]


async def test_nothing_configured_serves_the_default_model() -> None:
    async with Gateway({}, environ={}) as gateway:
        assert [m["id"] for m in await gateway.models()] == [f"embedded/{MODEL}"]
        reply = await gateway.chat(MODEL, HI, max_tokens=3, logit_bias=NO_EOS)
    check_chat(reply, max_tokens=3)


async def test_models(gw: Gateway) -> None:
    models = await gw.models()
    assert [m["id"] for m in models] == [f"local/{MODEL}", "tiny"]
    for model in models:
        assert model["object"] == "model" and isinstance(model["created"], int)


@pytest.mark.parametrize("model", [MODEL, f"local/{MODEL}", "tiny"])
async def test_chat(gw: Gateway, model: str) -> None:
    reply = await gw.chat(model, HI, max_tokens=5, logit_bias=NO_EOS, temperature=0)
    assert check_chat(reply, max_tokens=5)["finish_reason"] == "length"


async def test_stream_with_usage(gw: Gateway) -> None:
    chunks = [
        chunk
        async for chunk in gw.stream(
            MODEL,
            HI,
            max_tokens=6,
            logit_bias=NO_EOS,
            stream_options={"include_usage": True},
        )
    ]
    usage = check_chat_stream(chunks, max_tokens=6, include_usage=True)
    assert usage is not None and usage["completion_tokens"] == 6


async def test_stream_without_usage(gw: Gateway) -> None:
    chunks = [chunk async for chunk in gw.stream(MODEL, HI, max_tokens=4, logit_bias=NO_EOS)]
    check_chat_stream(chunks, max_tokens=4, include_usage=False)


async def test_completion(gw: Gateway) -> None:
    reply = await gw.completion(MODEL, "Once upon a time", max_tokens=4, logit_bias=NO_EOS)
    check_completion(reply, max_tokens=4)


async def test_embed(gw: Gateway) -> None:
    result = await gw.embed(MODEL, ["one", "two", "three"])
    assert_valid(result, "CreateEmbeddingResponse")
    assert [d["index"] for d in result["data"]] == [0, 1, 2]
    assert len({len(d["embedding"]) for d in result["data"]}) == 1
    assert result["usage"]["prompt_tokens"] > 0


async def test_errors_are_gateway_errors(gw: Gateway) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        await gw.chat("no-such-model", HI, max_tokens=2)
    with pytest.raises(InvalidRequestError) as invalid:
        await gw.chat(MODEL, HI, max_tokens=2, temperature=9)
    with pytest.raises(InvalidRequestError) as empty:
        await gw.chat(MODEL, [], max_tokens=2)
    with pytest.raises(ModelNotFoundError):
        [c async for c in gw.stream("local/no-such-model", HI, max_tokens=2)]
    with pytest.raises(InvalidRequestError) as bad_input:
        await gw.embed(MODEL, [])
    assert (missing.value.status, missing.value.param) == (404, "model")
    assert (invalid.value.status, invalid.value.param) == (400, "temperature")
    assert empty.value.param == "messages"
    assert bad_input.value.param == "input"
    for err in (missing, invalid, empty, bad_input):
        assert isinstance(err.value, GatewayError)
        assert_valid(err.value.to_openai(), "ErrorResponse")


# In front of the real llama-cpp-python server, still without turnout's HTTP server.


async def test_in_front_of_llama_cpp_python(llama_server: str) -> None:
    config = {
        "providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}},
        "embedded": False,  # only the server: no embedded default beside it
    }
    async with Gateway(config, environ={}) as gateway:
        assert [m["id"] for m in await gateway.models()] == [f"llama/{MODEL}"]
        reply = await gateway.chat(MODEL, HI, max_tokens=4, logit_bias=NO_EOS)
        chunks = [
            c
            async for c in gateway.stream(
                f"llama/{MODEL}",
                HI,
                max_tokens=4,
                logit_bias=NO_EOS,
                stream_options={"include_usage": True},
            )
        ]
        with pytest.raises(ModelNotFoundError):
            await gateway.chat("llama/unknown-model", HI, max_tokens=2)
    check_chat(reply, max_tokens=4)
    usage = check_chat_stream(chunks, max_tokens=4, include_usage=True)
    check_usage(usage)


async def test_backend_down() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = {"providers": {"gone": {"type": "openai", "endpoint": closed, "models": ["m"]}}}
    async with Gateway(config, environ={}) as gateway:
        with pytest.raises(BackendUnavailableError) as down:
            await gateway.chat("m", HI, max_tokens=2)
    assert down.value.status == 502 and down.value.backend == "gone"


async def test_used_without_async_with_it_starts_itself() -> None:
    """Forgetting ``async with`` must not leave a request waiting for an engine never loaded."""
    gateway = Gateway(SETTINGS, environ={})
    try:
        first, second = await asyncio.wait_for(
            asyncio.gather(
                gateway.chat(MODEL, HI, max_tokens=2, logit_bias=NO_EOS),
                gateway.completion(MODEL, "Hello", max_tokens=2, logit_bias=NO_EOS),
            ),
            timeout=60,
        )
        check_chat(first, max_tokens=2)
        check_completion(second, max_tokens=2)
        provider: Any = gateway.providers["local"]
        assert provider.engines[MODEL].pool.qsize() == 1  # started once, not once per request
    finally:
        await gateway.close()
