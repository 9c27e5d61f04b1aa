"""Tools held to a JSON schema by turnout, for runtimes that cannot call them themselves."""

from __future__ import annotations

import orjson
import pytest

from turnout.errors import InvalidRequestError
from turnout.providers.tool_schema import has_tool_history, plan_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Paris?"}]


def _body(choice: object = None, tools: list | None = None) -> dict:
    body = {"model": "m", "messages": ASK, "tools": tools or [WEATHER, TIME]}
    if choice is not None:
        body["tool_choice"] = choice
    return body


def _schema(plan) -> dict:
    return plan.body["response_format"]["json_schema"]["schema"]


def test_required_allows_a_call_of_any_tool_and_no_text() -> None:
    plan = plan_tools(_body("required"))
    options = _schema(plan)["anyOf"]
    assert [o["properties"]["name"] for o in options] == [
        {"enum": ["get_weather"]},
        {"enum": ["get_time"]},
    ]
    assert options[0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    assert "tools" not in plan.body and "tool_choice" not in plan.body
    assert plan.body["messages"][0]["role"] == "system"
    assert "get_weather" in plan.body["messages"][0]["content"]
    assert plan.body["messages"][1]["role"] == "system"  # developer, renamed


def test_named_function_allows_that_call_alone() -> None:
    plan = plan_tools(_body({"type": "function", "function": {"name": "get_time"}}))
    assert _schema(plan)["properties"]["name"] == {"enum": ["get_time"]}


def test_auto_allows_text_too_and_none_offers_nothing() -> None:
    options = _schema(plan_tools(_body()))["anyOf"]
    assert options[-1]["required"] == ["content"]
    plan = plan_tools(_body("none"))
    assert plan.schema is None and "response_format" not in plan.body


def test_unknown_named_function_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan_tools(_body({"type": "function", "function": {"name": "nope"}}))
    assert info.value.param == "tool_choice.function.name"


def _reply(text: str, finish: str = "stop") -> dict:
    message = {"role": "assistant", "content": text}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def test_reply_becomes_a_call_or_text() -> None:
    plan = plan_tools(_body("auto"))
    called = plan.reply(_reply('{ "name": "get_weather", "arguments": {"city": "Paris"} }'))
    choice = called["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    text = plan.reply(_reply('{"content": "Sunny."}'))["choices"][0]
    assert text["message"] == {"role": "assistant", "content": "Sunny."}
    partial = plan.reply(_reply('{ "content": "Sunny \\"and', "length"))["choices"][0]
    assert partial["message"]["content"] == 'Sunny "and'
    cut = plan.reply(_reply('{"name": "get_wea', "length"))["choices"][0]
    assert cut["message"]["content"] == '{"name": "get_wea' and cut["finish_reason"] == "length"


def test_stream_sends_id_and_name_once_then_arguments() -> None:
    held = plan_tools(_body("required")).stream()
    pieces = ['{"name": "get_weather",', ' "arguments": {"city": "Paris"}}']
    out = []
    for i, piece in enumerate([*pieces, ""]):
        finish = "stop" if i == len(pieces) else None
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        chunk = {
            "id": "c",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        out.extend(held(chunk))
    out.extend(held({"id": "c", "choices": [], "usage": {"completion_tokens": 3}}))
    deltas = [c["choices"][0]["delta"] for c in out if c["choices"]]
    assert deltas[0] == {"role": "assistant"}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c.get("id") is not None for c in calls] == [True, False]
    assert [c["function"].get("name") for c in calls] == ["get_weather", None]
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["usage"] == {"completion_tokens": 3}


def test_history_is_written_as_text() -> None:
    messages = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    ]
    body = {"model": "m", "messages": messages}
    assert has_tool_history(body)
    plan = plan_tools(body)
    assert [m["role"] for m in plan.body["messages"]] == ["user", "assistant", "user"]
    assert plan.body["messages"][2]["content"] == "Result of get_weather: Sunny"
    assert orjson.loads(plan.body["messages"][1]["content"])["name"] == "get_weather"
    assert not has_tool_history({"messages": ASK})
