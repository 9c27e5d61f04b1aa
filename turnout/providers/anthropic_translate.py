"""Anthropic's Messages API ⇄ OpenAI's chat completions, as pure functions: requests out
(`to_anthropic`), replies back (`from_anthropic`), stream events back (`AnthropicStream`).

What differs, and must never reach the client: there is no system role (system and developer
messages become the top-level ``system``), only ``user`` and ``assistant`` turns (a ``tool``
message becomes a ``tool_result`` block in a user turn, consecutive ones sharing one turn), tool
call arguments are objects (``tool_use.input``), images are ``base64``/``url`` sources,
``max_tokens`` is required (the provider's ``default_max_tokens``, else 4096, when the client
gives none), temperature stops at 1, and streams are named SSE events (``message_start``,
``content_block_*``, ``message_delta``, ``message_stop``, ``ping``, ``error``). OpenAI fields
with no counterpart that only tune sampling (``seed``, the penalties, ``logit_bias``) are not
sent; ``response_format`` JSON modes, ``n > 1`` and ``logprobs`` are refused with a 400.

Held against Anthropic's documented examples in tests/fixtures/anthropic/. Facts:
shared/reference/runtimes.md §2 (anthropics/anthropic-sdk-python @009b035, Anthropic's
"Messages streaming" docs).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..errors import (
    BackendError,
    BackendRateLimitedError,
    BackendUnavailableError,
    CapabilityError,
    clean_upstream_message,
)
from ..wire.openai import ChunkMaker, reply_body, reply_id, usage_dict
from .base import JSON
from .cloud import (
    call_id,
    inline_image,
    invalid,
    output_limit,
    refuse_unsupported,
    stop_list,
    system_text,
    tool_arguments,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStream",
    "from_anthropic",
    "stream_error",
    "to_anthropic",
]

DEFAULT_MAX_TOKENS = 4096
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def to_anthropic(
    body: JSON, model: str, *, stream: bool = False, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> JSON:
    """An OpenAI chat request as the body of Anthropic's ``POST /v1/messages``."""
    refuse_unsupported(body, "Anthropic")
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        raise CapabilityError(
            "Anthropic's Messages API has no JSON mode; leave 'response_format' unset or ask "
            "another backend.",
            param="response_format",
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature > 1:
        raise invalid("temperature", f"Anthropic takes 0 to 1, got {temperature}")
    system, messages = _messages(body["messages"])
    out: JSON = {"model": model, "max_tokens": output_limit(body) or default_max_tokens}
    if system:
        out["system"] = system
    out["messages"] = messages
    stops = stop_list(body)
    if stops:
        out["stop_sequences"] = stops
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools, choice = _tools(body)
    if tools:
        out["tools"] = tools
    if choice:
        out["tool_choice"] = choice
    if stream:
        out["stream"] = True
    return out


def _messages(messages: list[JSON]) -> tuple[str | None, list[JSON]]:
    system: list[str] = []
    out: list[JSON] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        content: Any
        if role in ("system", "developer"):
            system.append(system_text(message.get("content"), f"{where}.content"))
            continue
        if role == "tool":
            role, content = "user", [_tool_result(message, where)]
        elif role == "user":
            content = message.get("content")
            if not isinstance(content, str):
                content = _blocks(content, f"{where}.content")
        elif role == "assistant":
            content = _assistant_blocks(message, where)
            if not content:
                continue  # no text and no calls: a turn that says nothing
        else:
            raise CapabilityError(
                "The deprecated 'function' role cannot be sent to Anthropic; use tools.",
                param=f"{where}.role",
            )
        if out and out[-1]["role"] == role:
            # Anthropic joins consecutive turns of one role; joining them here keeps every tool
            # result of one assistant turn in the one user turn that must answer it.
            out[-1]["content"] = _as_blocks(out[-1]["content"]) + _as_blocks(content)
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system) or None, out


def _as_blocks(content: str | list[JSON]) -> list[JSON]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _blocks(content: Any, where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[JSON] = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            if part.get(kind):  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": part[kind]})
        elif kind == "image_url":
            blocks.append(_image(part["image_url"], f"{where}[{j}].image_url.url"))
        else:
            raise CapabilityError(
                f"Anthropic takes text and image parts; a '{kind}' part cannot be sent.",
                param=f"{where}[{j}]",
            )
    return blocks


def _image(image: Any, param: str) -> JSON:
    url = str(image.get("url") if isinstance(image, dict) else image)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = inline_image(url, param, "Anthropic")
    if media_type not in _MEDIA_TYPES:
        raise CapabilityError(
            f"Anthropic takes JPEG, PNG, GIF and WebP images, not {media_type}.", param=param
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: JSON, where: str) -> list[JSON]:
    blocks = _blocks(message.get("content"), f"{where}.content")
    for k, call in enumerate(message.get("tool_calls") or ()):
        fn, at = call["function"], f"{where}.tool_calls[{k}].function.arguments"
        args = tool_arguments(fn.get("arguments"), at, "Anthropic")
        use = {"type": "tool_use", "id": call.get("id") or call_id(), "name": fn["name"]}
        blocks.append({**use, "input": args})
    return blocks


def _tool_result(message: JSON, where: str) -> JSON:
    content = message.get("content")
    result: JSON = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if content:
        result["content"] = (
            content if isinstance(content, str) else _blocks(content, f"{where}.content")
        )
    return result


def _tools(body: JSON) -> tuple[list[JSON], JSON | None]:
    tools = body.get("tools") or []
    if not tools:
        return [], None  # a tool_choice of "auto" or "none" without tools says nothing
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function":
            raise CapabilityError("Anthropic takes function tools only.", param=f"tools[{i}].type")
        fn = tool["function"]
        schema = {"type": "object", **(fn.get("parameters") or {"properties": {}})}
        entry: JSON = {"name": fn["name"]}
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append({**entry, "input_schema": schema})
    choice = body.get("tool_choice")
    mapped: JSON | None
    if choice in (None, "auto"):
        mapped = {"type": "auto"} if body.get("parallel_tool_calls") is False else None
    elif choice in ("required", "none"):
        mapped = {"type": "any" if choice == "required" else "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise CapabilityError("Anthropic cannot take this 'tool_choice'.", param="tool_choice")
    if mapped and mapped["type"] != "none" and body.get("parallel_tool_calls") is False:
        mapped["disable_parallel_tool_use"] = True
    return out, mapped


def _finish(reason: Any) -> str:
    return _FINISH.get(str(reason), "stop")


def _usage(usage: JSON) -> JSON:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``; OpenAI includes them."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    return usage_dict(prompt, int(usage.get("output_tokens") or 0), cached=read, written=written)


def from_anthropic(obj: JSON, model: str) -> JSON:
    """Anthropic's ``message`` as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSON] = []
    for block in obj.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name", ""), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    text = "".join(texts)
    message: JSON = {"role": "assistant", "content": text or (None if calls else "")}
    message["refusal"] = None
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    choice = {"index": 0, "message": message, "logprobs": None}
    return reply_body(
        "chat",
        obj.get("id") or reply_id("chat"),
        int(time.time()),
        obj.get("model") or model,
        [{**choice, "finish_reason": _finish(obj.get("stop_reason"))}],
        _usage(obj.get("usage") or {}),
    )


class AnthropicStream:
    """Anthropic's stream events in, OpenAI chunks out, for one chat stream.

    ``message_start`` only records the id, model and input usage: nothing is sent until the first
    content, so an ``error`` event right after it (Anthropic's "overloaded") can still be retried
    or fall back. The role rides on the first chunk sent. ``message_delta`` gives the finish chunk,
    ``message_stop`` the usage-only chunk (``output_tokens`` is cumulative, so the last wins).
    """

    def __init__(self, model: str, backend: str) -> None:
        self.chunks = ChunkMaker("chat", model)
        self.backend = backend
        self.usage: JSON = {}
        self.tools: dict[Any, int] = {}  # content block index -> OpenAI tool call index
        self.started = self.finished = self.done = False

    def feed(self, obj: JSON) -> list[JSON]:
        kind = obj.get("type")
        if kind == "content_block_delta":
            return self._delta(obj.get("index"), obj.get("delta") or {})
        if kind == "content_block_start":
            return self._block(obj.get("index"), obj.get("content_block") or {})
        if kind == "message_start":
            message = obj.get("message") or {}
            self.chunks.id = message.get("id") or self.chunks.id
            self.chunks.model = message.get("model") or self.chunks.model
            self.usage.update(message.get("usage") or {})
        elif kind == "message_delta":
            self.usage.update(obj.get("usage") or {})
            self.finished = True
            return [self._choice({}, _finish((obj.get("delta") or {}).get("stop_reason")))]
        elif kind == "message_stop":
            self.done = True
            tail = [] if self.finished else [self._choice({}, "stop")]
            return [*tail, self.chunks.usage(_usage(self.usage))]
        elif kind == "error":
            raise stream_error(obj, self.backend)
        return []  # ping, content_block_stop, and event types added later

    def _block(self, index: Any, block: JSON) -> list[JSON]:
        if block.get("type") == "tool_use":
            self.tools[index] = position = len(self.tools)
            function = {"name": block.get("name"), "arguments": ""}
            call = {"index": position, "id": block.get("id"), "type": "function"}
            return [self._choice({"tool_calls": [{**call, "function": function}]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._choice({"content": block["text"]})]
        return []

    def _delta(self, index: Any, delta: JSON) -> list[JSON]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._choice({"content": delta.get("text") or ""})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self.tools:
            piece = {"index": self.tools[index], "function": {"arguments": delta["partial_json"]}}
            return [self._choice({"tool_calls": [piece]})]
        if kind == "thinking_delta":
            return [self._choice({"reasoning_content": delta.get("thinking") or ""})]
        return []  # signature_delta, citations_delta

    def _choice(self, delta: JSON, finish: str | None = None) -> JSON:
        if not self.started:
            self.started = True
            delta = {"role": "assistant", **(delta or {"content": ""})}
        return self.chunks.choice(delta, finish)


def stream_error(obj: JSON, backend: str) -> BackendError:
    """An ``error`` event as the turnout error its type means."""
    error = obj["error"] if isinstance(obj.get("error"), dict) else {}
    kind = str(error.get("type") or "api_error")
    text = f"backend '{backend}' failed mid-stream ({kind}): "
    text += clean_upstream_message(str(error.get("message") or ""))
    if kind == "overloaded_error":
        return BackendUnavailableError(text, backend=backend)
    if kind == "rate_limit_error":
        return BackendRateLimitedError(text, backend=backend)
    return BackendError(text, backend=backend)
