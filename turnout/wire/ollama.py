"""Ollama's native API as a client dialect: ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/embeddings`` bodies in, the gateway's one internal (OpenAI-shaped) request out; its replies
and stream chunks back as Ollama's objects and NDJSON lines; errors as ``{"error": "..."}``.
Pure functions and one stream translator, no I/O.

- ``options``: ``num_predict`` is ``max_tokens``; ``temperature``, ``top_p``, ``seed``,
  ``presence_penalty``, ``frequency_penalty`` and ``stop`` keep their names; ``top_k``,
  ``min_p``, ``typical_p``, ``repeat_penalty`` and ``num_ctx`` ride along as the extra fields
  local runtimes take; any other option stays under ``options`` (an Ollama backend applies it,
  others ignore it). ``keep_alive`` and ``think`` ride along likewise.
- ``format``: ``"json"`` is a JSON object reply, a schema a ``json_schema`` reply.
- ``images`` (bare base64) become ``data:`` URIs, their type read from their first bytes; tool
  call ``arguments`` (objects) become JSON strings, and back.
- ``/api/generate``: ``system`` and ``prompt`` become a chat; ``raw: true`` sends the prompt as
  a text completion, untemplated; ``suffix`` makes it a completion with ``suffix`` (infill),
  which a backend that cannot do it refuses. ``template`` and a non-empty ``context`` are
  refused with a 400 that says what to send instead.
- Done fields: ``done_reason``, ``total_duration``, ``load_duration``, ``prompt_eval_count``,
  ``prompt_eval_duration``, ``eval_count``, ``eval_duration``, all durations in nanoseconds, from
  the backend's own timings where it reports them (llama.cpp's ``timings``), else measured here.

Facts: shared/reference/runtimes.md §3 (ollama/ollama docs/api.md, api/types.go @fb30760).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..errors import GatewayError, InvalidRequestError

__all__ = [
    "ChatStream",
    "Timing",
    "chat_reply",
    "chat_to_internal",
    "created_at",
    "embed_reply",
    "embed_to_internal",
    "error_body",
    "error_line",
    "generate_reply",
    "generate_to_internal",
    "load_reply",
]

JSON = dict[str, Any]
Mode = Literal["chat", "generate"]

#: options with an OpenAI name
_RENAMED = {"num_predict": "max_tokens"}
_SAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop")
#: options local runtimes take as extra top-level fields (llama.cpp, vLLM, turnout's Ollama
#: provider reads them back into options)
_EXTRA = ("top_k", "min_p", "typical_p", "repeat_penalty", "num_ctx")
_MAGIC = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)
_DONE = {"length": "length", "stop": "stop", "tool_calls": "stop", "content_filter": "stop"}


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"invalid {param}: {message}", param=param, code="invalid_value")


def _model(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model is required", param="model", code="missing_model")
    return model


def _envelope(raw: JSON, model: str) -> JSON:
    """What chat and generate share: model, stream (Ollama streams unless told not to),
    options, format, keep_alive and think."""
    out: JSON = {"model": model}
    stream = raw.get("stream", True)
    if not isinstance(stream, bool):
        raise _invalid("stream", "expected a boolean")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the done line's counts
    options = raw.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid("options", "expected an object of Ollama options")
        _options(options, out)
    _format(raw.get("format"), out)
    for key in ("keep_alive", "think"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    return out


def _options(options: JSON, out: JSON) -> None:
    rest: JSON = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _RENAMED:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _invalid(f"options.{key}", "expected an integer")
            if value >= 0:  # -1 and -2: no limit, as Ollama reads them
                out[_RENAMED[key]] = value
        elif key in _SAME or key in _EXTRA:
            if key == "stop" and isinstance(value, str):
                value = [value]
            out[key] = value
        else:
            rest[key] = value
    if rest:
        out["options"] = rest


def _format(fmt: Any, out: JSON) -> None:
    if fmt in (None, ""):
        return
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        schema = {"name": "ollama_format", "schema": fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise _invalid("format", 'expected "json" or a JSON schema object')


def _image_url(data: Any, param: str) -> JSON:
    if not isinstance(data, str) or not data:
        raise _invalid(param, "expected base64 image data")
    if data.startswith("data:"):
        raise _invalid(param, "images are bare base64, without a data: prefix")
    media = next((m for prefix, m in _MAGIC if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def chat_to_internal(raw: Any) -> JSON:
    """An ``/api/chat`` body as the internal chat body. An empty ``messages`` is Ollama's "load
    the model" request; the front answers it (``done_reason: load``) without generating."""
    out = _envelope(raw, _model(raw))
    messages = raw.get("messages") or []
    if not isinstance(messages, list):
        raise _invalid("messages", "expected an array of messages")
    names: dict[str, list[str]] = {}  # tool name -> ids of calls not answered yet
    out["messages"] = [_message(m, f"messages[{i}]", names) for i, m in enumerate(messages)]
    tools = raw.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _invalid("tools", "expected an array of tools")
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    return out


def _message(message: Any, where: str, names: dict[str, list[str]]) -> JSON:
    if not isinstance(message, dict):
        raise _invalid(where, "each message must be an object")
    role = message.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise _invalid(f"{where}.role", f"must be system, user, assistant or tool, got {role!r}")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise _invalid(f"{where}.content", "expected a string")
    images = message.get("images") or []
    out: JSON = {"role": role, "content": content}
    if images:
        parts: list[JSON] = [{"type": "text", "text": content}] if content else []
        parts += [_image_url(d, f"{where}.images[{k}]") for k, d in enumerate(images)]
        out["content"] = parts
    calls = message.get("tool_calls")
    if calls and role == "assistant":
        out["tool_calls"] = [
            _call(c, f"{where}.tool_calls[{k}]", names) for k, c in enumerate(calls)
        ]
    if role == "tool":
        out["tool_call_id"] = _answered(message, names)
    if isinstance(message.get("thinking"), str) and role == "assistant":
        out["reasoning_content"] = message["thinking"]
    return out


def _call(call: Any, where: str, names: dict[str, list[str]]) -> JSON:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _invalid(f"{where}.function.name", "required, a string")
    args = fn.get("arguments") or {}
    if isinstance(args, str):
        arguments = args
    elif isinstance(args, dict):
        arguments = orjson.dumps(args).decode()
    else:
        raise _invalid(f"{where}.function.arguments", "expected an object")
    call_id = call.get("id") or f"call_{len(names)}_{fn['name']}"[:40]
    names.setdefault(fn["name"], []).append(call_id)
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": fn["name"], "arguments": arguments},
    }


def _answered(message: JSON, names: dict[str, list[str]]) -> str:
    """A tool result's call id: its own ``tool_call_id``, else the oldest unanswered call of the
    tool it names (Ollama's clients send ``tool_name``; OpenAI's backends need an id)."""
    if isinstance(message.get("tool_call_id"), str) and message["tool_call_id"]:
        call_id: str = message["tool_call_id"]
        for ids in names.values():
            if call_id in ids:
                ids.remove(call_id)
        return call_id
    name = message.get("tool_name") or message.get("name")
    pending = names.get(name) if isinstance(name, str) else None
    if pending:
        return pending.pop(0)
    ids = [i for ids in names.values() for i in ids]
    return ids.pop(0) if ids else f"call_{name or 'tool'}"


def _tool(tool: Any, where: str) -> JSON:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _invalid(f"{where}.function.name", "required, a string")
    return {"type": "function", "function": fn}


def generate_to_internal(raw: Any) -> tuple[Literal["chat", "completion"], JSON]:
    """An ``/api/generate`` body as ``(kind, internal body)``: a chat (``system`` + ``prompt``),
    or with ``raw``/``suffix`` a text completion."""
    out = _envelope(raw, _model(raw))
    prompt = raw.get("prompt") or ""
    if not isinstance(prompt, str):
        raise _invalid("prompt", "expected a string")
    if raw.get("template"):
        raise _invalid(
            "template",
            "turnout applies the backend's own chat template; send raw: true with a prompt "
            "already formatted instead",
        )
    if raw.get("context"):
        raise _invalid(
            "context",
            "turnout does not keep token contexts between requests; send the conversation to "
            "/api/chat instead",
        )
    suffix = raw.get("suffix")
    if raw.get("raw") or suffix:
        if raw.get("images"):
            raise _invalid("images", "images need a chat prompt; leave raw and suffix unset")
        out["prompt"] = prompt
        if suffix:
            out["suffix"] = suffix
        return "completion", out
    messages: list[JSON] = []
    if isinstance(raw.get("system"), str) and raw["system"]:
        messages.append({"role": "system", "content": raw["system"]})
    user = _message({"role": "user", "content": prompt, "images": raw.get("images")}, "", {})
    out["messages"] = [*messages, user] if prompt or raw.get("images") else []
    return "chat", out


def embed_to_internal(raw: Any, *, legacy: bool = False) -> JSON:
    """``/api/embed`` (``input``: a string or strings) or the older ``/api/embeddings``
    (``prompt``: one string) as an internal embeddings body."""
    model = _model(raw)
    key = "prompt" if legacy else "input"
    value = raw.get(key)
    ok = isinstance(value, str) or (
        not legacy and isinstance(value, list) and all(isinstance(v, str) for v in value)
    )
    if not ok or not value:
        expected = "a string" if legacy else "a string or an array of strings"
        raise _invalid(key, f"required, {expected}")
    out: JSON = {"model": model, "input": value}
    if isinstance(raw.get("dimensions"), int):
        out["dimensions"] = raw["dimensions"]
    if raw.get("keep_alive") is not None:
        out["keep_alive"] = raw["keep_alive"]
    return out


# Replies.


_SECOND: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def created_at() -> str:
    """The time now as Ollama writes it: RFC 3339, UTC, nanoseconds (the date and time part
    formatted once a second: every streamed line carries one)."""
    seconds, fraction = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _SECOND[0]:
        _SECOND[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_SECOND[1]}.{fraction:09d}Z"


@dataclass(slots=True)
class Timing:
    """When a request started, its first token came and it ended (``time.perf_counter_ns``)."""

    start: int
    first: int | None = None
    end: int | None = None

    def done(self, usage: Any, backend: Any = None) -> JSON:
        """The done fields. A backend's own timings (llama.cpp's ``prompt_ms``/``predicted_ms``)
        win; otherwise the prompt is the time to the first token, the rest is generation."""
        end = self.end or time.perf_counter_ns()
        total = end - self.start
        first = self.first if self.first is not None else self.start
        prompt_ns, eval_ns = first - self.start, end - first
        if isinstance(backend, dict) and "predicted_ms" in backend:
            prompt_ns = int(float(backend.get("prompt_ms") or 0) * 1e6)
            eval_ns = int(float(backend.get("predicted_ms") or 0) * 1e6)
        usage = usage if isinstance(usage, dict) else {}
        return {
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            "prompt_eval_duration": prompt_ns,
            "eval_count": int(usage.get("completion_tokens") or 0),
            "eval_duration": eval_ns,
        }


def _ollama_calls(calls: Any) -> list[JSON]:
    out = []
    for position, call in enumerate(calls or ()):
        fn = call.get("function") or {}
        raw = fn.get("arguments")
        try:
            args = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else raw or {}
        except orjson.JSONDecodeError:
            args = {"arguments": raw}
        function = {"index": position, "name": fn.get("name") or "", "arguments": args}
        out.append({"id": call.get("id") or f"call_{position}", "function": function})
    return out


def _choice(reply: JSON) -> JSON:
    choices = reply.get("choices") or [{}]
    return choices[0] if isinstance(choices[0], dict) else {}


def chat_reply(reply: JSON, model: str, timing: Timing) -> JSON:
    """The internal ``chat.completion`` as ``/api/chat``'s ``stream: false`` answer."""
    choice = _choice(reply)
    message = choice.get("message") or {}
    out: JSON = {"role": "assistant", "content": message.get("content") or ""}
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if thinking:
        out["thinking"] = thinking
    if message.get("tool_calls"):
        out["tool_calls"] = _ollama_calls(message["tool_calls"])
    done = timing.done(reply.get("usage"), reply.get("timings"))
    head = {"model": model, "created_at": created_at(), "message": out, "done": True}
    return {**head, "done_reason": _DONE.get(str(choice.get("finish_reason")), "stop"), **done}


def generate_reply(reply: JSON, model: str, timing: Timing) -> JSON:
    """The internal chat or text completion as ``/api/generate``'s ``stream: false`` answer."""
    choice = _choice(reply)
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    done = timing.done(reply.get("usage"), reply.get("timings"))
    head = {"model": model, "created_at": created_at(), "response": text or "", "done": True}
    return {**head, "done_reason": _DONE.get(str(choice.get("finish_reason")), "stop"), **done}


def embed_reply(reply: JSON, model: str, timing: Timing, *, legacy: bool = False) -> JSON:
    vectors = [item.get("embedding") for item in reply.get("data") or ()]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    done = timing.done(reply.get("usage"))
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": done["total_duration"],
        "load_duration": 0,
        "prompt_eval_count": done["prompt_eval_count"],
    }


def load_reply(model: str, mode: Mode, unload: bool = False) -> JSON:
    """The answer to an empty chat or generate: the model is loaded (or unloaded)."""
    head: JSON = {"model": model, "created_at": created_at()}
    body = {"message": {"role": "assistant", "content": ""}} if mode == "chat" else {"response": ""}
    return {**head, **body, "done": True, "done_reason": "unload" if unload else "load"}


# Errors.


def error_body(exc: GatewayError) -> tuple[int, JSON]:
    return exc.status, {"error": exc.message}


def error_line(exc: GatewayError) -> bytes:
    """An error after the stream began: Ollama's last line ``{"error": "..."}``."""
    return orjson.dumps({"error": exc.message}) + b"\n"


# Streams.


class ChatStream:
    """Internal chunks in, Ollama's NDJSON lines out: one object per piece of text, a tool call
    whole in one object (Ollama never splits one), and the ``done: true`` line with the counts
    and durations last."""

    __slots__ = ("_calls", "_finish", "_head", "_mode", "_timing", "_usage", "model")

    def __init__(self, model: str, timing: Timing, mode: Mode = "chat") -> None:
        self.model = model
        self._timing = timing
        self._mode: Mode = mode
        self._calls: dict[Any, JSON] = {}
        self._finish: Any = None
        self._usage: Any = None
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'

    def _text(self, text: str) -> bytes:
        """A line of text, written straight as bytes (one per token)."""
        if self._mode == "chat":
            return (self._head + created_at().encode() + b'","message":{"role":"assistant",'
                    b'"content":' + orjson.dumps(text) + b'},"done":false}\n')  # fmt: skip
        return (self._head + created_at().encode() + b'","response":' + orjson.dumps(text)
                + b',"done":false}\n')  # fmt: skip

    def _line(self, fields: JSON) -> bytes:
        obj: JSON = {"model": self.model, "created_at": created_at()}
        if self._mode == "chat":
            obj["message"] = {"role": "assistant", "content": "", **fields}
        else:
            obj["response"] = fields.get("content", "")
            if "thinking" in fields:
                obj["thinking"] = fields["thinking"]
        obj["done"] = False
        return orjson.dumps(obj) + b"\n"

    def feed(self, chunk: JSON) -> bytes:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or ():
            if self._timing.first is None:
                self._timing.first = time.perf_counter_ns()
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            delta = delta if isinstance(delta, dict) else {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking:
                out += self._line({"thinking": thinking})
            if text:
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                self._collect(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _collect(self, call: JSON) -> None:
        fn = call.get("function") or {}
        slot = self._calls.setdefault(
            call.get("index", 0), {"id": None, "function": {"name": "", "arguments": ""}}
        )
        slot["id"] = slot["id"] or call.get("id")
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def fail(self, exc: GatewayError) -> bytes:
        return error_line(exc)

    def close(self) -> bytes:
        """The calls (whole), then the done line."""
        out = b""
        if self._calls and self._mode == "chat":
            calls = [self._calls[k] for k in sorted(self._calls)]
            out += self._line({"tool_calls": _ollama_calls(calls)})
        self._timing.end = time.perf_counter_ns()
        last: JSON = {"model": self.model, "created_at": created_at()}
        if self._mode == "chat":
            last["message"] = {"role": "assistant", "content": ""}
        else:
            last["response"] = ""
        last |= {"done": True, "done_reason": _DONE.get(str(self._finish), "stop")}
        return out + orjson.dumps({**last, **self._timing.done(self._usage)}) + b"\n"
