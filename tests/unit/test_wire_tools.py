"""Tool calls in OpenAI's contract, whatever the backend sent: one id and name per call."""

from __future__ import annotations

import orjson

from turnout.wire.tools import ToolCallStream, merge_deltas, tidy_reply


def _chunk(
    parts: list[dict] | None = None, finish: str | None = None, content: str | None = None
) -> dict:
    delta: dict = {}
    if parts is not None:
        delta["tool_calls"] = parts
    if content is not None:
        delta["content"] = content
    return {"id": "x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _repeating() -> list[dict]:
    """llama-cpp-python's stream of a named call: id and name repeated in every delta."""
    frags = ['{"city"', ': "Par', 'is"}']
    return [
        _chunk(
            [
                {
                    "index": 0,
                    "id": "call__0_get_weather",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": f},
                }
            ]
        )
        for f in frags
    ] + [_chunk(finish="tool_calls")]


def test_repeated_name_and_id_are_sent_once() -> None:
    stream = ToolCallStream()
    out = [stream(c) for c in _repeating()]
    parts = [p for c in out for p in c["choices"][0]["delta"].get("tool_calls", ())]
    assert [p.get("id") for p in parts] == ["call__0_get_weather", None, None]
    assert [p["function"].get("name") for p in parts] == ["get_weather", None, None]
    assert "type" not in parts[1] and "type" not in parts[2]
    assert "".join(p["function"]["arguments"] for p in parts) == '{"city": "Paris"}'


def test_whole_calls_get_ids_and_string_arguments() -> None:
    stream = ToolCallStream()
    first = stream(
        _chunk(
            [
                {"function": {"name": "a", "arguments": {"x": 1}}},
                {"function": {"name": "b", "arguments": {}}},
            ]
        )
    )
    last = stream(_chunk(finish="stop"))
    parts = first["choices"][0]["delta"]["tool_calls"]
    assert [p["index"] for p in parts] == [0, 1]
    assert all(p["id"].startswith("call_") and p["type"] == "function" for p in parts)
    assert orjson.loads(parts[0]["function"]["arguments"]) == {"x": 1}
    assert last["choices"][0]["finish_reason"] == "tool_calls"


def test_plain_text_chunks_pass_unchanged() -> None:
    stream = ToolCallStream()
    for chunk in (_chunk(content="hi"), _chunk(finish="stop"), {"choices": [], "usage": {}}):
        assert stream(chunk) is chunk


def test_assembled_reply_has_the_name_once() -> None:
    calls: dict[int, dict] = {}
    for chunk in _repeating():
        merge_deltas(calls, chunk["choices"][0]["delta"].get("tool_calls"))
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"] == "call__0_get_weather"


def test_tidy_reply() -> None:
    reply = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "a", "arguments": {"q": 1}}}],
                },
            }
        ]
    }
    tidy_reply(reply)
    choice = reply["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["arguments"] == '{"q":1}'
