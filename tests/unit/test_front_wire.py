"""The client-dialect translators (turnout/wire/anthropic.py, anthropic_stream.py, ollama.py,
responses.py): requests in, the internal (OpenAI-shaped) body out, checked by the gateway's own
chat validator; replies and streams back, every object and event checked against the vendor's
documented schema and order (tests/support/dialects.py). Streams are fed synthetic internal
chunks written from OpenAI's contract, never produced by the code under test."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

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
from turnout.errors import (
    BackendProtocolError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoBackendAvailableError,
    RequestTooLargeError,
)
from turnout.wire import anthropic as am, anthropic_stream as ast, ollama as ol, responses as rs
from turnout.wire.validate import validate_chat, validate_completion, validate_embedding

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**head, "choices": [choice], **extra}


def usage_chunk(prompt: int = 7, completion: int = 3, cached: int = 0) -> Any:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**head, "choices": [], "usage": usage}


def reply(message: dict[str, Any], finish: str, **choice: Any) -> Any:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": " there"}),
    chunk({}, "stop"),
    usage_chunk(),
]
CALL = {"index": 0, "id": "call_1", "type": "function"}
TOOL_STREAM = [
    chunk({"role": "assistant", "content": "Let me look."}),
    chunk({"tool_calls": [{**CALL, "function": {"name": "weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "time"}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(),
]

# Anthropic: requests.


def test_anthropic_request_full() -> None:
    raw = {
        "model": "claude",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "rain",
                        "is_error": True,
                    },
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
        "tools": [{"name": "weather", "description": "w", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": {"edits": []},
        "service_tier": "auto",
        "brand_new_field": 1,
        "stream": True,
    }
    translated = am.to_chat(raw)
    body = validate_chat(translated.body)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    user = body["messages"][1]["content"]
    assert user[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert user[2]["image_url"]["url"] == "https://x.test/a.jpg"
    assistant = body["messages"][2]
    assert assistant["content"] == "Checking."
    assert assistant["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city":"Paris"}',
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": "Error: rain",
    }
    assert body["messages"][4] == {"role": "user", "content": "And now?"}
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA
    assert body["stop"] == ["END"] and translated.stops == ["END"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["user"]) == (0.5, 0.9, 40, "u1")
    assert body["stream_options"] == {"include_usage": True}
    assert translated.dropped == ["thinking", "thinking history"]
    for key in ("context_management", "service_tier", "brand_new_field", "metadata", "system"):
        assert key not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_anthropic_tool_choice(choice: Any, expected: Any) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    raw = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    body = am.to_chat({**raw, "tools": tools, "tool_choice": choice}).body
    assert validate_chat(body)["tool_choice"] == expected


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"temperature": 1.5}, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.media_type",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"name": "t"}]}, "tools.0.input_schema"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"stop_sequences": "END"}, "stop_sequences"),
    ],
)
def test_anthropic_request_errors_name_the_field(change: dict[str, Any], param: str) -> None:
    raw = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidRequestError) as caught:
        am.to_chat(raw)
    assert caught.value.param == param
    assert param in caught.value.message


def test_anthropic_tool_result_images_follow_as_a_user_turn() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    raw = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "Take a screenshot."},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "done"}, image],
                    }
                ],
            },
        ],
    }
    body = validate_chat(am.to_chat(raw).body)
    tool, user = body["messages"][2:]
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "done\n[image 1 below]"}
    assert user["role"] == "user"
    assert user["content"][0]["image_url"]["url"] == f"data:image/png;base64,{PNG}"


def test_anthropic_count_tokens_needs_no_max_tokens() -> None:
    body = am.to_chat(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}, count_only=True
    )
    assert "max_tokens" not in body.body


# Anthropic: replies.


@pytest.mark.parametrize(
    ("finish", "message", "choice", "stops", "reason", "sequence"),
    [
        ("stop", {"role": "assistant", "content": "hi"}, {}, [], "end_turn", None),
        ("length", {"role": "assistant", "content": "hi"}, {}, [], "max_tokens", None),
        (
            "stop",
            {"role": "assistant", "content": "hi"},
            {"stop_reason": "END"},
            ["END"],
            "stop_sequence",
            "END",
        ),
        (
            "stop",
            {"role": "assistant", "content": "hi"},
            {"stop_reason": 1},
            ["END"],
            "end_turn",
            None,
        ),
        ("content_filter", {"role": "assistant", "content": ""}, {}, [], "refusal", None),
        (
            "tool_calls",
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"a":1}'},
                    }
                ],
            },
            {},
            [],
            "tool_use",
            None,
        ),
        # vLLM: text and calls under "stop" (Bifrost #3638): still tool_use
        (
            "stop",
            {
                "role": "assistant",
                "content": "x",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "w", "arguments": "{}"},
                    }
                ],
            },
            {},
            [],
            "tool_use",
            None,
        ),
    ],
)
def test_anthropic_reply(
    finish: str, message: Any, choice: Any, stops: list[str], reason: str, sequence: Any
) -> None:
    out = am.from_chat(reply(message, finish, **choice), "claude", stops)
    check_anthropic_message(out)
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)
    assert out["model"] == "claude" and out["id"].startswith("msg_")
    assert out["usage"] == {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 5,
    }
    if reason == "tool_use":
        use = next(b for b in out["content"] if b["type"] == "tool_use")
        assert use["id"] == "call_1" and isinstance(use["input"], dict)


def test_anthropic_reply_thinking_first_and_cached_usage() -> None:
    message = {"role": "assistant", "content": "yes", "reasoning_content": "let me think"}
    body = reply(message, "stop")
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 10}
    out = am.from_chat(body, "m")
    assert [b["type"] for b in out["content"]] == ["thinking", "text"]
    assert out["usage"]["input_tokens"] == 2 and out["usage"]["cache_read_input_tokens"] == 10


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequestError("bad", param="x"), 400, "invalid_request_error"),
        (RequestTooLargeError("big"), 413, "invalid_request_error"),
        (ModelNotFoundError("no model"), 404, "not_found_error"),
        (GatewayError("nope", status=401), 401, "authentication_error"),
        (BackendUnavailableError("down"), 502, "api_error"),
        (BackendTimeoutError("slow"), 504, "timeout_error"),
        (GatewayError("limited", status=429), 429, "rate_limit_error"),
        (NoBackendAvailableError("full", retry_after=2), 529, "overloaded_error"),
    ],
)
def test_anthropic_errors(exc: GatewayError, status: int, kind: str) -> None:
    got, body = ast.error_body(exc)
    assert got == status
    check_anthropic_error(body, kind)
    assert body["error"]["message"] == exc.message


# Anthropic: streams.


def run_anthropic(chunks: list[Any], stops: list[str] | None = None) -> Any:
    stream = ast.MessageStream("claude", stops)
    raw = b"".join(stream.feed(c) for c in chunks) + stream.close()
    return check_anthropic_stream(sse_events(raw)), sse_events(raw)


def test_anthropic_stream_text() -> None:
    message, events = run_anthropic(TEXT_STREAM)
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 7 and message["usage"]["output_tokens"] == 3


def test_anthropic_stream_tools() -> None:
    message, events = run_anthropic(TOOL_STREAM)
    assert [b["type"] for b in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1]["input"] == {"city": "Paris"}
    assert message["content"][1]["id"] == "call_1" and message["content"][2]["name"] == "time"
    assert message["stop_reason"] == "tool_use"
    # every input_json_delta of a block comes before its stop (agentgateway #2147)
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1, 2]


def test_anthropic_stream_thinking_then_text_and_stop_sequence() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Let me"}),
        chunk({"reasoning_content": " think."}),
        chunk({"content": "Answer"}),
        {
            **chunk({}, "stop"),
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}],
        },
        usage_chunk(),
    ]
    message, events = run_anthropic(chunks, ["END"])
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["content"][0]["thinking"] == "Let me think."
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert any(d.get("delta", {}).get("type") == "signature_delta" for _, d in events)


def test_anthropic_stream_length_and_empty() -> None:
    message, _ = run_anthropic([chunk({"content": "a"}), chunk({}, "length")])
    assert message["stop_reason"] == "max_tokens"
    message, events = run_anthropic([])
    assert message["content"] == [] and [n for n, _ in events][-1] == "message_stop"


def test_anthropic_stream_error_after_start() -> None:
    stream = ast.MessageStream("claude")
    raw = stream.feed(TEXT_STREAM[1]) + stream.fail(BackendUnavailableError("backend 'x' died"))
    events = sse_events(raw)
    check_anthropic_stream(events)
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"


def test_anthropic_stream_interleaved_calls_are_a_protocol_error() -> None:
    stream = ast.MessageStream("claude")
    stream.feed(TOOL_STREAM[1])
    stream.feed(TOOL_STREAM[4])
    with pytest.raises(BackendProtocolError):
        stream.feed(TOOL_STREAM[2])


# Ollama: requests.


def test_ollama_chat_request() -> None:
    raw = {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": [PNG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "rain", "tool_name": "weather"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}
        ],
        "options": {
            "num_predict": 20,
            "temperature": 0.2,
            "top_k": 30,
            "seed": 4,
            "stop": ["x"],
            "num_ctx": 4096,
            "mirostat": 1,
        },
        "format": {"type": "object"},
        "keep_alive": "10m",
        "think": False,
    }
    body = validate_chat(ol.chat_to_internal(raw))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][1]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    call = body["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["messages"][3]["tool_call_id"] == call["id"]
    assert (body["max_tokens"], body["temperature"], body["top_k"], body["seed"]) == (
        20,
        0.2,
        30,
        4,
    )
    assert body["stop"] == ["x"] and body["num_ctx"] == 4096 and body["options"] == {"mirostat": 1}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert (body["keep_alive"], body["think"]) == ("10m", False)
    assert (
        ol.chat_to_internal({"model": "m", "messages": [], "stream": False}).get("stream") is None
    )
    assert ol.chat_to_internal({"model": "m", "messages": [], "format": "json"})[
        "response_format"
    ] == {"type": "json_object"}


def test_ollama_generate_requests() -> None:
    kind, body = ol.generate_to_internal(
        {"model": "m", "prompt": "hi", "system": "S", "images": [PNG]}
    )
    assert kind == "chat" and body["messages"][0] == {"role": "system", "content": "S"}
    validate_chat(body)
    kind, body = ol.generate_to_internal({"model": "m", "prompt": "<raw>", "raw": True})
    assert kind == "completion" and validate_completion(body)["prompt"] == "<raw>"
    kind, body = ol.generate_to_internal({"model": "m", "prompt": "def f(", "suffix": "return 1"})
    assert kind == "completion" and body["suffix"] == "return 1"
    for bad, param in (
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2]}, "context"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            ol.generate_to_internal({"model": "m", "prompt": "x", **bad})
        assert caught.value.param == param


def test_ollama_embed_requests() -> None:
    assert validate_embedding(ol.embed_to_internal({"model": "m", "input": ["a", "b"]}))[
        "input"
    ] == ["a", "b"]
    assert ol.embed_to_internal({"model": "m", "prompt": "a"}, legacy=True)["input"] == "a"
    with pytest.raises(InvalidRequestError):
        ol.embed_to_internal({"model": "m", "input": 3})
    with pytest.raises(InvalidRequestError) as caught:
        ol.embed_to_internal({"input": "a"})
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "x", "images": ["data:image/png;base64,AA"]}
                ],
            },
            "messages[0].images[0]",
        ),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [], "options": 3}, "options"),
        ({"model": "m", "messages": [], "format": "yaml"}, "format"),
        ({"model": "m", "messages": [], "stream": "yes"}, "stream"),
    ],
)
def test_ollama_request_errors(raw: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ol.chat_to_internal(raw)
    assert caught.value.param == param


# Ollama: replies and streams.


def test_ollama_replies() -> None:
    timing = ol.Timing(0, None, 2_000_000_000)
    message = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "hm",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}}
        ],
    }
    out = ol.chat_reply(reply(message, "tool_calls"), "m", timing)
    check_ollama(out, "ChatDone")
    assert out["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert out["message"]["thinking"] == "hm" and out["done_reason"] == "stop"
    assert (out["prompt_eval_count"], out["eval_count"], out["total_duration"]) == (
        12,
        5,
        2_000_000_000,
    )
    body = reply({"role": "assistant", "content": "x"}, "length")
    body["timings"] = {"prompt_ms": 1.5, "predicted_ms": 20.0}  # llama.cpp's own
    out = ol.generate_reply(body, "m", timing)
    check_ollama(out, "GenerateDone")
    assert out["done_reason"] == "length" and out["response"] == "x"
    assert (out["prompt_eval_duration"], out["eval_duration"]) == (1_500_000, 20_000_000)
    embed = {"data": [{"embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    check_ollama(ol.embed_reply(embed, "m", timing), "Embed")
    check_ollama(ol.embed_reply(embed, "m", timing, legacy=True), "Embeddings")
    load = ol.load_reply("m", "chat", unload=True)  # as docs/api.md "Load a model" shows it
    assert load["done"] is True and load["done_reason"] == "unload" and "total_duration" not in load


def lines(raw: bytes) -> list[Any]:
    return [orjson.loads(line) for line in raw.splitlines() if line]


@pytest.mark.parametrize("mode", ["chat", "generate"])
def test_ollama_stream_text(mode: str) -> None:
    stream = ol.ChatStream("m", ol.Timing(0), mode)  # type: ignore[arg-type]
    raw = b"".join(stream.feed(c) for c in TEXT_STREAM) + stream.close()
    objs = lines(raw)
    last = check_ollama_lines(objs, mode)
    key = "message" if mode == "chat" else "response"
    text = "".join(o[key]["content"] if mode == "chat" else o[key] for o in objs)
    assert text == "Hello there"
    assert (last["prompt_eval_count"], last["eval_count"], last["done_reason"]) == (7, 3, "stop")
    assert last["total_duration"] >= last["eval_duration"] >= 0


def test_ollama_stream_tool_calls_arrive_whole() -> None:
    stream = ol.ChatStream("m", ol.Timing(0))
    objs = lines(b"".join(stream.feed(c) for c in TOOL_STREAM) + stream.close())
    check_ollama_lines(objs, "chat")
    with_calls = [o for o in objs if o["message"].get("tool_calls")]
    assert len(with_calls) == 1
    calls = with_calls[0]["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {}]
    assert [c["function"]["name"] for c in calls] == ["weather", "time"]


def test_ollama_stream_error_line() -> None:
    stream = ol.ChatStream("m", ol.Timing(0))
    objs = lines(stream.feed(TEXT_STREAM[1]) + stream.fail(BackendUnavailableError("died")))
    assert check_ollama_lines(objs, "chat") == {"error": "died"}


# Responses.


def test_responses_request_items() -> None:
    raw = {
        "model": "gpt",
        "instructions": "Be brief.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Calling."}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "noon"}],
            },
        ],
        "tools": [
            {"type": "function", "name": "weather", "parameters": WEATHER_SCHEMA, "strict": True}
        ],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        "max_output_tokens": 50,
        "temperature": 0.3,
        "reasoning": {"effort": "low"},
        "store": False,
        "stream": True,
    }
    translated = rs.to_chat(raw)
    body = validate_chat(translated.body)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in body["messages"][2]["tool_calls"]] == ["c1", "c2"]
    assert body["messages"][2]["content"] == "Calling."
    assert body["messages"][4]["content"] == "noon"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["response_format"]["json_schema"]["name"] == "out"
    assert body["max_tokens"] == 50 and body["stream_options"] == {"include_usage": True}
    assert translated.shell["reasoning"] == {"effort": "low"} and translated.shell["store"] is False


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"input": []}, "input"),
        ({"background": True}, "background"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_responses_request_errors(change: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rs.to_chat({"model": "m", "input": "hi", **change})
    assert caught.value.param == param


def test_responses_reply_and_history() -> None:
    shell = rs.to_chat({"model": "gpt", "input": "hi"}).shell
    message = {
        "role": "assistant",
        "content": "Sure.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}}
        ],
    }
    out = rs.from_chat(reply(message, "tool_calls"), shell)
    assert_valid(out, "Response")
    assert [i["type"] for i in out["output"]] == ["message", "function_call"]
    assert out["status"] == "completed" and out["usage"]["total_tokens"] == 17
    assert rs.output_messages(out)[0]["tool_calls"][0]["id"] == "call_1"
    cut = rs.from_chat(reply({"role": "assistant", "content": "x"}, "length"), shell)
    assert_valid(cut, "Response")
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {
        "reason": "max_output_tokens"
    }


def run_responses(chunks: list[Any]) -> tuple[Any, list[Any]]:
    stream = rs.ResponseStream(rs.to_chat({"model": "gpt", "input": "hi"}).shell)
    raw = b"".join(stream.feed(c) for c in chunks) + stream.close()
    events = sse_events(raw)
    return check_responses_stream(events), events


def test_responses_stream_text() -> None:
    final, events = run_responses(TEXT_STREAM)
    assert [d["type"] for _, d in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final["output"][0]["content"][0]["text"] == "Hello there"
    assert final["usage"]["input_tokens"] == 7


def test_responses_stream_tools() -> None:
    final, _events = run_responses(TOOL_STREAM)
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][1]["arguments"] == '{"city": "Paris"}'
    assert final["output"][1]["call_id"] == "call_1" and final["output"][2]["name"] == "time"


def test_responses_reasoning_comes_back_as_a_reasoning_item() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Let me"}),
        chunk({"reasoning_content": " think."}),
        chunk({"content": "Yes."}),
        chunk({}, "stop"),
        usage_chunk(),
    ]
    final, events = run_responses(chunks)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert "response.reasoning_text.done" in [d["type"] for _, d in events]
    shell = rs.to_chat({"model": "gpt", "input": "hi"}).shell
    message = {"role": "assistant", "content": "Yes.", "reasoning_content": "Let me think."}
    out = rs.from_chat(reply(message, "stop"), shell)
    assert_valid(out, "Response")
    assert [i["type"] for i in out["output"]] == ["reasoning", "message"]


def test_responses_stream_incomplete_and_failed() -> None:
    final, _ = run_responses([chunk({"content": "a"}), chunk({}, "length")])
    assert final["status"] == "incomplete"
    stream = rs.ResponseStream(rs.to_chat({"model": "gpt", "input": "hi"}).shell)
    raw = stream.feed(TEXT_STREAM[1]) + stream.fail(BackendTimeoutError("too slow"))
    events = sse_events(raw)
    assert events[-1][1]["type"] == "response.failed"
    assert events[-1][1]["response"]["error"] == {"code": "server_error", "message": "too slow"}
    assert_valid(events[-1][1], "ResponseStreamEvent")
