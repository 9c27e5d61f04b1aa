"""Mending what OpenAI-compatible runtimes answer slightly off the spec, as pure functions that
`OpenAICompatProvider` applies (facts: shared/reference/runtimes.md §1, §10–§13, §16.2, §17).

Each mend touches only what is off, so a reply that is already right passes unchanged (and a
stream chunk keeps its raw bytes, forwarded without re-serialising).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from ..wire.openai import chunk_object
from .base import JSON, Chunk, Kind
from .http import json_or_none

__all__ = [
    "StreamMender",
    "fastchat_status",
    "mend_response",
    "pool_token_embeddings",
    "stringify_arguments",
]


def stringify_arguments(calls: Any) -> bool:
    """Tool-call ``arguments`` sent as JSON objects (Ollama-style) become the JSON strings OpenAI
    clients parse, in place; True if anything changed."""
    changed = False
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), dict | list):
            function["arguments"] = orjson.dumps(function["arguments"]).decode()
            changed = True
    return changed


def mend_response(result: JSON) -> JSON:
    """A non-streaming chat or completion reply: tool arguments as strings, and ``finish_reason``
    ``tool_calls`` when the model called tools (KoboldCpp keeps ``stop``)."""
    for choice in result.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not message.get("tool_calls"):
            continue
        stringify_arguments(message["tool_calls"])
        if choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"
    return result


class StreamMender:
    """One stream's chunks, put into the spec's shape as they pass:

    - usage riding on a chunk that still has choices (mistral.rs puts it on the finish chunk;
      TabbyAPI repeats the finish choice beside it) is split off into the ``choices: []`` usage
      chunk that clients read last, and a finish already sent is not sent twice;
    - a usage chunk whose ``object`` is ``chat.completion`` (MLX) becomes a chunk;
    - tool-call arguments sent as objects become strings;
    - a text completion choice without ``logprobs`` (KoboldCpp), which OpenAI's schema
      requires, gets ``logprobs: null``;
    - every chunk carries the first one's ``id`` and ``created`` (llama-server stamps each chunk
      with the second it was sent in, so a stream crossing a second changes ``created``).
    """

    __slots__ = ("_finished", "_head", "_object", "_text")

    def __init__(self, kind: Kind) -> None:
        self._object = chunk_object(kind)
        self._text = kind == "completion"
        self._finished: set[int] = set()
        self._head: tuple[Any, Any] | None = None  # (id, created) of the first chunk

    def __call__(self, chunk: Chunk) -> list[Chunk]:
        data = chunk.data
        choices = data.get("choices")
        if not isinstance(choices, list):
            return [chunk]
        changed = self._mend_choices(choices)
        head = (data.get("id"), data.get("created"))
        if self._head is None:
            self._head = head
        elif head != self._head:
            data = {**data, "id": self._head[0], "created": self._head[1]}
            changed = True
        usage = data.get("usage")
        if usage and choices:
            return self._split(data, choices, usage)
        if usage is None and "usage" in data and self._text:
            # mistral.rs's "usage": null on every chunk; a completion's usage must be an object
            data = {k: v for k, v in data.items() if k != "usage"}
            changed = True
        elif usage and data.get("object") != self._object:
            data = {**data, "object": self._object}
            changed = True
        self._note_finished(choices)
        return [Chunk(data)] if changed else [chunk]

    def _mend_choices(self, choices: list[Any]) -> bool:
        changed = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and stringify_arguments(delta.get("tool_calls")):
                changed = True
            if self._text and "logprobs" not in choice:
                choice["logprobs"] = None
                changed = True
        return changed

    def _split(self, data: JSON, choices: list[Any], usage: Any) -> list[Chunk]:
        fresh = [c for c in choices if not self._repeated_finish(c)]
        self._note_finished(fresh)
        tail = {k: v for k, v in data.items() if k not in ("choices", "usage")}
        out = []
        if fresh:
            out.append(
                Chunk(
                    {**tail, "choices": fresh}
                    if self._text
                    else {**data, "choices": fresh, "usage": None}
                )
            )
        out.append(Chunk({**tail, "object": self._object, "choices": [], "usage": usage}))
        return out

    def _note_finished(self, choices: list[Any]) -> None:
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finished.add(int(choice.get("index") or 0))

    def _repeated_finish(self, choice: Any) -> bool:
        """TabbyAPI's usage chunk: an empty delta repeating a finish already sent."""
        if not isinstance(choice, dict) or int(choice.get("index") or 0) not in self._finished:
            return False
        delta = choice.get("delta") or {}
        return not any(delta.get(k) for k in ("content", "tool_calls", "reasoning_content"))


def pool_token_embeddings(result: JSON) -> JSON:
    """llama-cpp-python answers one vector per *token* (a list of lists) for a model without a
    pooling type (Gemma, most chat models); OpenAI clients need one vector per input. Such vectors
    are mean-pooled and L2-normalised, as llama.cpp's own ``--pooling mean`` does; flat ones pass
    unchanged."""
    for item in result.get("data") or ():
        vectors = item.get("embedding") if isinstance(item, dict) else None
        if not (isinstance(vectors, list) and vectors and isinstance(vectors[0], list)):
            continue
        mean = [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]
        norm = math.sqrt(sum(v * v for v in mean)) or 1.0
        item["embedding"] = [v / norm for v in mean]
    return result


def fastchat_status(status: int, body: bytes) -> int:
    """FastChat answers every error with HTTP 400 and puts the real class in its own code
    (``{"object": "error", "code": 40301}``: 401xx auth, 40301 unknown model, 429xx rate limit,
    500xx server failure); the status that code means."""
    obj = json_or_none(body)
    code = obj.get("code") if obj is not None and obj.get("object") == "error" else None
    if not isinstance(code, int) or not 10000 <= code < 60000:
        return status
    if code == 40301:  # INVALID_MODEL: "Only ... allowed now, your model ..."
        return 404
    return code // 100
