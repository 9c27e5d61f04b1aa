"""The Anthropic, Ollama and Responses fronts end to end with the official clients (``anthropic``,
``ollama``, ``openai``), unchanged, against turnout over real HTTP in front of the fakes of
backends that cannot run here (tests/fakes/: Ollama, the Anthropic cloud, an OpenAI-compatible
runtime). Each request crosses dialects: an Anthropic client to an Ollama backend, a Responses
client to the Anthropic cloud, an Ollama client to an OpenAI-compatible runtime, with tools. Every
stream is also read raw and checked event by event (tests/support/dialects.py); every error must
raise the SDK's own exception type with the right status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic, run_fake_anthropic
from tests.fakes.ollama import FakeOllama, run_fake_ollama
from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support.dialects import (
    check_anthropic_error,
    check_anthropic_message,
    check_anthropic_stream,
    check_ollama,
    check_ollama_lines,
    check_responses_stream,
    sse_events,
)
from tests.support.openapi import assert_valid
from tests.support.servers import free_port, run_gateway

CLAUDE = "claude/claude-sonnet-4-5-20250929"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
    "required": ["location", "format"],
}
ANTHROPIC_TOOL = {
    "name": "get_current_weather",
    "description": "weather",
    "input_schema": WEATHER_SCHEMA,
}
RESPONSES_TOOL = {"type": "function", "name": "get_current_weather", "parameters": WEATHER_SCHEMA}
OLLAMA_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOllama, FakeAnthropic, FakeRuntime]]:
    with (
        run_fake_ollama() as fake_ollama,
        run_fake_anthropic() as fake_claude,
        run_fake_runtime("vllm") as fake_vllm,
    ):
        yield fake_ollama, fake_claude, fake_vllm


def _config(fakes: tuple[FakeOllama, FakeAnthropic, FakeRuntime]) -> dict[str, Any]:
    fake_ollama, fake_claude, fake_vllm = fakes
    return {
        "providers": {
            "ollama": {"type": "ollama", "endpoint": fake_ollama.url, "max_retries": 0},
            "claude": {"type": "anthropic", "endpoint": fake_claude.url, "max_retries": 0,
                       "api_key": fake_claude.api_key},
            "vllm": {"type": "vllm", "endpoint": fake_vllm.url, "max_retries": 0},
            "gone": {"type": "vllm", "endpoint": f"http://127.0.0.1:{free_port()}",
                     "max_retries": 0, "models": ["ghost"],
                     "breaker": {"failures": 1, "cooldown": 30}},
        },
        "server": {"max_body_bytes": 4096, "responses_store": 4},
    }  # fmt: skip


@pytest.fixture(scope="module")
def url(fakes: tuple[FakeOllama, FakeAnthropic, FakeRuntime]) -> Iterator[str]:
    with run_gateway(_config(fakes)) as base:
        yield base


@pytest.fixture(autouse=True)
def _reset(fakes: tuple[FakeOllama, FakeAnthropic, FakeRuntime]) -> Iterator[None]:
    for fake in fakes:
        fake.reset()
    yield
    for fake in fakes:
        fake.reset()


def claude_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=30)


def responses_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


# Anthropic client -> Ollama backend, with tools.


def test_anthropic_tool_round_trip_over_ollama(url: str, fakes: Any) -> None:
    fake_ollama = fakes[0]
    client = claude_client(url)
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.with_raw_response.create(
        model="ollama/llama3.2:latest", max_tokens=64, messages=ask, tools=[ANTHROPIC_TOOL]
    )
    check_anthropic_message(first.http_response.json())
    message = first.parse()
    assert message.stop_reason == "tool_use"
    use = next(b for b in message.content if b.type == "tool_use")
    assert use.name == "get_current_weather" and use.input == fake_ollama.tool_arguments
    sent = fake_ollama.bodies("/api/chat")[-1]
    assert sent["tools"][0]["function"]["name"] == "get_current_weather"
    follow = [
        *ask,
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22C"}],
        },
    ]
    second = client.messages.create(
        model="ollama/llama3.2:latest", max_tokens=64, messages=follow, tools=[ANTHROPIC_TOOL]
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and "22C" in second.content[0].text
    tool_message = fake_ollama.bodies("/api/chat")[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "22C"


def test_anthropic_stream_with_tools_over_ollama(url: str) -> None:
    body = {
        "model": "ollama/llama3.2:latest",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [ANTHROPIC_TOOL],
    }
    raw = httpx.post(url + "/v1/messages?beta=true", json=body, timeout=30,
                     headers={"anthropic-beta": "context-management-2025-06-27"})  # fmt: skip
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    message = check_anthropic_stream(sse_events(raw.content))
    assert message["stop_reason"] == "tool_use"
    args = {k: v for k, v in body.items() if k != "stream"}
    with claude_client(url).messages.stream(**args) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and text == "".join(
        b.text for b in final.content if b.type == "text"
    )
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.input == {"location": "Paris, FR", "format": "celsius"}


def test_anthropic_count_tokens_says_it_is_an_estimate(url: str) -> None:
    raw = claude_client(url).messages.with_raw_response.count_tokens(
        model="ollama/llama3.2:latest", messages=[{"role": "user", "content": "one two three"}]
    )
    assert raw.parse().input_tokens > 0
    assert raw.headers["x-turnout-token-count"] == "estimate"  # Ollama cannot tokenize


def test_claude_code_request_shape(url: str) -> None:
    """What Claude Code sends: ?beta=true, beta headers, context_management, unknown fields, a
    base URL ending in /v1, after a HEAD / probe."""
    assert httpx.head(url + "/").status_code == 200
    body = {"model": "ollama/llama3.2:latest", "max_tokens": 16,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                       "cache_control": {"type": "ephemeral"}}]}],
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
            "betas": ["x"], "some_future_field": {"a": 1}}  # fmt: skip
    headers = {"anthropic-beta": "context-1m-2025-08-07,advanced-tool-use-2025-11-20",
               "anthropic-version": "2023-06-01"}  # fmt: skip
    for path in ("/v1/messages?beta=true", "/v1/v1/messages"):
        reply = httpx.post(url + path, json=body, headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        check_anthropic_message(reply.json())


# Responses client -> the Anthropic cloud, with tools.


def test_responses_function_call_round_trip_over_anthropic(url: str, fakes: Any) -> None:
    fake_claude = fakes[1]
    client = responses_client(url)
    first = client.responses.create(
        model=CLAUDE, input="Weather in Paris?", tools=[RESPONSES_TOOL], max_output_tokens=64
    )
    assert_valid(first.to_dict(), "Response")
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_current_weather"
    assert json.loads(call.arguments) == fake_claude.tool_input
    second = client.responses.create(
        model=CLAUDE,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "22C"},
        ],
        tools=[RESPONSES_TOOL],
        max_output_tokens=64,
    )  # fmt: skip
    assert "22C" in second.output_text and second.status == "completed"
    sent = fake_claude.bodies("/v1/messages")[-1]["messages"]
    assert sent[-1]["content"][0]["type"] == "tool_result"


def test_responses_stream_over_anthropic(url: str) -> None:
    client = responses_client(url)
    with client.responses.stream(
        model=CLAUDE, input="Weather?", tools=[RESPONSES_TOOL], max_output_tokens=64
    ) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert any(item.type == "function_call" for item in final.output)
    body = {"model": CLAUDE, "input": "hello there", "stream": True, "max_output_tokens": 64}
    raw = httpx.post(url + "/v1/responses", json=body, timeout=30)
    final_raw = check_responses_stream(sse_events(raw.content))
    assert "hello there" in final_raw["output"][0]["content"][0]["text"]


def test_responses_store_and_previous_response_id(url: str) -> None:
    client = responses_client(url)
    first = client.responses.create(model=CLAUDE, input="remember apples", store=True)
    assert client.responses.retrieve(first.id).id == first.id
    second = client.responses.create(
        model=CLAUDE, input="what did I say?", previous_response_id=first.id
    )
    assert second.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=CLAUDE, input="x", previous_response_id="resp_unknown")
    assert info.value.status_code == 400 and "resp_unknown" in info.value.message


# Ollama client -> an OpenAI-compatible runtime (vLLM's fake), with tools.


def test_ollama_chat_with_tools_over_vllm(url: str, fakes: Any) -> None:
    client = ollama.Client(host=url, timeout=30)
    first = client.chat(
        model="vllm/fake-model", messages=[{"role": "user", "content": "find cats"}],
        tools=[OLLAMA_TOOL], stream=False,
    )  # fmt: skip
    calls = first.message.tool_calls or []
    assert calls and calls[0].function.name == "lookup"
    assert calls[0].function.arguments == {"query": "find cats"}
    follow = [
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "three cats", "tool_name": "lookup"},
    ]
    second = client.chat(model="vllm/fake-model", messages=follow, tools=[OLLAMA_TOOL])
    assert "three cats" in (second.message.content or "")
    assert second.done and second.eval_count and second.eval_count > 0
    sent = fakes[2].bodies("/v1/chat/completions")[-1]["messages"]
    assert sent[-1]["tool_call_id"] == sent[-2]["tool_calls"][0]["id"]


def test_ollama_stream_raw_lines(url: str) -> None:
    body = {"model": "vllm/fake-model", "messages": [{"role": "user", "content": "a b c"}],
            "options": {"num_predict": 3}}  # fmt: skip
    reply = httpx.post(url + "/api/chat", json=body, timeout=30)
    assert reply.headers["content-type"] == "application/x-ndjson"
    objs = [json.loads(line) for line in reply.text.splitlines() if line]
    last = check_ollama_lines(objs, "chat")
    assert last["done_reason"] == "length" and last["eval_count"] == 3
    client = ollama.Client(host=url, timeout=30)
    parts = list(client.generate(model="vllm/fake-model", prompt="x y", stream=True))
    assert parts[-1].done and "x y" in "".join(p.response or "" for p in parts)


def test_ollama_listing(url: str) -> None:
    client = ollama.Client(host=url, timeout=30)
    names = [m.model for m in client.list().models]
    assert "ollama/llava:7b" in names and "vllm/fake-model" in names
    check_ollama(httpx.get(url + "/api/tags").json(), "Tags")
    llava = next(m for m in client.list().models if m.model == "ollama/llava:7b")
    assert llava.details is not None and llava.details.parameter_size == "7B"
    show = httpx.post(url + "/api/show", json={"model": "ollama/llava:7b"}).json()
    check_ollama(show, "Show")
    assert "vision" in show["capabilities"]
    check_ollama(httpx.get(url + "/api/version").json(), "Version")
    assert httpx.get(url + "/").text == "Ollama is running"


def test_ollama_embed(url: str) -> None:
    client = ollama.Client(host=url, timeout=30)
    out = client.embed(model="ollama/llama3.2:latest", input=["a", "b"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) > 1
    legacy = client.embeddings(model="ollama/llama3.2:latest", prompt="a")
    assert list(legacy.embedding) == list(out.embeddings[0])


# Each front's errors, in its own dialect, as each SDK raises them.


def test_unknown_model_in_each_dialect(url: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as a:
        claude_client(url).messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert a.value.status_code == 404 and a.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as o:
        ollama.Client(host=url).chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert o.value.status_code == 404 and "nope" in o.value.error
    with pytest.raises(openai.NotFoundError) as r:
        responses_client(url).responses.create(model="nope", input="x")
    assert r.value.status_code == 404


def test_invalid_field_and_malformed_json_in_each_dialect(url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as a:
        claude_client(url).messages.create(
            model=CLAUDE,
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temperature": 3},
        )
    check_anthropic_error(a.value.body, "invalid_request_error")  # type: ignore[arg-type]
    assert "temperature" in a.value.message
    bad = b'{"model": '
    reply = httpx.post(url + "/v1/messages", content=bad)
    assert reply.status_code == 400
    check_anthropic_error(reply.json(), "invalid_request_error")
    reply = httpx.post(url + "/api/chat", content=bad)
    assert reply.status_code == 400 and isinstance(reply.json()["error"], str)
    reply = httpx.post(url + "/v1/responses", content=bad)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"
    with pytest.raises(ollama.ResponseError) as o:
        ollama.Client(host=url).generate(model="vllm/fake-model", prompt="x", template="{{.P}}")
    assert o.value.status_code == 400 and "template" in o.value.error
    with pytest.raises(openai.BadRequestError) as r:
        responses_client(url).responses.create(
            model=CLAUDE, input="x", tools=[{"type": "web_search"}]
        )
    assert r.value.param == "tools[0].type"


def test_body_too_large_in_each_dialect(url: str) -> None:
    big = "x " * 4000
    with pytest.raises(anthropic.RequestTooLargeError):
        claude_client(url).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": big}]
        )
    with pytest.raises(ollama.ResponseError) as o:
        ollama.Client(host=url).generate(model="vllm/fake-model", prompt=big)
    assert o.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as r:
        responses_client(url).responses.create(model=CLAUDE, input=big)
    assert r.value.status_code == 413


def test_backend_down_then_circuit_open_in_each_dialect(fakes: Any) -> None:
    with run_gateway(_config(fakes)) as base:
        with pytest.raises(anthropic.InternalServerError) as down:
            claude_client(base).messages.create(
                model="gone/ghost", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert down.value.status_code == 502 and "gone" in down.value.message
        with pytest.raises(anthropic.OverloadedError) as full:  # 503 "no backend" is 529 here
            claude_client(base).messages.create(
                model="gone/ghost", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert full.value.status_code == 529 and int(full.value.response.headers["retry-after"]) > 0
        with pytest.raises(ollama.ResponseError) as o:
            ollama.Client(host=base).chat(
                model="gone/ghost", messages=[{"role": "user", "content": "x"}]
            )
        assert o.value.status_code == 503
        with pytest.raises(openai.InternalServerError) as r:
            responses_client(base).responses.create(model="gone/ghost", input="x")
        assert r.value.status_code == 503 and r.value.response.headers["retry-after"]


def test_rate_limit_keeps_retry_after(url: str, fakes: Any) -> None:
    fakes[1].fail(
        429,
        "Number of request tokens has exceeded your per-minute rate limit",
        "rate_limit_error",
        {"retry-after": "7"},
    )
    with pytest.raises(anthropic.RateLimitError) as a:
        claude_client(url).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert a.value.response.headers["retry-after"] == "7"


def test_error_after_the_stream_began_in_each_dialect(url: str, fakes: Any) -> None:
    fake_ollama = fakes[0]
    fake_ollama.fail_midstream(after=2)
    with (
        pytest.raises(anthropic.APIStatusError),
        claude_client(url).messages.stream(
            model="ollama/llama3.2:latest",
            max_tokens=64,
            messages=[{"role": "user", "content": "one two three four"}],
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    body = {"model": "ollama/llama3.2:latest", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "one two three four"}]}  # fmt: skip
    events = sse_events(httpx.post(url + "/v1/messages", json=body, timeout=30).content)
    check_anthropic_stream(events)
    assert events[-1][0] == "error"
    with pytest.raises(ollama.ResponseError):
        for _ in ollama.Client(host=url).chat(
            model="ollama/llama3.2:latest",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
        ):
            pass
    raw = httpx.post(
        url + "/v1/responses",
        json={"model": "ollama/llama3.2:latest", "input": "one two three four", "stream": True},
        timeout=30,
    )
    final = check_responses_stream(sse_events(raw.content))
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"


# The source web app's endpoints.


def test_webapp_endpoints(url: str, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = httpx.get(url + "/api/local-llm/providers").json()["providers"]
    health = {p["provider"]: p["health"] for p in listed}
    assert health["ollama"] == "ok" and health["gone"] == "unreachable"
    assert {"apiName", "uiName", "supportsTools"} <= set(listed[0]["models"][0])
    missing = httpx.post(
        url + "/api/local-llm/proxy", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 400 and missing.json() == {"error": "model required"}
    proxied = httpx.post(
        url + "/api/local-llm/proxy",
        json={
            "provider": "vllm",
            "model": "fake-model",
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert proxied.status_code == 200 and proxied.json()["choices"][0]["message"]["content"]
    streamed = httpx.post(
        url + "/api/local-llm/stream",
        json={"model": "vllm/fake-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert httpx.get(url + "/api/local-llm/ollama/list").json()["models"]
    refused = httpx.post(url + "/api/local-llm/ollama/pull", json={"model": "tinyllama"})
    assert refused.status_code == 403
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    name = next(iter(fakes[0].registry))
    pulled = httpx.post(url + "/api/local-llm/ollama/pull", json={"model": name}, timeout=30)
    assert pulled.status_code == 200 and pulled.json()["status"] == "success", pulled.text
    foreign = {"model": "evil.example:5000/library/x"}  # a registry nobody configured
    elsewhere = httpx.post(url + "/api/local-llm/ollama/pull", json=foreign, timeout=30)
    assert elsewhere.status_code in (400, 403), elsewhere.text
    assert "pull_registries" in elsewhere.json()["error"], elsewhere.text
    deleted = httpx.post(url + "/api/local-llm/ollama/delete", json={"model": f"ollama/{name}"})
    assert deleted.status_code == 200, deleted.text


def test_ollama_pull_and_delete_reach_the_ollama_backend(
    url: str, fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ollama.Client(host=url, timeout=30)
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("tinyllama")
    assert refused.value.status_code == 403  # LOCAL_LLM_ENABLE_PULL is off
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    name = next(iter(fakes[0].registry))
    statuses = [p.status for p in client.pull(f"ollama/{name}", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull(f"ollama/{name}").status == "success"
    client.delete(f"ollama/{name}")
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(f"ollama/{name}")
    assert gone.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("ollama/no-such-model")
    assert "file does not exist" in missing.value.error
    with pytest.raises(ollama.ResponseError) as copy:
        client.copy("a", "b")  # mapped now (tests/integration/test_ollama_front_models.py)
    assert copy.value.status_code == 404


def test_model_changes_need_the_admin_key_in_each_dialect(
    fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    config = _config(fakes)
    config["server"]["admin_key"] = "s3cret"
    name = next(iter(fakes[0].registry))
    with run_gateway(config) as base:
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=base).pull(f"ollama/{name}")
        assert info.value.status_code == 401 and "admin" in info.value.error
        keyed = ollama.Client(host=base, headers={"Authorization": "Bearer s3cret"})
        assert keyed.pull(f"ollama/{name}").status == "success"
        refused = httpx.post(base + "/api/local-llm/ollama/delete", json={"model": name})
        assert refused.status_code == 401 and isinstance(refused.json()["error"], str)
        # inference stays open: the admin key guards only what changes the models
        assert keyed.chat(model="vllm/fake-model", messages=[{"role": "user", "content": "x"}]).done
