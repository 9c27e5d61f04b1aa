"""OpenAI's Responses API as a client dialect: a ``POST /v1/responses`` body in, the gateway's one
internal (Chat Completions shaped) request out (`to_chat`); the internal reply back as a
``response`` object (`from_chat`) and the internal stream as the documented event sequence
(`ResponseStream`). Pure functions, no I/O; the bounded store of past responses that
``previous_response_id`` needs is the front's.

- ``input``: a string, or items: messages (``system``/``developer``/``user``/``assistant``, with
  ``input_text``, ``input_image`` and ``output_text`` parts), ``function_call`` and
  ``function_call_output``; ``reasoning`` items are dropped (no backend here takes them back).
- A backend's ``reasoning_content`` comes back as a ``reasoning`` item (``reasoning_text``
  content; streamed as ``response.reasoning_text.delta`` / ``.done``), before the message.
- ``instructions`` is the first, system message; ``tools`` of type ``function``; ``tool_choice``
  (``auto``, ``none``, ``required``, a named function); ``text.format`` (``json_schema``,
  ``json_object``); ``max_output_tokens``; ``temperature``; ``top_p``; ``parallel_tool_calls``;
  ``user``. ``reasoning``, ``store``, ``metadata``, ``truncation``, ``include``,
  ``service_tier``, ``prompt_cache_key`` are tolerated (echoed where the response has them).
- Refused with a 400 naming the field: built-in tools (``web_search``, ``file_search``...),
  ``input_file`` and audio parts, ``background: true``, ``conversation``.

Facts: the Responses schemas in OpenAI's OpenAPI description (shared/reference/
openai-openapi.json: ``Response``, ``ResponseStreamEvent`` and the events it names), against
which tests/unit/test_responses_wire.py validates every object and event.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import GatewayError, InvalidRequestError

__all__ = [
    "ResponseStream",
    "Translated",
    "error_code",
    "from_chat",
    "output_messages",
    "stream_event",
    "to_chat",
]

JSON = dict[str, Any]

_REFUSED_TOP = ("background", "conversation")
_ECHO = ("temperature", "top_p", "max_output_tokens", "user", "store", "truncation")


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


@dataclass(slots=True)
class Translated:
    """A Responses request as the gateway carries it: the internal chat ``body``, the fields the
    response object echoes (``shell``), and the conversation so far (for the store)."""

    body: JSON
    shell: JSON
    messages: list[JSON] = field(default_factory=list)


def to_chat(raw: Any, history: list[JSON] | None = None) -> Translated:
    """A ``/v1/responses`` body as an internal chat body; ``history`` is the conversation of the
    ``previous_response_id`` the front found in its store."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    for key in _REFUSED_TOP:
        if raw.get(key):
            raise _invalid(key, "turnout answers responses in the foreground and keeps no "
                           "conversations; leave it unset")  # fmt: skip
    messages: list[JSON] = []
    instructions = raw.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions", "expected a string")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    conversation = list(history or [])
    conversation += _input(raw.get("input"))
    messages += conversation
    body: JSON = {"model": model, "messages": messages}
    _sampling(raw, body)
    tools = _tools(raw.get("tools"))
    if tools:
        body["tools"] = tools
    if raw.get("tool_choice") is not None:
        _tool_choice(raw["tool_choice"], body)
    _text_format(raw.get("text"), body)
    if raw.get("stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return Translated(body, _shell(raw, model), conversation)


def _sampling(raw: JSON, body: JSON) -> None:
    limit = raw.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _invalid("max_output_tokens", "expected an integer of at least 1")
        body["max_tokens"] = limit
    for key in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if raw.get(key) is not None:
            body[key] = raw[key]  # checked by the chat validator the front runs next


def _shell(raw: JSON, model: str) -> JSON:
    """What a response object repeats of its request, as the API does."""
    shell: JSON = {key: raw.get(key) for key in _ECHO}
    if shell["user"] is None:
        del shell["user"]  # a string when present
    shell["store"] = bool(raw.get("store", False))
    shell["truncation"] = raw.get("truncation") or "disabled"
    shell |= {
        "model": model,
        "instructions": raw.get("instructions"),
        "tools": [{"strict": None, "parameters": None, **t} for t in raw.get("tools") or ()],
        "tool_choice": raw.get("tool_choice") or "auto",
        "parallel_tool_calls": raw.get("parallel_tool_calls", True),
        "metadata": raw.get("metadata") or {},
        "previous_response_id": raw.get("previous_response_id"),
        "text": raw.get("text") or {"format": {"type": "text"}},
        "reasoning": raw.get("reasoning") or {"effort": None, "summary": None},
    }
    return shell


def _input(value: Any) -> list[JSON]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _invalid("input", "expected a string or a non-empty array of input items")
    out: list[JSON] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _invalid(where, "each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            _function_call(item, where, out)
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise _invalid(f"{where}.call_id", "required, a string")
            text = output if isinstance(output, str) else _output_text(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # reasoning a model did earlier: no backend here takes it back
        else:
            raise _invalid(f"{where}.type", f"turnout takes message, function_call and "
                           f"function_call_output items, not {kind!r}")  # fmt: skip
    return out


def _message(item: JSON, where: str) -> JSON:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _invalid(f"{where}.role", "must be user, assistant, system or developer")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "expected a string or an array of content parts")
    parts: list[JSON] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise _invalid(f"{at}.text", "required, a string")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _invalid(f"{at}.image_url", "required, a URL or a data: URI (file_id is not "
                               "supported)")  # fmt: skip
            image: JSON = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _invalid(f"{at}.type", f"turnout takes input_text, input_image and "
                           f"output_text parts, not {kind!r}")  # fmt: skip
    if role != "user" and all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _function_call(item: JSON, where: str, out: list[JSON]) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise _invalid(f"{where}.{key}", "required, a string")
    call: JSON = {"id": item["call_id"], "type": "function"}
    call["function"] = {"name": item["name"], "arguments": item["arguments"]}
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
    elif last is not None and last["role"] == "assistant" and isinstance(last["content"], str):
        last["tool_calls"] = [call]  # the text the model said before its calls
    else:
        # "" rather than null: llama-cpp-python's server refuses a null content
        out.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, list):
        texts = [p.get("text") for p in output if isinstance(p, dict)]
        if all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if t)
    raise _invalid(where, "expected a string or an array of input_text parts")


def _tools(tools: Any) -> list[JSON]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("tools", "expected an array of tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _invalid(f"tools[{i}].type", f"turnout passes function tools only; {kind!r} "
                           "tools run on OpenAI's own service")  # fmt: skip
        if not isinstance(tool.get("name"), str):
            raise _invalid(f"tools[{i}].name", "required, a string")
        fn: JSON = {
            "name": tool["name"],
            "parameters": tool.get("parameters") or {"type": "object"},
        }
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        if tool.get("strict") is not None:
            fn["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, body: JSON) -> None:
    if choice in ("auto", "none", "required"):
        if body.get("tools") or choice != "required":
            body["tool_choice"] = choice
            return
        raise _invalid("tool_choice", "'required' needs 'tools'")
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name", "required, a string")
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        return
    raise _invalid("tool_choice", "must be 'auto', 'none', 'required' or a named function")


def _text_format(text: Any, body: JSON) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _invalid("text.format.schema", "required, a JSON Schema object")
        spec: JSON = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            spec["strict"] = bool(fmt["strict"])
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    else:
        raise _invalid("text.format.type", "must be text, json_object or json_schema")


# Replies.


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def usage_from_openai(usage: Any) -> JSON | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    prompt, completion = (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
    cached = {"cached_tokens": int(details.get("cached_tokens") or 0)}
    cached["cache_write_tokens"] = int(details.get("cache_write_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": cached,
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> JSON:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if status == "in_progress" else [part]}  # fmt: skip


def _reasoning_item(item_id: str, text: str, status: str = "completed") -> JSON:
    """What a model reasoned (a backend's ``reasoning_content``), as a ``reasoning`` item."""
    content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content,
            "status": status}  # fmt: skip


def _call_item(item_id: str, call: JSON, arguments: str, status: str = "completed") -> JSON:
    fn = call.get("function") or {}
    return {"id": item_id, "type": "function_call", "status": status,
            "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "",
            "arguments": arguments}  # fmt: skip


def response_object(
    response_id: str, shell: JSON, status: str, output: list[JSON], usage: JSON | None
) -> JSON:
    """A ``response`` object: its identity, status and output, with what it echoes."""
    head = {"id": response_id, "object": "response", "created_at": int(time.time())}
    body = {**head, "status": status, "error": None, "incomplete_details": None, **shell}
    body["completed_at"] = int(time.time()) if status == "completed" else None
    if status == "incomplete":
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    body["output"] = output
    if usage is not None:  # the schema has no null usage (the docs' examples show one)
        body["usage"] = usage
    return body


def from_chat(reply: JSON, shell: JSON) -> JSON:
    """The internal ``chat.completion`` as a ``response`` object."""
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[JSON] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        output.append(_reasoning_item(new_id("rs"), thinking))
    if isinstance(message.get("content"), str) and message["content"]:
        output.append(_message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or ():
        arguments = (call.get("function") or {}).get("arguments")
        arguments = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        output.append(_call_item(new_id("fc"), call, arguments))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return response_object(
        new_id("resp"), shell, status, output, usage_from_openai(reply.get("usage"))
    )


def output_messages(response: JSON) -> list[JSON]:
    """A response's output as chat messages: what ``previous_response_id`` continues from."""
    message: JSON = {"role": "assistant", "content": ""}
    said = False
    for item in response.get("output") or ():
        if item.get("type") == "message":
            said = True
            message["content"] += "".join(p.get("text", "") for p in item.get("content") or ())
        elif item.get("type") == "function_call":
            fn = {"name": item["name"], "arguments": item["arguments"]}
            call = {"id": item["call_id"], "type": "function", "function": fn}
            message.setdefault("tool_calls", []).append(call)
    return [message] if said or "tool_calls" in message else []


def error_code(exc: GatewayError) -> str:
    """The ``response.error.code`` of a failed response (the schema's enumeration)."""
    if exc.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= exc.status < 500 and exc.status != 408 else "server_error"


# Streams.


def _event(name: bytes, obj: JSON) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def stream_event(name: str, obj: JSON, sequence: int) -> bytes:
    """One Responses event, numbered ``sequence``."""
    return _event(name.encode(), {"type": name, **obj, "sequence_number": sequence})


_TEXT_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"item_id":"%s","output_index":%d,"content_index":0,"delta":'
)


class ResponseStream:
    """Internal chunks in, the Responses events out, each with its ``sequence_number``:
    ``response.created``, ``response.in_progress``; per output item ``output_item.added``, for a
    message ``content_part.added``, ``output_text.delta``..., ``output_text.done``,
    ``content_part.done``, for a call ``function_call_arguments.delta``... and ``.done``; then
    ``output_item.done``; last ``response.completed`` (``response.incomplete`` when cut at
    ``max_output_tokens``), or ``response.failed`` if the stream breaks."""

    __slots__ = (
        "_calls", "_finish", "_item", "_output", "_seq", "_text", "_usage", "final", "id",
        "shell", "started",
    )  # fmt: skip

    def __init__(self, shell: JSON) -> None:
        self.id = new_id("resp")
        self.shell = shell
        self.started = False
        self._seq = 0
        self._output: list[JSON] = []  # finished items
        self._item: JSON | None = None  # the open item
        self._text: list[str] = []  # the open item's text or arguments
        self._calls: dict[Any, JSON] = {}
        self._finish: Any = None
        self._usage: Any = None
        self.final: JSON | None = None  # the finished response object, once closed

    def _emit(self, name: str, obj: JSON) -> bytes:
        obj = {"type": name, **obj, "sequence_number": self._seq}
        self._seq += 1
        return _event(name.encode(), obj)

    def start(self) -> bytes:
        self.started = True
        shell = response_object(self.id, self.shell, "in_progress", [], None)
        return self._emit("response.created", {"response": shell}) + self._emit(
            "response.in_progress", {"response": shell}
        )

    def feed(self, chunk: JSON) -> bytes:
        out = b"" if self.started else self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking:
                out += self._reasoning(thinking)
            if delta.get("content"):
                out += self._open_message() + self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _reasoning(self, text: str) -> bytes:
        out = b""
        if self._item is None or self._item["type"] != "reasoning":
            out = self._close_item()
            self._item = _reasoning_item(new_id("rs"), "", "in_progress")
            added = {"output_index": len(self._output), "item": self._item}
            out += self._emit("response.output_item.added", added)
        self._text.append(text)
        where = {"item_id": self._item["id"], "output_index": len(self._output)}
        delta = {**where, "content_index": 0, "delta": text}
        return out + self._emit("response.reasoning_text.delta", delta)

    def _open_message(self) -> bytes:
        if self._item is not None and self._item["type"] == "message":
            return b""
        out = self._close_item()
        self._item = _message_item(new_id("msg"), "", "in_progress")
        index = len(self._output)
        out += self._emit("response.output_item.added", {"output_index": index, "item": self._item})
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self._item["id"], "output_index": index, "content_index": 0}
        return out + self._emit("response.content_part.added", {**where, "part": part})

    def _text_delta(self, text: str) -> bytes:
        """An ``output_text.delta`` event, written straight as bytes (one per token)."""
        self._text.append(text)
        assert self._item is not None
        seq, self._seq = self._seq, self._seq + 1
        head = _TEXT_DELTA % (self._item["id"].encode(), len(self._output))
        return head + orjson.dumps(text) + b',"logprobs":[],"sequence_number":%d}\n\n' % seq

    def _call(self, call: JSON) -> bytes:
        position = call.get("index", 0)
        out = b""
        if position not in self._calls:
            out = self._close_item()
            self._calls[position] = self._item = _call_item(new_id("fc"), call, "", "in_progress")
            index = len(self._output)
            out += self._emit(
                "response.output_item.added", {"output_index": index, "item": self._item}
            )
        elif self._item is not self._calls[position]:
            return (
                out  # a closed call's fragment: never sent by the runtimes (see anthropic_stream)
            )
        arguments = (call.get("function") or {}).get("arguments")
        if arguments:
            self._text.append(arguments)
            where = {"item_id": self._item["id"], "output_index": len(self._output)}
            out += self._emit(
                "response.function_call_arguments.delta", {**where, "delta": arguments}
            )
        return out

    def _close_item(self, status: str = "completed") -> bytes:
        item, self._item = self._item, None
        if item is None:
            return b""
        text, self._text = "".join(self._text), []
        index = len(self._output)
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            done = _message_item(item["id"], text, status)
            text_done = {**where, "content_index": 0, "text": text, "logprobs": []}
            out = self._emit("response.output_text.done", text_done)
            part = done["content"][0]
            out += self._emit(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        elif item["type"] == "reasoning":
            done = _reasoning_item(item["id"], text, status)
            reasoned = {**where, "content_index": 0, "text": text}
            out = self._emit("response.reasoning_text.done", reasoned)
        else:
            done = {**item, "arguments": text, "status": status}
            args = {**where, "name": item["name"], "arguments": text}
            out = self._emit("response.function_call_arguments.done", args)
        self._output.append(done)
        return out + self._emit("response.output_item.done", {"output_index": index, "item": done})

    def close(self) -> bytes:
        out = (b"" if self.started else self.start()) + self._close_item()
        status = "incomplete" if self._finish == "length" else "completed"
        usage = usage_from_openai(self._usage)
        final = response_object(self.id, self.shell, status, self._output, usage)
        self.final = final
        return out + self._emit(f"response.{status}", {"response": final})

    def fail(self, exc: GatewayError) -> bytes:
        """The stream broke: ``response.failed`` with the error (what is done so far kept)."""
        out = (b"" if self.started else self.start()) + self._close_item("incomplete")
        final = response_object(self.id, self.shell, "failed", self._output, None)
        final["error"] = {"code": error_code(exc), "message": exc.message}
        return out + self._emit("response.failed", {"response": final})
