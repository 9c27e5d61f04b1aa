"""Anthropic's Messages API as a client dialect: a ``POST /v1/messages`` body in, the gateway's
one internal request (an OpenAI-shaped chat body) out (`to_chat`); the internal reply back as a
Messages ``message`` (`from_chat`), the internal stream back as Anthropic's named SSE events
(`anthropic_stream.MessageStream`), errors in Anthropic's shape (`anthropic_stream`). No I/O.

What is kept, mapped or refused (the README's table lists every field):

- ``system`` (a string or text blocks) becomes the first, system message; ``user`` and
  ``assistant`` turns keep their text and images (``base64`` sources become ``data:`` URIs, ``url``
  sources stay URLs); an assistant's ``tool_use`` blocks become its ``tool_calls`` (``input``
  as a JSON string), a user's ``tool_result`` blocks become ``tool`` messages ahead of what else
  the turn says (``is_error: true`` is kept as an ``Error:`` prefix: OpenAI's tool message has
  no flag).
- ``tools`` / ``tool_choice`` (``auto``, ``any``, ``tool``, ``none``,
  ``disable_parallel_tool_use``), ``stop_sequences``, ``temperature`` (0 to 1), ``top_p``,
  ``top_k``, ``max_tokens`` (required), ``metadata.user_id`` (as ``user``), ``stream``.
- ``thinking`` cannot be expressed to an OpenAI-shaped backend: it is dropped and named in
  `Translated.dropped` (the front says so in a warning header); a backend that speaks Messages
  natively gets it untouched by passthrough. Thinking blocks in the history are dropped likewise.
- Tolerated and not forwarded: ``cache_control`` on any block, ``context_management``,
  ``service_tier``, ``container``, ``mcp_servers`` and any other top-level field (Claude Code
  sends new ones as Anthropic adds them; refusing them is what breaks it behind other gateways).
- Refused with a 400 naming the field: ``document``, ``search_result`` and server-tool blocks,
  server tools (``web_search`` and the like), a ``system`` role inside ``messages``.

Facts: shared/reference/runtimes.md §2 (anthropics/anthropic-sdk-python types, Anthropic's
"Messages" and "Messages streaming" docs); the event order is held against the documents in
tests/fixtures/anthropic/.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequestError

__all__ = [
    "Translated",
    "from_chat",
    "stop_reason",
    "to_chat",
    "usage_from_openai",
]

JSON = dict[str, Any]

_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_FINISH = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
_FINISH["content_filter"] = "refusal"
#: top-level fields read here; everything else is tolerated and left behind
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param, code="invalid_value")


@dataclass(slots=True)
class Translated:
    """A Messages request as the gateway carries it: ``body`` (OpenAI-shaped chat), the stop
    sequences asked for (to tell ``stop_sequence`` from ``end_turn``), and the fields that could
    not be expressed and were dropped (for the front's warning header)."""

    body: JSON
    stops: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def to_chat(raw: Any, *, count_only: bool = False) -> Translated:
    """A ``/v1/messages`` body (or a ``count_tokens`` one: no ``max_tokens``) as a chat body."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "Field required, a non-empty string")
    out: JSON = {"model": model}
    if not count_only:
        limit = raw.get("max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _invalid("max_tokens", "Field required, an integer of at least 1")
        out["max_tokens"] = limit
    dropped: list[str] = []
    messages = _system(raw.get("system"))
    messages.extend(_messages(raw.get("messages"), dropped))
    out["messages"] = messages
    stops = _sampling(raw, out)
    _tools(raw, out)
    if raw.get("thinking") is not None:
        thinking = raw["thinking"]
        if not isinstance(thinking, dict) or thinking.get("type") not in (
            "enabled",
            "disabled",
            "adaptive",
        ):
            raise _invalid("thinking.type", "must be 'enabled', 'disabled' or 'adaptive'")
        if thinking["type"] != "disabled":
            dropped.insert(0, "thinking")
    if raw.get("stream") is not None and not count_only:
        if not isinstance(raw["stream"], bool):
            raise _invalid("stream", "expected a boolean")
        if raw["stream"]:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}  # message_delta carries usage
    return Translated(out, stops, dropped)


def _sampling(raw: JSON, out: JSON) -> list[str]:
    for key, hi in (("temperature", 1.0), ("top_p", 1.0)):
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi:
            raise _invalid(key, f"must be a number from 0 to {hi:g}, got {value!r}")
        out[key] = value
    top_k = raw.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise _invalid("top_k", f"must be a non-negative integer, got {top_k!r}")
        out["top_k"] = top_k
    stops = raw.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise _invalid("stop_sequences", "expected an array of non-empty strings")
        if stops:
            out["stop"] = list(stops)
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    return list(stops or ())


def _system(system: Any) -> list[JSON]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _invalid("system", "expected a string or an array of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"system.{i}.type", "system blocks must be text blocks")
        if not isinstance(block.get("text"), str):
            raise _invalid(f"system.{i}.text", "Field required, a string")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _messages(messages: Any, dropped: list[str]) -> list[JSON]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "Field required, a non-empty array of messages")
    out: list[JSON] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _invalid(where, "each message must be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _invalid(
                f"{where}.role",
                f"must be 'user' or 'assistant', got {role!r} (the system prompt is the "
                "top-level 'system' field)",
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user_turn(content, where))
            else:
                out.extend(_assistant_turn(content, where, dropped))
        else:
            raise _invalid(f"{where}.content", "expected a string or an array of content blocks")
    return out


def _user_turn(blocks: list[Any], where: str) -> list[JSON]:
    """Tool results first, as ``tool`` messages (OpenAI wants them right after the calls), then
    the rest of the turn as one user message (with the images tool results returned: an
    OpenAI tool message carries text only)."""
    results: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            results.append(_tool_result(block, at, parts))
        elif kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block.get("source"), f"{at}.source"))
        else:
            raise _invalid(f"{at}.type", f"turnout translates text, image and tool_result "
                           f"blocks in a user turn, not {kind!r}")  # fmt: skip
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content: Any = "".join(p["text"] for p in parts) if only_text and len(parts) == 1 else parts
        results.append({"role": "user", "content": content})
    return results


def _text_part(block: JSON, at: str) -> JSON:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{at}.text", "Field required, a string")
    return {"type": "text", "text": text}


def _image_part(source: Any, at: str) -> JSON:
    if not isinstance(source, dict):
        raise _invalid(at, "Field required, an image source object")
    kind = source.get("type")
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _invalid(f"{at}.url", "expected an http(s) URL")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if media not in _MEDIA_TYPES:
            raise _invalid(f"{at}.media_type", f"must be one of {', '.join(sorted(_MEDIA_TYPES))}")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{at}.data", "Field required, base64 image data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    raise _invalid(f"{at}.type", f"must be 'base64' or 'url', got {kind!r}")


def _tool_result(block: JSON, at: str, images: list[JSON]) -> JSON:
    call = block.get("tool_use_id")
    if not isinstance(call, str) or not call:
        raise _invalid(f"{at}.tool_use_id", "Field required, a string")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":  # a screenshot a tool took: shown in the user turn that follows
                images.append(_image_part(part.get("source"), f"{at}.content.{k}.source"))
                pieces.append(f"[image {len(images)} below]")
            elif kind == "text":
                pieces.append(_text_part(part, f"{at}.content.{k}")["text"])
            else:
                raise _invalid(f"{at}.content.{k}.type", "tool results may hold text and images")
        text = "\n".join(pieces)
    else:
        raise _invalid(f"{at}.content", "expected a string or an array of text and image blocks")
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call, "content": text}


def _assistant_turn(blocks: list[Any], where: str, dropped: list[str]) -> list[JSON]:
    texts: list[str] = []
    calls: list[JSON] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_part(block, at)["text"])
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind in _SKIPPED_BLOCKS:
            if "thinking history" not in dropped:
                dropped.append("thinking history")
        else:
            raise _invalid(f"{at}.type", f"turnout translates text, tool_use and thinking "
                           f"blocks in an assistant turn, not {kind!r}")  # fmt: skip
    if not texts and not calls:
        return []
    # "" rather than null beside tool calls: llama-cpp-python's server refuses a null content
    message: JSON = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: JSON, at: str) -> JSON:
    call, name, args = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call, str) or not call:
        raise _invalid(f"{at}.id", "Field required, a string")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{at}.name", "Field required, a string")
    if not isinstance(args, dict):
        raise _invalid(f"{at}.input", "Field required, an object")
    function = {"name": name, "arguments": orjson.dumps(args).decode()}
    return {"id": call, "type": "function", "function": function}


def _tools(raw: JSON, out: JSON) -> None:
    tools = raw.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise _invalid("tools", "expected an array of tools")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid(f"tools.{i}", "each tool must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _invalid(
                f"tools.{i}.type",
                f"server tools such as {kind!r} need Anthropic's own service; turnout passes "
                "client tools (name, input_schema) only",
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise _invalid(f"tools.{i}.name", "Field required, a string")
        if not isinstance(schema, dict):
            raise _invalid(f"tools.{i}.input_schema", "Field required, a JSON Schema object")
        function: JSON = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:
            function["strict"] = True
        converted.append({"type": "function", "function": function})
    choice = raw.get("tool_choice")
    if converted:
        out["tools"] = converted
    if choice is not None:
        _tool_choice(choice, out, bool(converted))


def _tool_choice(choice: Any, out: JSON, has_tools: bool) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        mapped: Any = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name", "Field required for type 'tool', a string")
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _invalid("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    if not has_tools:
        if mapped in ("auto", "none"):
            return  # nothing to choose from: says nothing
        raise _invalid("tool_choice", f"type {kind!r} needs 'tools'")
    out["tool_choice"] = mapped
    if choice.get("disable_parallel_tool_use") is True and mapped != "none":
        out["parallel_tool_calls"] = False


# Replies: the internal (OpenAI-shaped) answer as a Messages ``message``.


def stop_reason(finish: Any, has_calls: bool, choice: JSON, stops: list[str]) -> tuple[str, Any]:
    """``(stop_reason, stop_sequence)`` from a choice's ``finish_reason``. A call made is
    ``tool_use`` whatever the backend called the finish (vLLM mixes text and calls under
    ``stop``). ``stop_sequence`` needs the backend to say which sequence matched: vLLM's
    ``stop_reason`` field does; otherwise a stop is ``end_turn``."""
    if has_calls:
        return "tool_use", None
    if finish == "stop" and stops:
        matched = choice.get("stop_reason")
        if isinstance(matched, str) and matched in stops:
            return "stop_sequence", matched
    return _FINISH.get(str(finish), "end_turn"), None


def usage_from_openai(usage: Any) -> JSON:
    """OpenAI's usage (prompt tokens include cached ones) as Anthropic's (they do not)."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details") or {}
    read = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    prompt = int(usage.get("prompt_tokens") or 0)
    return {
        "input_tokens": max(prompt - read - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return f"msg_{uuid.uuid4().hex[:24]}"


def _arguments(raw: Any) -> JSON:
    """A call's arguments as ``tool_use.input``: an object; what does not parse as one is kept
    whole under ``"arguments"`` rather than lost."""
    if isinstance(raw, dict):
        return raw
    try:
        args = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except orjson.JSONDecodeError:
        return {"arguments": raw}
    return args if isinstance(args, dict) else {"arguments": args}


def from_chat(reply: JSON, model: str, stops: list[str] | None = None) -> JSON:
    """The internal ``chat.completion`` as a Messages ``message``: thinking, then text, then
    ``tool_use`` blocks, as Anthropic orders them."""
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[JSON] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    for call in calls:
        fn = call.get("function") or {}
        use = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"}
        content.append(
            {**use, "name": fn.get("name", ""), "input": _arguments(fn.get("arguments"))}
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), bool(calls), choice, stops or [])
    return {
        "id": _message_id(reply.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_from_openai(reply.get("usage")),
    }
