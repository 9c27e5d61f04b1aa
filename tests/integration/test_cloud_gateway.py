"""The cloud dialects end to end: the official OpenAI SDK talks to turnout over real HTTP, and
turnout talks to fakes of OpenAI, Anthropic and Gemini (tests/fakes/), which answer in each
vendor's documented wire format, validate what they receive as the vendor would, and record it.
The official ``anthropic`` SDK checks that the Anthropic fake speaks what Anthropic's clients
parse; the ``openai`` SDK does the same for the OpenAI fake."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic, run_fake_anthropic
from tests.fakes.cloud import embedding_of
from tests.fakes.gemini import FakeGemini, run_fake_gemini
from tests.fakes.openai_cloud import FakeOpenAI, run_fake_openai
from tests.support.openapi import assert_valid
from tests.support.servers import run_gateway

CLAUDE = "claude/claude-haiku-4-5-20251001"
GEMINI = "gem/gemini-2.0-flash"
OPENAI = "oai/gpt-4o-mini"
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "why is the sky blue?"}]


class Fakes:
    def __init__(self, claude: FakeAnthropic, gem: FakeGemini, oai: FakeOpenAI) -> None:
        self.by_backend: dict[str, Any] = {"claude": claude, "gem": gem, "oai": oai}
        self.claude, self.gem, self.oai = claude, gem, oai

    def of(self, model: str) -> Any:
        return self.by_backend[model.partition("/")[0]]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with run_fake_anthropic() as claude, run_fake_gemini() as gem, run_fake_openai() as oai:
        yield Fakes(claude, gem, oai)


def gateway_config(fakes: Fakes) -> dict[str, Any]:
    # No retries: a failure a fake is told to produce must reach the client as it is; "retrying"
    # is the same Anthropic fake with one retry, for the test of a retried 429.
    def entry(kind: str, fake: Any, retries: int = 0) -> dict[str, Any]:
        key = fake.api_key
        return {"type": kind, "endpoint": fake.url, "api_key": key, "max_retries": retries}

    providers = {
        "claude": entry("anthropic", fakes.claude),
        "gem": entry("gemini", fakes.gem),
        "oai": entry("openai-cloud", fakes.oai),
        "retrying": entry("anthropic", fakes.claude, 1),
    }
    return {"providers": providers}


@pytest.fixture(scope="module")
def gateway(fakes: Fakes) -> Iterator[str]:
    with run_gateway(gateway_config(fakes)) as url:
        yield url


@pytest.fixture
def fresh(fakes: Fakes) -> Iterator[openai.OpenAI]:
    """A client of a gateway of its own, for tests that make backends fail: the router remembers
    a backend's failures (its breaker, a Retry-After to wait out), which must not leak into
    other tests."""
    with (
        run_gateway(gateway_config(fakes)) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30) as c,
    ):
        yield c


@pytest.fixture(autouse=True)
def _fresh(fakes: Fakes) -> Iterator[None]:
    for fake in fakes.by_backend.values():
        fake.reset()
    yield
    for fake in fakes.by_backend.values():
        fake.reset()


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0, timeout=30) as c:
        yield c


def chat_bodies(fakes: Fakes, model: str) -> list[Any]:
    fake = fakes.of(model)
    return [r.body for r in fake.requests if r.method == "POST" and "embed" not in r.path]


def sent_usage(fakes: Fakes, model: str) -> tuple[int, int]:
    """(prompt, completion) tokens as the fake reported them in its last reply."""
    last = fakes.of(model).sent[-1]
    if model is CLAUDE:
        if last[0]["type"] == "message":
            return last[0]["usage"]["input_tokens"], last[0]["usage"]["output_tokens"]
        start = last[0]["message"]["usage"]  # a stream: message_start, ..., message_delta
        delta = next(e for e in last if e["type"] == "message_delta")["usage"]
        return start["input_tokens"], delta["output_tokens"]
    if model is GEMINI:
        meta = last[-1]["usageMetadata"]
        return meta["promptTokenCount"], meta["candidatesTokenCount"]
    usage = last[-1]["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


ALL = pytest.mark.parametrize("model", [CLAUDE, GEMINI, OPENAI])


@ALL
def test_chat(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, *ASK], temperature=0.2
    )
    assert raw.headers["x-turnout-backend"] == model.partition("/")[0]
    assert_valid(json.loads(raw.content), "CreateChatCompletionResponse")
    reply = raw.parse()
    assert reply.choices[0].message.content == "You said: why is the sky blue?"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == sent_usage(fakes, model)
    (sent,) = chat_bodies(fakes, model)
    if model is CLAUDE:  # system hoisted, max_tokens filled in
        assert sent == {
            "model": "claude-haiku-4-5-20251001",
            "max_tokens": 4096,
            "system": "Be brief.",
            "messages": ASK,
            "temperature": 0.2,
        }
    elif model is GEMINI:
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert sent["contents"] == [{"role": "user", "parts": [{"text": ASK[0]["content"]}]}]
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_output_limit_cuts_with_finish_reason_length(client: openai.OpenAI, fakes: Fakes) -> None:
    for model in (CLAUDE, GEMINI, OPENAI):
        reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=2)
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (
            "You said:",
            "length",
        ), model
    assert chat_bodies(fakes, CLAUDE)[0]["max_tokens"] == 2
    assert chat_bodies(fakes, GEMINI)[0]["generationConfig"] == {"maxOutputTokens": 2}
    # OpenAI's reasoning models refuse max_tokens: the fake would answer 400 had it been sent
    reply = client.chat.completions.create(model="oai/o3-mini", messages=ASK, max_tokens=3)
    assert reply.choices[0].message.content == "You said: why"
    assert chat_bodies(fakes, OPENAI)[-1]["max_completion_tokens"] == 3


@ALL
def test_stream_with_usage(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: why is the sky blue?"
    assert len({c.id for c in chunks}) == 1
    *content, finish, usage = chunks
    assert all(c.choices[0].finish_reason is None for c in content)
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == sent_usage(fakes, model)


@ALL
def test_stream_on_the_wire_is_openai_sse(gateway: str, model: str) -> None:
    body = {
        "model": model,
        "messages": ASK,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        gateway + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in resp.read().decode().split("\n") if line]
    assert frames[-1] == "data: [DONE]"
    for frame in frames[:-1]:
        assert frame.startswith("data: ")
        assert_valid(json.loads(frame[6:]), "CreateChatCompletionStreamResponse")


@ALL
def test_stream_without_usage_sends_no_usage_chunk(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=ASK, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)


@ALL
def test_tool_call_and_its_result(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments == (
        fakes.claude.tool_input if model is CLAUDE else fakes.of(model).tool_arguments
    )
    history: list[Any] = [
        *ask,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees, sunny"},
    ]
    answer = client.chat.completions.create(model=model, messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == "The tool said: 22 degrees, sunny"
    assert answer.choices[0].finish_reason == "stop"
    sent = chat_bodies(fakes, model)[1]
    if model is CLAUDE:
        assert sent["messages"][1]["content"][-1] == {
            "type": "tool_use",
            "id": call.id,
            "name": "get_weather",
            "input": arguments,
        }
        assert sent["messages"][2] == {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "22 degrees, sunny"}
            ],
        }
        assert sent["tools"][0]["input_schema"]["properties"] == {"location": {"type": "string"}}
    elif model is GEMINI:
        assert sent["contents"][1] == {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": arguments}}],
        }
        assert sent["contents"][2] == {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": "22 degrees, sunny"},
                    }
                }
            ],
        }
        parameters = sent["tools"][0]["functionDeclarations"][0]["parameters"]
        assert "additionalProperties" not in parameters and parameters["type"] == "OBJECT"
    else:
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id


def test_claude_text_before_a_tool_call_is_kept(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat.completions.create(model=CLAUDE, messages=ask, tools=[WEATHER])
    assert reply.choices[0].message.content == "Let me check."
    forced = client.chat.completions.create(
        model=CLAUDE, messages=ask, tools=[WEATHER], tool_choice="required"
    )
    assert forced.choices[0].message.content is None
    assert forced.choices[0].message.tool_calls is not None


@ALL
def test_streamed_tool_call(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    stream = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER], stream=True)
    chunks = list(stream)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    expected = fakes.claude.tool_input if model is CLAUDE else fakes.of(model).tool_arguments
    assert json.loads(arguments) == expected
    if model is CLAUDE:
        assert len(deltas) > 2, "Anthropic streams the input in input_json_delta pieces"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_images_reach_anthropic_as_base64_and_url_sources(
    client: openai.OpenAI, fakes: Fakes
) -> None:
    content: Any = [
        {"type": "text", "text": "what is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    reply = client.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": content}]
    )
    assert reply.choices[0].message.content == "You said: what is in these images?"
    (sent,) = chat_bodies(fakes, CLAUDE)
    assert sent["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_images_reach_gemini_inline_and_urls_are_refused(
    client: openai.OpenAI, fakes: Fakes
) -> None:
    inline: Any = [
        {"type": "text", "text": "caption this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    reply = client.chat.completions.create(
        model=GEMINI, messages=[{"role": "user", "content": inline}]
    )
    assert reply.choices[0].message.content == "You said: caption this"
    (sent,) = chat_bodies(fakes, GEMINI)
    assert sent["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    url: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": url}])
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "messages[0].content[0].image_url.url"
    assert len(chat_bodies(fakes, GEMINI)) == 1, "refused before reaching Gemini"


def test_gemini_json_schema(client: openai.OpenAI, fakes: Fakes) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=GEMINI,
        messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") == {
        "answer": "You said: why is the sky blue?"
    }
    config = chat_bodies(fakes, GEMINI)[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {
        "type": "OBJECT",
        "properties": {"answer": {"type": "STRING"}},
        "required": ["answer"],
    }


def test_embeddings(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="gem/text-embedding-004", input=["hello", "world"], encoding_format="float"
    )
    assert_valid(json.loads(raw.content), "CreateEmbeddingResponse")
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_of(t, 768) for t in ("hello", "world")]
    with pytest.raises(openai.BadRequestError, match="Anthropic has no embeddings API") as info:
        client.embeddings.create(model=CLAUDE, input="hello")
    assert info.value.status_code == 400
    assert fakes.claude.requests == []


def test_models_of_every_cloud_are_listed(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {CLAUDE, GEMINI, OPENAI, "gem/text-embedding-004", "oai/o3-mini"} <= ids


# Errors.


@pytest.mark.parametrize(
    ("model", "failure", "retry_after"),
    [
        (
            CLAUDE,
            {
                "status": 429,
                "message": "Number of requests has exceeded your rate limit",
                "headers": {"retry-after": "7"},
            },
            "7",
        ),
        (GEMINI, {"status": 429, "message": "", "body": FakeGemini.rate_limited(37)}, "37"),
        (
            OPENAI,
            {
                "status": 429,
                "message": "",
                "body": FakeOpenAI.rate_limited(2),
                "headers": {"retry-after-ms": "1500"},
            },
            "2",
        ),
    ],
)
def test_429_is_a_rate_limit_error_with_retry_after(
    fresh: openai.OpenAI, fakes: Fakes, model: str, failure: dict[str, Any], retry_after: str
) -> None:
    fakes.of(model).fail(**failure)
    with pytest.raises(openai.RateLimitError) as info:
        fresh.chat.completions.create(model=model, messages=ASK)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == retry_after
    assert info.value.response.headers["x-turnout-backend"] == model.partition("/")[0]
    assert f"backend '{model.partition('/')[0]}' is rate limited" in info.value.message
    assert_valid(info.value.response.json(), "ErrorResponse")


def test_a_429_is_retried_after_its_retry_after(fresh: openai.OpenAI, fakes: Fakes) -> None:
    fakes.claude.fail(429, "rate limited", headers={"retry-after": "0"}, times=1)
    reply = fresh.chat.completions.create(model="retrying/claude-haiku-4-5-20251001", messages=ASK)
    assert reply.choices[0].message.content == "You said: why is the sky blue?"
    assert len(fakes.claude.bodies("/v1/messages")) == 2


def test_529_overloaded_is_a_5xx_naming_the_backend(fresh: openai.OpenAI, fakes: Fakes) -> None:
    fakes.claude.fail(529, "Overloaded")
    with pytest.raises(openai.InternalServerError) as info:
        fresh.chat.completions.create(model=CLAUDE, messages=ASK)
    assert info.value.status_code == 503
    assert "backend 'claude' is overloaded (HTTP 529): Overloaded" in info.value.message
    assert_valid(info.value.response.json(), "ErrorResponse")


@pytest.mark.parametrize(("model", "status"), [(CLAUDE, 400), (GEMINI, 400), (OPENAI, 400)])
def test_vendor_400_is_a_400(fresh: openai.OpenAI, fakes: Fakes, model: str, status: int) -> None:
    fakes.of(model).fail(status, "messages: something the vendor refused")
    with pytest.raises(openai.BadRequestError) as info:
        fresh.chat.completions.create(model=model, messages=ASK)
    assert "something the vendor refused" in info.value.message


def test_wrong_key_names_the_setting(fresh: openai.OpenAI, fakes: Fakes) -> None:
    for model in (CLAUDE, GEMINI, OPENAI):
        fake = fakes.of(model)
        key, fake.api_key = fake.api_key, "another-key"
        try:
            with pytest.raises(openai.InternalServerError) as info:
                fresh.chat.completions.create(model=model, messages=ASK)
        finally:
            fake.api_key = key
        name = model.partition("/")[0]
        assert f"check providers.{name}.api_key" in info.value.message, model


@ALL
def test_midstream_error_raises_api_error(fresh: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fakes.of(model).fail_midstream(after=2)
    stream = fresh.chat.completions.create(model=model, messages=ASK, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert received, "content arrived before the failure"
    assert f"backend '{model.partition('/')[0]}' failed mid-stream" in info.value.message


# Anthropic's stream ends with message_stop and Gemini's with a finishReason; a body that stops
# before is an error. The OpenAI-compatible dialect forwards what arrives and tolerates a missing
# [DONE] (several runtimes omit it), so a cut OpenAI stream is not detected here.
@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_stream_cut_short_ends_with_an_error(
    fresh: openai.OpenAI, fakes: Fakes, model: str
) -> None:
    fakes.of(model).cut_stream(after=2)
    with pytest.raises(openai.APIError):
        list(fresh.chat.completions.create(model=model, messages=ASK, stream=True))


def test_anthropic_overloaded_before_content_is_a_clean_error_status(
    fresh: openai.OpenAI, fakes: Fakes
) -> None:
    fakes.claude.fail_midstream(after=0)  # message_start, then the error event
    with pytest.raises(openai.APIStatusError) as info:
        list(fresh.chat.completions.create(model=CLAUDE, messages=ASK, stream=True))
    assert info.value.status_code == 502
    assert "overloaded_error" in info.value.message


# The fakes speak what the vendors' own SDKs parse.


def test_anthropic_sdk_reads_the_fake(fakes: Fakes) -> None:
    sdk = anthropic.Anthropic(
        base_url=fakes.claude.url, api_key=fakes.claude.api_key, max_retries=0
    )
    message = sdk.messages.create(
        model="claude-haiku-4-5-20251001",
        max_tokens=20,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
    with sdk.messages.stream(
        model="claude-haiku-4-5-20251001",
        max_tokens=50,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[tool],
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == fakes.claude.tool_input  # type: ignore[union-attr]
    fakes.claude.fail(529, "Overloaded", times=1)
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk.messages.create(
            model="claude-haiku-4-5-20251001",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
    assert info.value.status_code == 529
    # the SDK refuses to send a request without max_tokens; the fake refuses it as the API does
    request = urllib.request.Request(
        fakes.claude.url + "/v1/messages",
        data=json.dumps({"model": "claude-haiku-4-5-20251001", "messages": ASK}).encode(),
        headers={"x-api-key": fakes.claude.api_key, "anthropic-version": "2023-06-01"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    fakes.claude.fail_midstream(after=1)
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):  # noqa: SIM117
        with sdk.messages.stream(
            model="claude-haiku-4-5-20251001",
            max_tokens=50,
            messages=[{"role": "user", "content": "a b c"}],
        ) as stream:
            stream.get_final_message()


def test_anthropic_fake_refuses_a_system_role_and_missing_results(fakes: Fakes) -> None:
    sdk = anthropic.Anthropic(
        base_url=fakes.claude.url, api_key=fakes.claude.api_key, max_retries=0
    )
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.role"):
        sdk.messages.create(
            model="claude-haiku-4-5-20251001",
            max_tokens=5,
            messages=[{"role": "system", "content": "x"}],  # type: ignore[list-item]
        )
    use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result` blocks"):
        sdk.messages.create(
            model="claude-haiku-4-5-20251001",
            max_tokens=5,
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [use]},  # type: ignore[list-item]
                {"role": "user", "content": "y"},
            ],
        )


def test_openai_sdk_reads_the_fake(fakes: Fakes) -> None:
    with openai.OpenAI(
        base_url=fakes.oai.url + "/v1", api_key=fakes.oai.api_key, max_retries=0
    ) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=ASK,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        with pytest.raises(openai.BadRequestError, match="Use 'max_completion_tokens' instead"):
            sdk.chat.completions.create(model="o3-mini", messages=ASK, max_tokens=5)  # type: ignore[arg-type]
