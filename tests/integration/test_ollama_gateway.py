"""The Ollama dialect end to end: the official OpenAI SDK talks to turnout over real HTTP, and
turnout talks to the fake Ollama server (tests/fakes/ollama.py), which answers in Ollama's
documented wire format and records what it received."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.ollama import FakeOllama, embedding_of, run_fake_ollama
from tests.support.servers import free_port, run_gateway
from turnout import Gateway
from turnout.config import ProviderConfig
from turnout.providers.ollama import OllamaProvider
from turnout.wire.types import Call

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    },
}
ASK = [{"role": "user", "content": "why is the sky blue?"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with run_fake_ollama() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeOllama) -> Iterator[str]:
    # No retries: a failure the fake is told to produce must reach the client as it is.
    config = {"providers": {"ollama": {"type": "ollama", "endpoint": fake.url, "max_retries": 0}}}
    with run_gateway(config) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh(fake: FakeOllama) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0, timeout=30) as c:
        yield c


def counters(fake: FakeOllama) -> tuple[int, int]:
    """prompt_eval_count and eval_count of the last object the fake sent."""
    last = fake.sent[-1][-1]
    return last["prompt_eval_count"], last["eval_count"]


def test_chat(client: openai.OpenAI, fake: FakeOllama) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="ollama/llama3.2", messages=ASK, max_tokens=50, temperature=0.2
    )
    reply = raw.parse()
    assert raw.headers["x-turnout-backend"] == "ollama"
    assert reply.choices[0].message.content == "You said: why is the sky blue?"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == counters(fake)
    assert reply.usage.completion_tokens == 7  # a word a token
    (sent,) = fake.bodies("/api/chat")
    assert sent == {
        "model": "llama3.2:latest",
        "stream": False,
        "options": {"temperature": 0.2, "num_predict": 50},
        "messages": ASK,
    }


@pytest.mark.parametrize(
    "model", ["ollama/llama3.2", "llama3.2", "llama3.2:latest", "ollama/llama3.2:latest"]
)
def test_addressing_and_the_implicit_latest_tag(
    client: openai.OpenAI, fake: FakeOllama, model: str
) -> None:
    reply = client.chat.completions.create(model=model, messages=ASK)
    assert reply.choices[0].message.content == "You said: why is the sky blue?"
    assert [body["model"] for body in fake.bodies("/api/chat")] == ["llama3.2:latest"]


def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    client: openai.OpenAI, fake: FakeOllama
) -> None:
    reply = client.chat.completions.create(model="llama3.2", messages=ASK, max_tokens=2)
    assert reply.choices[0].message.content == "You said:"
    assert reply.choices[0].finish_reason == "length"
    assert fake.sent[-1][-1]["done_reason"] == "length"


def test_stream_with_usage(client: openai.OpenAI, fake: FakeOllama) -> None:
    chunks = list(
        client.chat.completions.create(
            model="ollama/llama3.2",
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert fake.bodies("/api/chat")[0]["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: why is the sky blue?"
    assert len({c.id for c in chunks}) == 1
    *content, finish, usage = chunks
    assert all(c.choices[0].finish_reason is None for c in content)
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == counters(fake)
    assert usage.usage.total_tokens == sum(counters(fake)) > 0


def test_stream_without_usage_sends_no_usage_chunk(client: openai.OpenAI, fake: FakeOllama) -> None:
    chunks = list(client.chat.completions.create(model="llama3.2", messages=ASK, stream=True))
    assert chunks, "the stream must carry the reply"
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "eval_count" in fake.sent[-1][-1], "the fake did send its counters"


def test_tool_call_and_its_result(client: openai.OpenAI, fake: FakeOllama) -> None:
    ask = [{"role": "user", "content": "What is the weather today in Paris?"}]
    reply = client.chat.completions.create(model="llama3.2", messages=ask, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    ollama_call = fake.sent[-1][0]["message"]["tool_calls"][0]
    assert call.id == ollama_call["id"]
    assert call.function.name == "get_current_weather"
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == fake.tool_arguments
    assert fake.bodies("/api/chat")[0]["tools"] == [WEATHER]

    history: list[Any] = [
        *ask,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees, sunny"},
    ]
    answer = client.chat.completions.create(model="llama3.2", messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == "The tool said: 22 degrees, sunny"
    assert answer.choices[0].finish_reason == "stop"
    sent = fake.bodies("/api/chat")[1]["messages"]
    assert sent[1]["tool_calls"] == [
        {
            "function": {"name": "get_current_weather", "arguments": fake.tool_arguments},
            "id": call.id,
        }
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "22 degrees, sunny",
        "tool_name": "get_current_weather",
        "tool_call_id": call.id,
    }


def test_streamed_tool_call(client: openai.OpenAI, fake: FakeOllama) -> None:
    ask = [{"role": "user", "content": "What is the weather today in Paris?"}]
    stream = client.chat.completions.create(
        model="llama3.2", messages=ask, tools=[WEATHER], stream=True
    )
    deltas = [d for c in stream for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) == 1, "Ollama sends a call whole; turnout passes it in one delta"
    (delta,) = deltas
    assert (delta.index, delta.type) == (0, "function")
    assert delta.id == fake.sent[-1][0]["message"]["tool_calls"][0]["id"]
    assert delta.function is not None and delta.function.name == "get_current_weather"
    assert json.loads(delta.function.arguments or "") == fake.tool_arguments


def test_stream_finish_reason_after_a_tool_call(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather today in Paris?"}]
    chunks = list(
        client.chat.completions.create(model="llama3.2", messages=ask, tools=[WEATHER], stream=True)
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_image_goes_to_ollama_as_bare_base64(client: openai.OpenAI, fake: FakeOllama) -> None:
    content: Any = [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    reply = client.chat.completions.create(
        model="ollama/llava:7b", messages=[{"role": "user", "content": content}]
    )
    assert reply.choices[0].message.content == "You said: what is in this image?"
    (sent,) = fake.bodies("/api/chat")
    assert sent["messages"] == [
        {"role": "user", "content": "what is in this image?", "images": [PNG]}
    ]


def test_image_url_is_refused_before_reaching_ollama(
    client: openai.OpenAI, fake: FakeOllama
) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="ollama/llava:7b", messages=[{"role": "user", "content": content}]
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert "base64" in error["message"]
    assert fake.bodies("/api/chat") == []


def test_tools_refused_before_reaching_a_model_ollama_says_lacks_them(
    client: openai.OpenAI, fake: FakeOllama
) -> None:
    """/api/show lists llava's capabilities without "tools": turnout refuses, naming the field,
    and Ollama never sees the request."""
    sent = len(fake.bodies("/api/chat"))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ollama/llava:7b", messages=ASK, tools=[WEATHER])
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert (info.value.body["param"], info.value.body["code"]) == (
        "tools",
        "unsupported_capability",
    )
    assert "lacks tools" in info.value.message
    assert len(fake.bodies("/api/chat")) == sent


def test_ollama_400_is_a_400(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.fail(400, 'invalid option provided: "mirostat_x"')
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ollama/llama3.2", messages=ASK)
    assert info.value.status_code == 400
    assert 'invalid option provided: "mirostat_x"' in info.value.message


def _vector(embedding: Any) -> list[float]:
    if isinstance(embedding, str):  # what the SDK returns when asked for base64 explicitly
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return list(embedding)


# The SDK asks for base64 unless told otherwise, and decodes it itself.
@pytest.mark.parametrize(
    "encoding", [None, "float", "base64"], ids=["sdk default", "float", "base64"]
)
def test_embeddings(client: openai.OpenAI, fake: FakeOllama, encoding: Any) -> None:
    texts = ["Why is the sky blue?", "Why is the grass green?"]
    extra = {"encoding_format": encoding} if encoding else {}
    result = client.embeddings.create(model="ollama/all-minilm", input=texts, **extra)
    # The fake's vectors are exact in float32, so base64 (float32) loses nothing.
    assert [_vector(item.embedding) for item in result.data] == [
        embedding_of(t, 384) for t in texts
    ]
    assert [item.index for item in result.data] == [0, 1]
    assert result.usage.prompt_tokens == fake.sent[-1][0]["prompt_eval_count"] == 10
    (sent,) = fake.bodies("/api/embed")
    assert sent == {"model": "all-minilm:latest", "input": texts}


def test_embedding_dimensions(client: openai.OpenAI, fake: FakeOllama) -> None:
    result = client.embeddings.create(model="all-minilm", input="sky", dimensions=8)
    assert len(result.data[0].embedding) == 8
    assert fake.bodies("/api/embed")[0]["dimensions"] == 8


def test_text_completion(client: openai.OpenAI, fake: FakeOllama) -> None:
    result = client.completions.create(
        model="ollama/llama3.2", prompt="Why is the sky blue?", max_tokens=3, suffix="!"
    )
    assert result.object == "text_completion"
    assert result.choices[0].text == "You said: Why"
    assert result.choices[0].finish_reason == "length"
    assert fake.bodies("/api/generate") == [
        {
            "model": "llama3.2:latest",
            "stream": False,
            "options": {"num_predict": 3},
            "prompt": "Why is the sky blue?",
            "suffix": "!",
        }
    ]


def test_streamed_text_completion_with_usage(client: openai.OpenAI, fake: FakeOllama) -> None:
    chunks = list(
        client.completions.create(
            model="llama3.2",
            prompt="Why is the sky blue?",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].text for c in chunks if c.choices) == "You said: Why is the sky blue?"
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == counters(fake)


def test_models_are_listed_as_provider_slash_name(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"ollama/llama3.2:latest", "ollama/llava:7b", "ollama/all-minilm:latest"}
    # modified_at "2024-09-25T14:12:43.212335093-07:00", as unix seconds
    assert models["ollama/llama3.2:latest"].created == 1727298763
    assert {m.owned_by for m in models.values()} == {"ollama"}


def test_unknown_model(client: openai.OpenAI, fake: FakeOllama) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="ollama/mistral", messages=ASK)
    assert info.value.code == "model_not_found"
    assert fake.bodies("/api/chat") == []


def test_ollama_404_for_a_model_gone_since_listing(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.fail(404, 'model "llama3.2:latest" not found, try pulling it first')
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="llama3.2", messages=ASK)
    assert info.value.code == "model_not_found"
    assert 'model "llama3.2:latest" not found, try pulling it first' in info.value.message


def test_ollama_500_is_a_502_naming_the_backend(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.fail(500, "the model failed to generate a response")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="llama3.2", messages=ASK)
    assert info.value.status_code == 502
    body = info.value.body
    assert body == {
        "message": "backend 'ollama' failed (HTTP 500): the model failed to generate a response",
        "type": "backend_error",
        "param": None,
        "code": "backend_error",
    }
    assert "Traceback" not in info.value.response.text


def test_ollama_queue_full_keeps_retry_after(client: openai.OpenAI, fake: FakeOllama) -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"
    fake.fail(503, busy, {"Retry-After": "3"})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="llama3.2", messages=ASK)
    assert info.value.status_code == 502
    assert info.value.code == "backend_unavailable"
    assert info.value.response.headers["retry-after"] == "3"


def test_midstream_error_surfaces_as_an_api_error(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.fail_midstream(after=2)
    received: list[str] = []
    stream = client.chat.completions.create(model="llama3.2", messages=ASK, stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["You", " said:"]
    assert info.value.message == (
        "backend 'ollama' failed mid-stream: an error was encountered while running the model"
    )
    assert fake.sent[-1][-1] == {"error": "an error was encountered while running the model"}


def test_stream_cut_short_surfaces_as_an_api_error(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.cut_stream(after=3)
    stream = client.chat.completions.create(model="llama3.2", messages=ASK, stream=True)
    with pytest.raises(openai.APIError, match="closed the stream before it was done"):
        for _ in stream:
            pass


def test_ollama_base_url_from_the_environment(fake: FakeOllama) -> None:
    with (
        run_gateway({}, environ={"OLLAMA_BASE_URL": fake.url + "/api"}) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        ids = {m.id for m in client.models.list()}
        reply = client.chat.completions.create(model="ollama/llama3.2", messages=ASK)
    assert "ollama/llama3.2:latest" in ids
    assert reply.choices[0].message.content == "You said: why is the sky blue?"


async def test_async_client_chat_and_stream(gateway: str, fake: FakeOllama) -> None:
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.create(model="llama3.2", messages=ASK)
        stream = await client.chat.completions.create(
            model="llama3.2", messages=ASK, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert reply.choices[0].message.content == "You said: why is the sky blue?"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: why is the sky blue?"
    )
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == counters(fake)


async def test_show_ps_version_and_probe(fake: FakeOllama) -> None:
    provider = OllamaProvider("ollama", ProviderConfig(type="ollama", endpoint=fake.url))
    await provider.start()
    try:
        assert await provider.version() == "0.12.6"
        assert (await provider.probe()).ok
        shown = await provider.show("llama3.2")
        assert shown["capabilities"] == ["completion", "tools"]
        assert shown["details"]["parameter_size"] == "3.2B"
        assert shown["model_info"]["llama.context_length"] == 131072
        assert fake.bodies("/api/show") == [{"model": "llama3.2"}]
        fake.loaded.clear()
        assert await provider.ps() == []
        await provider.complete(Call("chat", {"model": "x", "messages": ASK}, "llama3.2:latest"))
        (running,) = await provider.ps()
        assert running["name"] == "llama3.2:latest"
        assert set(running) >= {"model", "size", "digest", "details", "expires_at", "size_vram"}
    finally:
        await provider.close()


async def test_probe_of_a_closed_port_is_not_ok() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = OllamaProvider("ollama", ProviderConfig(type="ollama", endpoint=endpoint))
    await provider.start()
    try:
        health = await provider.probe()
    finally:
        await provider.close()
    assert not health.ok
    assert "unreachable" in health.detail


# The fake itself: it must refuse what Ollama refuses, or the tests above would prove nothing.


def _post(fake: FakeOllama, path: str, body: Any) -> tuple[int, str, bytes]:
    request = urllib.request.Request(fake.url + path, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_the_fake_streams_ndjson_unless_told_otherwise(fake: FakeOllama) -> None:
    status, kind, body = _post(fake, "/api/chat", {"model": "llama3.2", "messages": ASK})
    lines = [json.loads(line) for line in body.splitlines()]
    assert (status, kind) == (200, "application/x-ndjson")
    assert [line["done"] for line in lines] == [False] * 7 + [True]
    assert lines[-1]["done_reason"] == "stop"
    assert lines[-1]["total_duration"] == lines[-1]["load_duration"] + sum(
        lines[-1][k] for k in ("prompt_eval_duration", "eval_duration")
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {"role": "user", "content": "hi", "images": [f"data:image/png;base64,{PNG}"]},
            "illegal base64 data at input byte 4",
        ),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
            "json: cannot unmarshal string into Go struct field "
            "ToolCallFunction.messages.tool_calls.function.arguments of type "
            "api.ToolCallFunctionArguments",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            "json: cannot unmarshal array into Go struct field Message.messages.content of type "
            "string",
        ),
        ({"role": "developer", "content": "hi"}, "invalid role 'developer'"),
    ],
    ids=["data: prefix", "string arguments", "content parts", "developer role"],
)
def test_the_fake_refuses_what_ollama_refuses(
    fake: FakeOllama, message: dict[str, Any], error: str
) -> None:
    body = {"model": "llava:7b", "messages": [message], "stream": False}
    assert _post(fake, "/api/chat", body) == (
        400,
        "application/json; charset=utf-8",
        json.dumps({"error": error}).encode(),
    )


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {"model": "mistral", "messages": ASK},
            404,
            'model "mistral" not found, try pulling it first',
        ),
        (
            {"model": "llama3.2", "messages": ASK, "options": {"max_tokens": 5}},
            400,
            'invalid option provided: "max_tokens"',
        ),
        (
            {"model": "llama3.2", "messages": ASK, "options": {"num_predict": "5"}},
            400,
            'option "num_predict" must be of type integer',
        ),
        ({"model": "all-minilm", "messages": ASK}, 400, '"all-minilm" does not support chat'),
    ],
    ids=["unknown model", "unknown option", "option type", "capability"],
)
def test_the_fake_answers_errors_as_ollama_does(
    fake: FakeOllama, body: dict[str, Any], status: int, error: str
) -> None:
    assert _post(fake, "/api/chat", body)[::2] == (status, json.dumps({"error": error}).encode())


def test_the_fake_says_it_is_running(fake: FakeOllama) -> None:
    with urllib.request.urlopen(urllib.request.Request(fake.url + "/", method="HEAD")) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(fake.url + "/") as reply:
        assert reply.read() == b"Ollama is running"


async def test_capabilities_come_from_api_show_off_the_request_path(fake: FakeOllama) -> None:
    """The model-list refresh asks /api/show for each model; requests then use what it said."""
    gateway = Gateway(
        {"providers": {"ollama": {"type": "ollama", "endpoint": fake.url}}, "embedded": False},
        environ={},
    )
    async with gateway:
        provider = gateway.providers["ollama"]
        assert fake.bodies("/api/show"), "the refresh asked /api/show"
        llava, llama = provider.capabilities("llava:7b"), provider.capabilities("llama3.2:latest")
        assert (llava.vision, llava.tools) == (True, False)
        assert (llama.vision, llama.tools) == (False, True)
        shows = len(fake.bodies("/api/show"))
        await gateway.chat("ollama/llama3.2", ASK, max_tokens=4)
        assert len(fake.bodies("/api/show")) == shows, "no /api/show on the request path"
        assert provider.capabilities("never-listed") == provider.default_capabilities
