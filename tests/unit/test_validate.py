"""Request validation: every field's accepted and rejected values, and the param it names."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turnout.errors import InvalidRequestError
from turnout.wire.validate import validate_chat, validate_completion, validate_embedding

USER = {"role": "user", "content": "Hi"}
PNG = (  # a 1x1 PNG, base64
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def rejected(validate: Any, body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        validate(body)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    body_json = err.to_openai()["error"]
    assert body_json["param"] == err.param
    if err.param:
        assert repr(err.param)[1:-1] in err.message
    return err


# --- the body and the model, for every endpoint -------------------------------------------


@pytest.mark.parametrize("validate", [validate_chat, validate_completion, validate_embedding])
@pytest.mark.parametrize("body", [[], "text", None, 3, [{"model": "m"}]])
def test_body_must_be_an_object(validate: Any, body: Any) -> None:
    err = rejected(validate, body)
    assert err.param is None
    assert err.code == "invalid_request_body"


@pytest.mark.parametrize("validate", [validate_chat, validate_completion, validate_embedding])
def test_model_is_required(validate: Any) -> None:
    err = rejected(validate, {"messages": [USER], "prompt": "p", "input": "i"})
    assert (err.param, err.code) == ("model", "missing_required_parameter")
    assert err.message == "Missing required parameter: 'model'."


@pytest.mark.parametrize("validate", [validate_chat, validate_completion, validate_embedding])
@pytest.mark.parametrize("model", ["", 3, ["m"], True])
def test_model_must_be_a_non_empty_string(validate: Any, model: Any) -> None:
    err = rejected(validate, {"model": model, "messages": [USER], "prompt": "p", "input": "i"})
    assert (err.param, err.code) == ("model", "invalid_value")


# --- sampling parameters ---------------------------------------------------------------------

ACCEPTED = [
    ("temperature", 0),
    ("temperature", 2),
    ("temperature", 0.7),
    ("top_p", 0),
    ("top_p", 1),
    ("n", 1),
    ("n", 128),
    ("max_tokens", 1),
    ("max_tokens", 100000),
    ("max_completion_tokens", 16),
    ("presence_penalty", -2),
    ("presence_penalty", 2.0),
    ("frequency_penalty", -1.5),
    ("seed", -(2**63)),
    ("seed", 2**40),
    ("stop", "\n"),
    ("stop", ["a", "b", "c", "d"]),
    ("stop", []),
    ("stream", True),
    ("stream", False),
    ("user", "u-1"),
    ("temperature", None),
    ("stop", None),
]

REJECTED = [
    ("temperature", -0.1),
    ("temperature", 2.01),
    ("temperature", "0.5"),
    ("temperature", True),
    ("top_p", 1.5),
    ("top_p", -0.01),
    ("n", 0),
    ("n", 129),
    ("n", 1.0),
    ("n", True),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 1.5),
    ("max_tokens", "16"),
    ("max_completion_tokens", 0),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3),
    ("seed", -(2**63) - 1),
    ("seed", 1.5),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", [1]),
    ("stop", 3),
    ("stream", "yes"),
    ("stream", 1),
    ("user", 7),
]


@pytest.mark.parametrize("validate", [validate_chat, validate_completion])
@pytest.mark.parametrize(("field", "value"), ACCEPTED)
def test_sampling_accepted(validate: Any, field: str, value: Any) -> None:
    body = {"model": "m", "messages": [USER], "prompt": "p", field: value}
    assert validate(body) is body
    assert body[field] == value


@pytest.mark.parametrize("validate", [validate_chat, validate_completion, validate_embedding])
@pytest.mark.parametrize(("field", "value"), REJECTED)
def test_sampling_rejected(validate: Any, field: str, value: Any) -> None:
    body = {"model": "m", "messages": [USER], "prompt": "p", "input": "i", field: value}
    err = rejected(validate, body)
    assert err.param == field
    assert err.code == "invalid_value"
    assert err.message.startswith(f"Invalid value for '{field}': ")


def test_range_message_names_bounds_and_value() -> None:
    err = rejected(validate_chat, chat(temperature=3))
    assert err.message == "Invalid value for 'temperature': must be between 0 and 2, got 3"
    err = rejected(validate_chat, chat(n=0))
    assert err.message == "Invalid value for 'n': must be between 1 and 128, got 0"


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("logprobs", True, True),
        ("logprobs", 1, False),
        ("top_logprobs", 0, True),
        ("top_logprobs", 20, True),
        ("top_logprobs", 21, False),
        ("top_logprobs", -1, False),
        ("parallel_tool_calls", False, True),
        ("parallel_tool_calls", "false", False),
    ],
)
def test_chat_only_fields(field: str, value: Any, ok: bool) -> None:
    if ok:
        validate_chat(chat(**{field: value}))
    else:
        assert rejected(validate_chat, chat(**{field: value})).param == field


# --- stream_options ---------------------------------------------------------------------------


@pytest.mark.parametrize("validate", [validate_chat, validate_completion])
def test_stream_options_with_stream(validate: Any) -> None:
    body = {"model": "m", "messages": [USER], "prompt": "p", "stream": True}
    for options in ({"include_usage": True}, {"include_usage": False}, {}, {"vendor": 1}):
        validate({**body, "stream_options": options})


@pytest.mark.parametrize("validate", [validate_chat, validate_completion])
@pytest.mark.parametrize("stream", [False, None])
def test_stream_options_without_stream(validate: Any, stream: Any) -> None:
    body = {"model": "m", "messages": [USER], "prompt": "p", "stream_options": {}}
    if stream is not None:
        body["stream"] = stream
    err = rejected(validate, body)
    assert err.param == "stream_options"
    assert "only allowed when 'stream' is enabled" in err.message


def test_stream_options_null_without_stream_is_fine() -> None:
    validate_chat(chat(stream_options=None))


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ([], "stream_options"),
        ("usage", "stream_options"),
        ({"include_usage": "yes"}, "stream_options.include_usage"),
        ({"include_usage": 1}, "stream_options.include_usage"),
    ],
)
def test_stream_options_shape(options: Any, param: str) -> None:
    assert rejected(validate_chat, chat(stream=True, stream_options=options)).param == param


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [USER],
        [{"role": "developer", "content": "Be brief."}, USER],
        [{"role": "system", "content": ""}, USER],
        [USER, {"role": "assistant", "content": "Hello"}],
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        [USER, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}],
        [{"role": "function", "name": "f", "content": "x"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": "/9j/4AAQSkZJRgABAQ"}},
                    {"type": "image_url", "image_url": {"url": "file:///media/cat.jpg"}},
                    {"type": "image_url", "image_url": "http://x/y.png"},
                    {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}},
                    {"type": "input_video", "input_video": {"url": "http://x/v.mp4"}},
                    {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}},
                    {"type": "file", "file": {"file_id": "f1"}},
                ],
            }
        ],
        [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}],
    ],
)
def test_messages_accepted(messages: list[Any]) -> None:
    body = chat(messages=messages)
    before = copy.deepcopy(body)
    assert validate_chat(body) is body
    assert body == before


IMAGE = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ("hi", "messages"),
        ({"role": "user"}, "messages"),
        ([], "messages"),
        ([USER, "hi"], "messages[1]"),
        ([USER, {"content": "x"}], "messages[1].role"),
        ([USER, {"role": "robot", "content": "x"}], "messages[1].role"),
        ([USER, {"role": "user"}], "messages[1].content"),
        ([USER, {"role": "user", "content": None}], "messages[1].content"),
        ([USER, {"role": "assistant", "content": None}], "messages[1].content"),
        ([USER, {"role": "user", "content": 3}], "messages[1].content"),
        ([USER, {"role": "user", "content": {"text": "x"}}], "messages[1].content"),
        ([USER, {"role": "user", "content": []}], "messages[1].content"),
        ([USER, {"role": "user", "content": ["hi"]}], "messages[1].content[0].type"),
        ([USER, {"role": "user", "content": [{"text": "x"}]}], "messages[1].content[0].type"),
        (
            [USER, {"role": "user", "content": [{"type": "audio", "audio": {}}]}],
            "messages[1].content[0].type",
        ),
        ([USER, {"role": "user", "content": [{"type": "text"}]}], "messages[1].content[0].text"),
        (
            [USER, {"role": "user", "content": [{"type": "text", "text": 1}]}],
            "messages[1].content[0].text",
        ),
        (
            [USER, {"role": "user", "content": [IMAGE, {"type": "image_url"}]}],
            "messages[1].content[1].image_url.url",
        ),
        (
            [USER, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[1].content[0].image_url.url",
        ),
        (
            [
                USER,
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]},
            ],
            "messages[1].content[0].image_url.url",
        ),
        (
            [
                USER,
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                },
            ],
            "messages[1].content[0].image_url.url",
        ),
        (
            [
                USER,
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "cat.png"}}],
                },
            ],
            "messages[1].content[0].image_url.url",
        ),
        (
            [USER, {"role": "user", "content": [{"type": "image_url", "image_url": 5}]}],
            "messages[1].content[0].image_url.url",
        ),
        ([{"role": "tool", "content": "42"}], "messages[0].tool_call_id"),
        ([{"role": "tool", "content": "42", "tool_call_id": 1}], "messages[0].tool_call_id"),
        (
            [{"role": "user", "content": "x", "tool_calls": []}],
            "messages[0].tool_calls",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": {"id": "x"}}],
            "messages[0].tool_calls",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
            "messages[0].tool_calls[0].function.name",
        ),
        (
            [{"role": "assistant", "tool_calls": ["call"]}],
            "messages[0].tool_calls[0].function.name",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_messages_rejected(messages: Any, param: str) -> None:
    body = chat()
    if messages is None:
        del body["messages"]
    else:
        body["messages"] = messages
    assert rejected(validate_chat, body).param == param


def test_missing_messages_code() -> None:
    err = rejected(validate_chat, {"model": "m"})
    assert (err.param, err.code) == ("messages", "missing_required_parameter")


def test_role_message_lists_allowed_roles() -> None:
    err = rejected(validate_chat, chat(messages=[{"role": "bot", "content": "x"}]))
    assert "assistant, developer, function, system, tool, user" in err.message
    assert "'bot'" in err.message


# --- tools, tool_choice, response_format ------------------------------------------------------


@pytest.mark.parametrize(
    "tools",
    [
        [TOOL],
        [{"function": {"name": "no_type_defaults_to_function"}}],
        [{"type": "function", "function": {"name": "a" * 64, "description": "d"}}],
        [{"type": "custom", "custom": {"name": "grep", "format": {"type": "text"}}}],
        [],
    ],
)
def test_tools_accepted(tools: list[Any]) -> None:
    validate_chat(chat(tools=tools))


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        ("get_weather", "tools"),
        (["get_weather"], "tools[0].type"),
        ([TOOL, {"type": "retrieval"}], "tools[1].type"),
        ([{"type": "function"}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": 3}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "get weather"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "a" * 65}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
            "tools[0].function.parameters",
        ),
        ([{"type": "custom", "name": "grep"}], "tools[0].custom.name"),
        ([{"type": "custom", "custom": {"name": "no spaces"}}], "tools[0].custom.name"),
    ],
)
def test_tools_rejected(tools: Any, param: str) -> None:
    assert rejected(validate_chat, chat(tools=tools)).param == param


@pytest.mark.parametrize(
    ("choice", "tools"),
    [
        ("none", None),
        ("auto", None),
        ("auto", [TOOL]),
        ("required", [TOOL]),
        ({"type": "function", "function": {"name": "get_weather"}}, [TOOL]),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, [TOOL]),
        ({"type": "custom", "custom": {"name": "grep"}}, [TOOL]),
    ],
)
def test_tool_choice_accepted(choice: Any, tools: Any) -> None:
    validate_chat(chat(tool_choice=choice, tools=tools))


@pytest.mark.parametrize(
    ("choice", "tools", "param"),
    [
        ("always", [TOOL], "tool_choice"),
        ("required", None, "tool_choice"),
        ("required", [], "tool_choice"),
        (3, [TOOL], "tool_choice"),
        ({"type": "function", "function": {"name": "get_weather"}}, None, "tool_choice"),
        ({"type": "function"}, [TOOL], "tool_choice.function.name"),
        ({"type": "function", "function": {"name": 1}}, [TOOL], "tool_choice.function.name"),
    ],
)
def test_tool_choice_rejected(choice: Any, tools: Any, param: str) -> None:
    assert rejected(validate_chat, chat(tool_choice=choice, tools=tools)).param == param


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer"}},
        {
            "type": "json_schema",
            "json_schema": {"name": "a-b_1", "schema": {"type": "object"}, "strict": True},
        },
    ],
)
def test_response_format_accepted(fmt: dict[str, Any]) -> None:
    validate_chat(chat(response_format=fmt))


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ("json", "response_format"),
        ({}, "response_format.type"),
        ({"type": "json"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {}}, "response_format.json_schema.name"),
        (
            {"type": "json_schema", "json_schema": {"name": "my answer"}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": "object"}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_response_format_rejected(fmt: Any, param: str) -> None:
    assert rejected(validate_chat, chat(response_format=fmt)).param == param


# --- vendor fields pass through ------------------------------------------------------------------


def test_unknown_vendor_fields_pass_through_untouched() -> None:
    vendor = {
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "mirostat": 2,
        "grammar": "root ::= 'x'",
        "options": {"num_ctx": 8192},
        "keep_alive": "5m",
        "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_effort": "low",
        "logit_bias": {"50256": -100},
        "metadata": {"k": "v"},
    }
    for validate, extra in (
        (validate_chat, {"messages": [USER]}),
        (validate_completion, {"prompt": "p"}),
        (validate_embedding, {"input": "i"}),
    ):
        body = {"model": "m", **extra, **copy.deepcopy(vendor)}
        result = validate(body)
        assert result is body
        assert {k: result[k] for k in vendor} == vendor


# --- completions ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "Once", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_accepted(prompt: Any) -> None:
    validate_completion({"model": "m", "prompt": prompt})


@pytest.mark.parametrize("prompt", [[], 3, {"text": "x"}, ["a", 1], [[1, "a"]], [True], None])
def test_completion_prompt_rejected(prompt: Any) -> None:
    body: dict[str, Any] = {"model": "m"}
    if prompt is not None:
        body["prompt"] = prompt
    err = rejected(validate_completion, body)
    assert err.param == "prompt"


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("echo", True, True),
        ("echo", "true", False),
        ("suffix", "end", True),
        ("suffix", 1, False),
        ("logprobs", 0, True),
        ("logprobs", 5, True),
        ("logprobs", 6, False),
        ("logprobs", True, False),
    ],
)
def test_completion_only_fields(field: str, value: Any, ok: bool) -> None:
    body = {"model": "m", "prompt": "p", field: value}
    if ok:
        validate_completion(body)
    else:
        assert rejected(validate_completion, body).param == field


def test_chat_fields_are_not_checked_on_completions() -> None:
    # logprobs is a boolean for chat but an integer for completions
    validate_completion({"model": "m", "prompt": "p", "logprobs": 3})
    rejected(validate_chat, chat(logprobs=3))


# --- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", ["a", "b"], [1, 2], [[1, 2], [3]]])
def test_embedding_input_accepted(value: Any) -> None:
    validate_embedding({"model": "m", "input": value})


@pytest.mark.parametrize("value", [[], 3, ["a", 1], [[1, "x"]], {"text": "a"}, [None]])
def test_embedding_input_rejected(value: Any) -> None:
    err = rejected(validate_embedding, {"model": "m", "input": value})
    assert err.param == "input"


def test_embedding_input_required() -> None:
    err = rejected(validate_embedding, {"model": "m"})
    assert (err.param, err.code) == ("input", "missing_required_parameter")


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("encoding_format", "float", True),
        ("encoding_format", "base64", True),
        ("encoding_format", "int8", False),
        ("dimensions", 256, True),
        ("dimensions", 0, False),
        ("dimensions", "256", False),
        ("user", "u", True),
    ],
)
def test_embedding_fields(field: str, value: Any, ok: bool) -> None:
    body = {"model": "m", "input": "x", field: value}
    if ok:
        validate_embedding(body)
    else:
        assert rejected(validate_embedding, body).param == field
