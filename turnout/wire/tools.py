"""Tool calls in OpenAI's contract, whatever a backend sent.

A streamed call is, per tool-call index, one delta carrying ``id``, ``type`` and
``function.name`` (with the first ``arguments`` fragment), then deltas carrying only
``function.arguments`` fragments; the choice finishes with ``finish_reason: "tool_calls"``.
Backends stray from that: one repeats ``id`` and ``name`` in every delta (llama-cpp-python),
another sends each call whole with its arguments as an object (Ollama), another leaves out the
``id`` or the ``type``. `ToolCallStream` puts one stream's chunks right as they pass (only chunks
that carry tool calls, or finish a choice that had some, are touched); `tidy_reply` does the same
for a whole reply, and `merge_deltas` assembles a reply's calls from a stream's deltas.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .types import Chunk

__all__ = [
    "ToolCallStream",
    "arguments_text",
    "call_id",
    "mend_tool_calls",
    "merge_deltas",
    "tidy_reply",
]

JSON = dict[str, Any]


def call_id() -> str:
    """A fresh tool-call id in OpenAI's style."""
    return f"call_{uuid.uuid4().hex[:24]}"


def arguments_text(arguments: Any) -> str:
    """A call's arguments as the JSON string clients parse (some backends send an object)."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments).decode()


class ToolCallStream:
    """One stream's tool-call deltas in OpenAI's shape (see the module's docstring).

    Call it on each chunk's JSON; it returns the same object when nothing had to change, else a
    mended copy (so a forwarded chunk's raw bytes are kept only when they are still right).
    """

    __slots__ = ("_calls", "_open")

    def __init__(self) -> None:
        self._calls: dict[tuple[int, int], str] = {}  # (choice, call index) -> id sent
        self._open: set[int] = set()  # choices that carried tool calls

    def __call__(self, data: JSON) -> JSON:
        choices = data.get("choices")
        if not choices:
            return data
        mended: list[Any] | None = None
        for position, choice in enumerate(choices):
            fixed = self._choice(choice) if isinstance(choice, dict) else choice
            if fixed is not choice:
                if mended is None:
                    mended = list(choices)
                mended[position] = fixed
        return data if mended is None else {**data, "choices": mended}

    def _choice(self, choice: JSON) -> JSON:
        index = int(choice.get("index") or 0)
        delta = choice.get("delta")
        parts = delta.get("tool_calls") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason")
        if not parts:
            if finish == "stop" and index in self._open:
                return {**choice, "finish_reason": "tool_calls"}
            return choice
        self._open.add(index)
        fixed_parts = [self._part(index, k, p) for k, p in enumerate(parts) if isinstance(p, dict)]
        out = {**choice, "delta": {**(delta or {}), "tool_calls": fixed_parts}}
        if finish == "stop":
            out["finish_reason"] = "tool_calls"
        return out

    def _part(self, choice: int, position: int, part: JSON) -> JSON:
        number = part.get("index")
        number = number if isinstance(number, int) and not isinstance(number, bool) else position
        fn = part.get("function")
        fn = fn if isinstance(fn, dict) else {}
        arguments = arguments_text(fn.get("arguments"))
        key = (choice, number)
        if key in self._calls:  # a later fragment: its arguments alone
            return {"index": number, "function": {"arguments": arguments}}
        given = part.get("id")
        ident = given if isinstance(given, str) and given else call_id()
        self._calls[key] = ident
        return {
            "index": number,
            "id": ident,
            "type": "function",
            "function": {"name": fn.get("name") or "", "arguments": arguments},
        }


def merge_deltas(calls: dict[int, JSON], parts: Any) -> None:
    """Fold one delta's ``tool_calls`` into ``calls`` (index -> whole call): the first id, type
    and name of each index, and every arguments fragment in order. A name repeated in later
    deltas is not appended again."""
    for position, part in enumerate(parts if isinstance(parts, list) else ()):
        if not isinstance(part, dict):
            continue
        number = part.get("index")
        number = number if isinstance(number, int) and not isinstance(number, bool) else position
        fn: JSON = part["function"] if isinstance(part.get("function"), dict) else {}
        merged = calls.get(number)
        if merged is None:
            merged = calls[number] = {
                "id": part.get("id") or call_id(),
                "type": "function",
                "function": {"name": fn.get("name") or "", "arguments": ""},
            }
        elif not merged["function"]["name"] and fn.get("name"):
            merged["function"]["name"] = fn["name"]
        merged["function"]["arguments"] += arguments_text(fn.get("arguments"))


def tidy_reply(result: JSON) -> JSON:
    """A whole chat reply's tool calls in OpenAI's shape, in place: each with an ``id``, a
    ``type`` and string ``arguments``; ``finish_reason`` ``tool_calls``; ``content`` null when
    there is no text."""
    for choice in result.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
            continue
        calls = message["tool_calls"]
        for call in calls:
            if not isinstance(call, dict):
                continue
            if not call.get("id"):
                call["id"] = call_id()
            call["type"] = "function"
            fn = call.get("function")
            if isinstance(fn, dict):
                fn["arguments"] = arguments_text(fn.get("arguments")) or "{}"
        if choice.get("finish_reason") in (None, "stop"):
            choice["finish_reason"] = "tool_calls"
        if message.get("content") == "":
            message["content"] = None
    return result


async def mend_tool_calls(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """A stream's tool calls in OpenAI's contract (`ToolCallStream`), whatever the dialect; a
    chunk that needed nothing keeps its raw bytes."""
    mend = ToolCallStream()
    try:
        async for chunk in chunks:
            data = mend(chunk.data)
            yield chunk if data is chunk.data else Chunk(data)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
