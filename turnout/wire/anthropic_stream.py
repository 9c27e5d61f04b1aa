"""Anthropic's Messages API as a client dialect, the way back: errors in Anthropic's shape
(`error_body`, `error_event`) and the gateway's internal (OpenAI-shaped) stream as Anthropic's
named SSE events (`MessageStream`), in the documented order (shared/reference/runtimes.md §2;
held against the documents in tests/fixtures/anthropic/).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from ..errors import BackendProtocolError, GatewayError
from .anthropic import JSON, stop_reason, usage_from_openai

__all__ = ["MessageStream", "error_body", "error_event", "error_type", "event"]

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",  # the SDK raises RequestTooLargeError by the status
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# Errors.


def error_type(status: int) -> str:
    return _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: GatewayError) -> tuple[int, JSON]:
    """``(status, body)`` of an error in Anthropic's shape. "No backend free" (the queue is full)
    is Anthropic's ``overloaded_error`` with its status 529, which its clients retry."""
    status = 529 if exc.status == 503 else exc.status
    error = {"type": error_type(status), "message": exc.message}
    return status, {"type": "error", "error": error}


def error_event(exc: GatewayError) -> bytes:
    """An error after the stream began: Anthropic's ``error`` event (the SDK raises on it)."""
    return event(b"error", error_body(exc)[1])


# Streams: the internal chunks as Anthropic's named events.


def event(name: bytes, obj: JSON) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


_PING = event(b"ping", {"type": "ping"})
_DELTA_HEAD = {
    kind: b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"' + kind.encode() + b'","' + field + b'":'
    for kind, field in (
        ("text_delta", b"text"),
        ("thinking_delta", b"thinking"),
        ("signature_delta", b"signature"),
        ("input_json_delta", b"partial_json"),
    )
}
_MESSAGE_STOP = event(b"message_stop", {"type": "message_stop"})


class MessageStream:
    """OpenAI-shaped chunks in, Anthropic's events out, in its documented order: ``message_start``;
    per block ``content_block_start``, its deltas, ``content_block_stop`` (a ``ping`` after the
    first start); then ``message_delta`` (``stop_reason``, cumulative usage) and
    ``message_stop``. A block stays open until the next one starts or the message ends, so a
    ``tool_use`` block gets every ``input_json_delta`` before its stop."""

    __slots__ = (
        "_block", "_calls", "_finish", "_index", "_kind", "_model", "_started", "_stops",
        "_usage", "has_calls", "id",
    )  # fmt: skip

    def __init__(self, model: str, stops: list[str] | None = None) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self._model = model
        self._stops = stops or []
        self._started = False
        self._index = -1  # the open block's index, -1 before the first
        self._kind: str | None = None  # the open block's type
        self._block: Any = None  # the open tool call's OpenAI index
        self._calls: dict[Any, int] = {}  # OpenAI tool call index -> block index
        self._finish: tuple[Any, JSON] | None = None
        self._usage: JSON = {}
        self.has_calls = False

    def start(self) -> bytes:
        """``message_start``: called with the first chunk (or at once, by a front that commits
        early); its usage is zeros until ``message_delta`` gives the counts."""
        self._started = True
        usage = {"input_tokens": 0, "cache_creation_input_tokens": 0}
        usage |= {"cache_read_input_tokens": 0, "output_tokens": 0}
        message: JSON = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
        }
        message |= {"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        return event(b"message_start", {"type": "message_start", "message": message})

    def feed(self, chunk: JSON) -> bytes:
        out = b"" if self._started else self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking:
                out += self._open("thinking", None) + self._delta("thinking_delta", thinking)
            if delta.get("content"):
                out += self._open("text", None) + self._delta("text_delta", delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = (choice["finish_reason"], choice)
        return out

    def close(self) -> bytes:
        """The end of the stream: the open block's stop, ``message_delta``, ``message_stop``."""
        out = (b"" if self._started else self.start()) + self._stop()
        finish, choice = self._finish or ("stop", {})
        reason, sequence = stop_reason(finish, self.has_calls, choice, self._stops)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        usage = usage_from_openai(self._usage)
        out += event(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + _MESSAGE_STOP

    def fail(self, exc: GatewayError) -> bytes:
        """The stream broke after it began: Anthropic's ``error`` event."""
        return error_event(exc)

    def _open(self, kind: str, block: JSON | None, call: Any = None) -> bytes:
        """Open a block of ``kind`` unless it is the one open (a tool call's block is its own)."""
        if self._kind == kind and (kind != "tool_use" or self._block == call):
            return b""
        out = self._stop()
        self._index += 1
        self._kind, self._block = kind, call
        if block is None:
            block = {"type": "text", "text": ""}
            if kind == "thinking":
                block = {"type": "thinking", "thinking": "", "signature": ""}
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        out += event(b"content_block_start", start)
        return out + (_PING if self._index == 0 else b"")

    def _stop(self) -> bytes:
        if self._kind is None:
            return b""
        out = b""
        if self._kind == "thinking":  # as llama.cpp and Anthropic close one: a signature
            out = self._delta("signature_delta", "")
        self._kind = None
        stop = {"type": "content_block_stop", "index": self._index}
        return out + event(b"content_block_stop", stop)

    def _delta(self, kind: str, value: str) -> bytes:
        """A ``content_block_delta`` event, written straight as bytes (one per token)."""
        return _DELTA_HEAD[kind] % self._index + orjson.dumps(value) + b"}}\n\n"

    def _call(self, call: JSON) -> bytes:
        position = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        if position not in self._calls:
            self.has_calls = True
            use = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"}
            out = self._open(
                "tool_use", {**use, "name": fn.get("name") or "", "input": {}}, position
            )
            self._calls[position] = self._index
        elif self._block != position or self._kind != "tool_use":
            # A fragment for a call whose block is already closed: Anthropic cannot reopen a
            # block. Runtimes stream calls one after another; one that interleaves them gets a
            # clear error rather than arguments sent to the wrong block or lost.
            raise BackendProtocolError(
                f"the backend interleaved the arguments of tool call {position} with another "
                "call's; Anthropic's stream cannot carry that (ask without streaming)"
            )
        arguments = fn.get("arguments")
        if arguments:
            out += self._delta("input_json_delta", arguments)
        return out
