"""Validation of OpenAI-shaped requests, field by field, naming the field at fault.

Hand-written rather than pydantic: it runs on every request, it checks only what a backend would
choke on, and it leaves unknown (vendor) fields alone so they reach the backend untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import InvalidRequestError

__all__ = [
    "MAX_SCHEMA_DEPTH",
    "too_deep",
    "validate_chat",
    "validate_completion",
    "validate_embedding",
]

JSON = dict[str, Any]
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: OpenAI's part types, plus the audio and video parts llama.cpp and vLLM accept
_PART_TYPES = frozenset(
    {"text", "image_url", "input_audio", "file", "refusal", "input_video", "video_url", "audio_url"}
)
#: what an image URL may be: a URL, a data: URI, a file:// URL (llama.cpp's --media-path), or
#: raw base64 image data (OpenAI's schema and llama.cpp accept it): PNG, JPEG, GIF or WebP
_IMAGE_URL = ("http://", "https://", "data:", "file://", "iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")


def _fail(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_number(v):
            raise _fail(param, f"expected a number, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise _fail(param, f"must be between {lo:g} and {hi:g}, got {v}")

    return check


def _integer(lo: int, hi: int | None = None) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_int(v):
            raise _fail(param, f"expected an integer, got {type(v).__name__}")
        if v < lo or (hi is not None and v > hi):
            bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise _fail(param, f"must be {bound}, got {v}")

    return check


def _boolean(param: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise _fail(param, f"expected a boolean, got {type(v).__name__}")


def _string(param: str, v: Any) -> None:
    if not isinstance(v, str):
        raise _fail(param, f"expected a string, got {type(v).__name__}")


def _stop(param: str, v: Any) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _fail(param, "expected a string or an array of strings")
    if len(v) > 4:
        raise _fail(param, f"at most 4 stop sequences, got {len(v)}")


_SAMPLING: dict[str, Callable[[str, Any], None]] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "n": _integer(1, 128),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "seed": _integer(-(2**63)),
    "stop": _stop,
    "stream": _boolean,
    "user": _string,
}

_CHAT_ONLY: dict[str, Callable[[str, Any], None]] = {
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "parallel_tool_calls": _boolean,
}


def _common(raw: Any, extra: dict[str, Callable[[str, Any], None]]) -> JSON:
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            "The request body must be a JSON object.", code="invalid_request_body"
        )
    body: JSON = raw
    model = body.get("model")
    if model is None:
        raise InvalidRequestError(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _fail("model", "expected a non-empty string")
    for checks in (_SAMPLING, extra):
        for key, check in checks.items():
            value = body.get(key)
            if value is not None:
                check(key, value)
    options = body.get("stream_options")
    if options is not None:
        if not body.get("stream"):
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        if not isinstance(options, dict):
            raise _fail("stream_options", "expected an object")
        if options.get("include_usage") is not None:
            _boolean("stream_options.include_usage", options["include_usage"])
    return body


def _required(body: JSON, key: str) -> Any:
    value = body.get(key)
    if value is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    return value


def validate_chat(raw: Any) -> JSON:
    """Check a chat completion request; return it unchanged or raise naming the field."""
    body = _common(raw, _CHAT_ONLY)
    messages = _required(body, "messages")
    if not isinstance(messages, list):
        raise _fail("messages", f"expected an array, got {type(messages).__name__}")
    if not messages:
        raise _fail("messages", "must contain at least one message")
    for i, message in enumerate(messages):
        _message(f"messages[{i}]", message)
    if body.get("tools") is not None:
        _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], body.get("tools") or [])
    if body.get("response_format") is not None:
        _response_format(body["response_format"])
    return body


def _message(where: str, message: Any) -> None:
    if not isinstance(message, dict):
        raise _fail(where, "each message must be an object")
    role = message.get("role")
    if role is None:
        raise _fail(f"{where}.role", "required")
    if not isinstance(role, str) or role not in _ROLES:
        raise _fail(f"{where}.role", f"must be one of {', '.join(sorted(_ROLES))}, got {role!r}")
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            raise _fail(f"{where}.tool_calls", "only assistant messages carry tool calls")
        _tool_calls(f"{where}.tool_calls", tool_calls)
    if content is None and tool_calls is None and message.get("function_call") is None:
        raise _fail(f"{where}.content", "required")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _fail(f"{where}.tool_call_id", "required for role 'tool', a string")
    if content is not None:
        _content(f"{where}.content", content)


def _content(where: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _fail(where, "expected a string or an array of content parts")
    if not content:
        raise _fail(where, "must contain at least one content part")
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in _PART_TYPES:
            raise _fail(f"{at}.type", f"must be one of {', '.join(sorted(_PART_TYPES))}")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _fail(f"{at}.text", "required, a string")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _fail(f"{at}.image_url.url", "required, an http(s) URL or a data: URI")
            if not url.startswith(_IMAGE_URL):
                raise _fail(
                    f"{at}.image_url.url", "must be an http(s) URL, a data: URI or base64 data"
                )


def _tool_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _fail(where, "expected an array")
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _fail(f"{where}[{k}].function.name", "required, a string")
        if not isinstance(fn.get("arguments"), str):
            raise _fail(f"{where}[{k}].function.arguments", "required, a JSON-encoded string")


def _tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _fail("tools", "expected an array")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") not in ("function", "custom"):
            raise _fail(f"tools[{i}].type", "must be 'function' or 'custom'")
        kind = tool.get("type", "function")  # a custom tool is {"type": "custom", "custom": {...}}
        fn = tool.get(kind)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _fail(f"tools[{i}].{kind}.name", "required, a string")
        if not _TOOL_NAME.match(fn["name"]):
            raise _fail(f"tools[{i}].{kind}.name", "letters, digits, '_' or '-', at most 64")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _fail(f"tools[{i}].function.parameters", "expected a JSON Schema object")
        if params:
            _shallow(f"tools[{i}].{kind}.parameters", params)


def _tool_choice(choice: Any, tools: list[Any]) -> None:
    has_tools = bool(tools)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _fail("tool_choice", "must be 'none', 'auto', 'required' or an object")
        if choice == "required" and not has_tools:
            raise _fail("tool_choice", "'required' needs 'tools'")
        return
    if not isinstance(choice, dict):
        raise _fail("tool_choice", "must be a string or an object")
    if not has_tools:
        raise _fail("tool_choice", "is only allowed when 'tools' are given")
    if choice.get("type") == "function":
        fn = choice.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _fail("tool_choice.function.name", "required, a string")
        names = {(t.get("function") or {}).get("name") for t in tools}
        if fn["name"] not in names:
            raise _fail("tool_choice.function.name", f"{fn['name']!r} is not one of 'tools'")


def _response_format(fmt: Any) -> None:
    if not isinstance(fmt, dict):
        raise _fail("response_format", "expected an object")
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise _fail("response_format.type", "must be 'text', 'json_object' or 'json_schema'")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _fail("response_format.json_schema", "required for type 'json_schema'")
        if not isinstance(spec.get("name"), str) or not _TOOL_NAME.match(spec["name"]):
            raise _fail("response_format.json_schema.name", "required, letters, digits, _ or -")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise _fail("response_format.json_schema.schema", "expected a JSON Schema object")
        if schema:
            _shallow("response_format.json_schema.schema", schema)


#: how deeply a JSON Schema (a tool's parameters, a response format) may nest: deeper ones are no
#: schema a model can follow, and they would exhaust the grammar compilers' recursion
MAX_SCHEMA_DEPTH = 64


def _shallow(param: str, value: Any) -> None:
    """Refuse a JSON value nested deeper than `MAX_SCHEMA_DEPTH`, naming where it goes too deep."""
    path = too_deep(value, MAX_SCHEMA_DEPTH, param)
    if path is not None:
        raise _fail(path, f"nested deeper than {MAX_SCHEMA_DEPTH} levels")


def too_deep(value: Any, limit: int, where: str = "") -> str | None:
    """The path of the first place where ``value`` nests deeper than ``limit`` arrays and
    objects, or None. Iterative: a hostile document cannot exhaust Python's stack."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            return path
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
    return None


#: how deeply orjson nests when it encodes (it parses 1,024 levels but writes at most 254)
_ENCODE_DEPTH = 254


def encode_body(payload: Any) -> bytes:
    """``payload`` as JSON bytes for a backend. A body the client nested deeper than JSON
    encoders go (it parsed, so it is under 1,024 levels) is the client's error: a 400 naming
    the place, found only when encoding fails so that ordinary requests pay nothing."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        where = too_deep(payload, _ENCODE_DEPTH - 1)
        if where is None:
            raise InvalidRequestError(
                f"The request body cannot be encoded as JSON: {exc}", code="invalid_value"
            ) from None
        raise _fail(where, f"nested deeper than {_ENCODE_DEPTH - 1} levels") from None


def validate_completion(raw: Any) -> JSON:
    """Check a (legacy) text completion request."""
    body = _common(raw, {"echo": _boolean, "suffix": _string, "logprobs": _integer(0, 5)})
    prompt = _required(body, "prompt")
    if isinstance(prompt, str):
        return body
    if not isinstance(prompt, list) or not prompt:
        raise _fail("prompt", "expected a string or a non-empty array")
    strings = all(isinstance(p, str) for p in prompt)
    tokens = all(_is_int(p) for p in prompt)
    token_lists = all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt)
    if not (strings or tokens or token_lists):
        raise _fail("prompt", "expected strings, tokens or arrays of tokens")
    return body


def validate_embedding(raw: Any) -> JSON:
    """Check an embeddings request."""
    body = _common(raw, {"dimensions": _integer(1)})
    value = _required(body, "input")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and bool(value)
        and (
            all(isinstance(v, str) for v in value)
            or all(_is_int(v) for v in value)
            or all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)
        )
    )
    if not ok:
        raise _fail("input", "expected a string, a non-empty array of strings, or token arrays")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _fail("encoding_format", "must be 'float' or 'base64'")
    return body
