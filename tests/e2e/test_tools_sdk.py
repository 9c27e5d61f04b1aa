"""Tools and structured output with the official clients (``openai`` and LangChain's
``langchain-openai``) through turnout, against the embedded engine, a real llama-cpp-python
server and a real llama.cpp ``llama-server``. Gemma 3 270M is a base model: the grammar turnout
asks for (the JSON schema of a call, or of the reply), not the model's skill, makes each output
valid, so the schemas are tiny and the assertions are about the contract: the tool name and id
exactly once, arguments that parse, ``finish_reason: tool_calls``, usage counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from tests.contract.conftest import run_llama_server
from tests.support.servers import run_gateway

pytestmark = pytest.mark.slow

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now.",
        "parameters": {"type": "object", "properties": {}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CHOICES = ["required", "named", "auto", "none"]


class City(BaseModel):
    name: str = Field(max_length=12)
    country: str = Field(max_length=12)


@pytest.fixture(scope="session")
def llamacpp_gateway(llama_server_binary: Path, gemma_path: Path) -> Iterator[str]:
    """turnout in front of llama.cpp's llama-server (run --no-jinja, as this GGUF needs)."""
    with run_llama_server(llama_server_binary, gemma_path) as url:
        config = {"providers": {"cpp": {"type": "llamacpp", "endpoint": url}}}
        with run_gateway(config) as gateway:
            yield gateway


@pytest.fixture(params=["embedded", "llama-cpp-python", "llama-server"])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(base URL for the SDK, model name): turnout in front of each kind of backend."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded_gateway") + "/v1", "gemma-3-270m"
    if request.param == "llama-cpp-python":
        return request.getfixturevalue("llama_gateway") + "/v1", "llama/gemma-3-270m"
    return request.getfixturevalue("llamacpp_gateway") + "/v1", "cpp/gemma-3-270m"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=120)


def _choice(name: str) -> Any:
    return {"type": "function", "function": {"name": "get_weather"}} if name == "named" else name


def _check_call(calls: list[dict[str, Any]], names: set[str]) -> dict[str, Any]:
    assert len(calls) == 1, calls
    call = calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] in names
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
    return call


@pytest.mark.parametrize("choice", CHOICES)
def test_tool_choice(target: tuple[str, str], choice: str) -> None:
    url, model = target
    tools = [WEATHER, TIME] if choice != "named" else [TIME, WEATHER]
    with _client(url) as client:
        reply = client.chat.completions.create(
            model=model, messages=ASK, tools=tools, tool_choice=_choice(choice), max_tokens=48
        )
    body = reply.to_dict()
    choice_ = body["choices"][0]
    calls = choice_["message"].get("tool_calls") or []
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    if choice == "none" or (choice == "auto" and not calls):
        assert not calls and isinstance(choice_["message"]["content"], str)
        return
    names = {"get_weather"} if choice == "named" else {"get_weather", "get_time"}
    _check_call(calls, names)
    assert choice_["finish_reason"] == "tool_calls"
    assert choice_["message"]["content"] is None


@pytest.mark.parametrize("choice", CHOICES)
def test_tool_choice_streamed(target: tuple[str, str], choice: str) -> None:
    url, model = target
    with _client(url) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice=_choice(choice),
            max_tokens=48,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk.to_dict() for chunk in stream]
    parts = [
        part
        for chunk in chunks
        for c in chunk["choices"]
        for part in c.get("delta", {}).get("tool_calls") or ()
    ]
    finishes = [
        c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c.get("finish_reason")
    ]
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    if choice == "none" or (choice == "auto" and not parts):
        assert not parts
        return
    # the name and id exactly once, in the first delta of the call; then arguments alone
    assert ("id" in parts[0], "name" in parts[0]["function"]) == (True, True)
    assert all("id" not in p and "name" not in p["function"] for p in parts[1:])
    whole = {
        "id": parts[0]["id"],
        "type": parts[0]["type"],
        "function": {
            "name": parts[0]["function"]["name"],
            "arguments": "".join(p["function"].get("arguments") or "" for p in parts),
        },
    }
    names = {"get_weather"} if choice == "named" else {"get_weather", "get_time"}
    _check_call([whole], names)
    assert finishes == ["tool_calls"]


def test_tool_round_trip(target: tuple[str, str]) -> None:
    url, model = target
    with _client(url) as client:
        first = client.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=48
        )
        call = first.choices[0].message.tool_calls[0]
        messages = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ]
        answer = client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=12
        )
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_parse_structured_output(target: tuple[str, str]) -> None:
    url, model = target
    with _client(url) as client:
        reply = client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Paris is in France. Name the city."}],
            response_format=City,
            max_tokens=60,
        )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name and parsed.country


def test_developer_role_is_served(target: tuple[str, str]) -> None:
    url, model = target
    messages = [{"role": "developer", "content": "Answer briefly."}, *ASK]
    with _client(url) as client:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_logprobs_on_the_embedded_engine_is_a_400(embedded_gateway: str) -> None:
    with _client(embedded_gateway + "/v1") as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma-3-270m", messages=ASK, logprobs=True, max_tokens=3
        )
    assert info.value.body["param"] == "logprobs"  # type: ignore[index]
    assert "embedded" in info.value.body["message"]  # type: ignore[index]


def test_unknown_named_tool_is_a_400(embedded_gateway: str) -> None:
    nope = {"type": "function", "function": {"name": "nope"}}
    with _client(embedded_gateway + "/v1") as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma-3-270m", messages=ASK, tools=[WEATHER], tool_choice=nope
        )
    assert info.value.body["param"] == "tool_choice.function.name"  # type: ignore[index]


# --- LangChain (langchain-openai) ---------------------------------------------------------------


def _chat_model(url: str, model: str) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=url, api_key="not-needed", model=model, max_retries=0, max_tokens=60, timeout=120
    )


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_langchain_bind_tools(target: tuple[str, str]) -> None:
    url, model = target
    llm = _chat_model(url, model).bind_tools([get_weather], tool_choice="get_weather")
    message = llm.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"].get("city"), str)
    merged = None
    for piece in llm.stream("What is the weather in Paris?"):
        merged = piece if merged is None else merged + piece
    assert merged is not None
    assert [c["name"] for c in merged.tool_calls] == ["get_weather"]  # not get_weatherget_...
    assert isinstance(merged.tool_calls[0]["args"].get("city"), str)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(target: tuple[str, str], method: str) -> None:
    url, model = target
    structured = _chat_model(url, model).with_structured_output(City, method=method)
    result = structured.invoke("Paris is in France. Name the city.")
    assert isinstance(result, City) and result.name and result.country
