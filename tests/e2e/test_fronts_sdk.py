"""The official ``anthropic``, ``ollama`` and ``openai`` (Responses) clients, unchanged, against
turnout serving real models: the embedded engine in process, and a real llama-cpp-python server
(llama.cpp) behind it, both on the Gemma 3 270M base model. The answers are not judged (a 270M
base model), their shape and protocol are: every reply and stream is also read raw and checked
against the vendor's schema and event order (tests/support/dialects.py).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.support.dialects import (
    check_anthropic_message,
    check_anthropic_stream,
    check_ollama,
    check_ollama_lines,
    check_responses_stream,
    sse_events,
)
from tests.support.openapi import assert_valid
from tests.support.servers import run_gateway

pytestmark = pytest.mark.slow

TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


@pytest.fixture(params=["embedded", "llama"])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(gateway URL, model): turnout in front of each kind of backend."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded_gateway"), "gemma-3-270m"
    return request.getfixturevalue("llama_gateway"), "llama/gemma-3-270m"


def test_anthropic_create_stream_and_count(target: tuple[str, str]) -> None:
    url, model = target
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=120)
    ask: list[Any] = [{"role": "user", "content": "Tell me a story."}]
    raw = client.messages.with_raw_response.create(model=model, max_tokens=6, messages=ask)
    check_anthropic_message(raw.http_response.json())
    message = raw.parse()
    assert message.stop_reason in ("max_tokens", "end_turn") and message.usage.output_tokens <= 6
    with client.messages.stream(model=model, max_tokens=6, messages=ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    body = {"model": model, "max_tokens": 6, "messages": ask, "stream": True}
    events = sse_events(httpx.post(url + "/v1/messages", json=body, timeout=120).content)
    check_anthropic_stream(events)
    counted = client.messages.with_raw_response.count_tokens(model=model, messages=ask)
    assert counted.parse().input_tokens >= 4
    assert counted.headers["x-turnout-token-count"] == "exact"  # the model's own tokenizer


def test_anthropic_tool_use_history(target: tuple[str, str]) -> None:
    """A tool-use round trip as the client sends it: the call and its result go back in."""
    url, model = target
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=120)
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "22C"}],
        },
    ]
    tools: list[Any] = [{"name": "weather", "input_schema": TOOL_SCHEMA}]
    reply = client.messages.with_raw_response.create(
        model=model, max_tokens=6, messages=history, tools=tools, tool_choice={"type": "none"}
    )
    check_anthropic_message(reply.http_response.json())


def test_ollama_client(target: tuple[str, str]) -> None:
    url, model = target
    client = ollama.Client(host=url, timeout=120)
    ask = [{"role": "user", "content": "Tell me a story."}]
    out = client.chat(model=model, messages=ask, options={"num_predict": 5}, stream=False)
    assert out.done and out.done_reason in ("length", "stop") and (out.eval_count or 0) <= 5
    assert (out.prompt_eval_count or 0) > 0 and (out.total_duration or 0) > 0
    parts = list(client.chat(model=model, messages=ask, options={"num_predict": 5}, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    generated = client.generate(model=model, prompt="Once upon a time", options={"num_predict": 4})
    assert generated.done and generated.response is not None
    body = {"model": model, "prompt": "Once", "options": {"num_predict": 4}}
    lines = httpx.post(url + "/api/generate", json=body, timeout=120).text.splitlines()
    check_ollama_lines([json.loads(line) for line in lines if line], "generate")
    names = [m.model for m in client.list().models]
    assert any(name.endswith("gemma-3-270m") for name in names)
    check_ollama(httpx.post(url + "/api/show", json={"model": model}).json(), "Show")
    check_ollama(httpx.get(url + "/api/ps").json(), "Ps")
    assert "completion" in (client.show(model).capabilities or [])


def test_ollama_embed_on_the_embedded_engine(embedded_gateway: str) -> None:
    client = ollama.Client(host=embedded_gateway, timeout=120)
    out = client.embed(model="gemma-3-270m", input=["hello", "world"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) > 8
    assert client.ps().models, "the embedded engine lists its loaded model"


def test_ollama_client_to_llama_cpp_with_tools(llama_server: str) -> None:
    """An Ollama client, tools included, over llama.cpp (llama-cpp-python's server; its preset
    does not claim tools, so the model entry declares them)."""
    model = {"name": "gemma-3-270m", "supports_tools": True}
    provider = {"type": "llama-cpp-python", "endpoint": llama_server, "models": [model]}
    with run_gateway({"providers": {"llama": provider}}) as url:
        _ollama_tools(url)


def _ollama_tools(url: str) -> None:
    client = ollama.Client(host=url, timeout=120)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": TOOL_SCHEMA}}]
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22C", "tool_name": "weather"},
    ]
    out = client.chat(
        model="llama/gemma-3-270m", messages=history, tools=tools, options={"num_predict": 5}
    )
    assert out.done and out.message.role == "assistant"


def test_responses_client(target: tuple[str, str]) -> None:
    url, model = target
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.responses.create(model=model, input="Tell me a story.", max_output_tokens=6)
    assert_valid(reply.to_dict(), "Response")
    assert reply.output_text and reply.usage is not None and reply.usage.output_tokens <= 6
    with client.responses.stream(model=model, input="Hello", max_output_tokens=6) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text
    body = {"model": model, "input": "Hello", "max_output_tokens": 6, "stream": True}
    check_responses_stream(
        sse_events(httpx.post(url + "/v1/responses", json=body, timeout=120).content)
    )
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "22C"},
    ]
    tools: list[Any] = [{"type": "function", "name": "weather", "parameters": TOOL_SCHEMA}]
    follow = client.responses.create(
        model=model, input=history, tools=tools, tool_choice="none", max_output_tokens=6
    )
    assert_valid(follow.to_dict(), "Response")


def test_errors_from_a_real_backend(target: tuple[str, str]) -> None:
    url, model = target
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0).messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=url).chat(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).responses.create(
            model=model, input="x", previous_response_id="resp_1"
        )
    assert bad.value.param == "previous_response_id"


def test_ollama_tags_know_the_embedded_file(embedded_gateway: str) -> None:
    models = ollama.Client(host=embedded_gateway).list().models
    gemma = next(m for m in models if (m.model or "").endswith("gemma-3-270m"))
    assert (gemma.size or 0) > 100_000_000  # the GGUF's own size on disk
    assert gemma.digest and len(gemma.digest) == 64
