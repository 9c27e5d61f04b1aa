"""OpenAI's shapes, built in one place: what every dialect's answers are translated into, what the
gateway adds to them, and which request field asks for each capability.

- object names: `chunk_object`, `reply_object`, and a reply's id (`reply_id`);
- replies and chunks: `reply`, `ChunkMaker` (one stream's chunks), `usage_chunk`;
- token usage: `usage_dict`, `embedding_usage`, `count_usage` (counted by the backend's
  tokenizer, else estimated at four characters a token);
- texts: `prompt_text` (what a request sends), `reply_text` (what a reply generated),
  `choice_texts` (what a stream chunk carries);
- `lacking`: the refusal of a request needing what a backend lacks, naming the field that asks.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import CapabilityError
from .types import JSON, Kind

__all__ = [
    "CAPABILITY_PARAM",
    "ChunkMaker",
    "choice_texts",
    "chunk_object",
    "count_usage",
    "embedding_base64",
    "embedding_list",
    "embedding_usage",
    "lacking",
    "prompt_text",
    "reply_body",
    "reply_id",
    "reply_object",
    "reply_text",
    "usage_chunk",
    "usage_dict",
]

_CHUNK_OBJECT: dict[str, str] = {"chat": "chat.completion.chunk", "completion": "text_completion"}
_REPLY_OBJECT: dict[str, str] = {"chat": "chat.completion", "completion": "text_completion"}


def chunk_object(kind: Kind) -> str:
    """A stream chunk's ``object``: ``chat.completion.chunk``, or ``text_completion``."""
    return _CHUNK_OBJECT.get(kind, "chat.completion.chunk")


def reply_object(kind: Kind) -> str:
    """A whole reply's ``object``: ``chat.completion``, or ``text_completion``."""
    return _REPLY_OBJECT.get(kind, "chat.completion")


def reply_id(kind: Kind) -> str:
    """A fresh reply id in OpenAI's form: ``chatcmpl-…`` for a chat, ``cmpl-…`` otherwise."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


# Usage.


def usage_dict(
    prompt: int,
    completion: int,
    *,
    cached: int = 0,
    written: int = 0,
    reasoning: int = 0,
    total: int | None = None,
) -> JSON:
    """OpenAI's ``usage``: prompt tokens include cached ones (read from or ``written`` to the
    cache), completion tokens reasoning ones."""
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
    }
    if cached or written:
        details = {"cached_tokens": cached}
        out["prompt_tokens_details"] = (
            {**details, "cache_write_tokens": written} if written else details
        )
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def embedding_usage(tokens: int) -> JSON:
    """An embedding list's ``usage``: prompt tokens only."""
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def count_usage(
    count_tokens: Callable[[str, str], Awaitable[int | None]],
    model: str,
    prompt: str,
    completion: str,
    *,
    at_once: bool = False,
) -> JSON:
    """The usage of a reply whose backend reported none (or a made-up one), counted by
    ``count_tokens(model, text)`` (a provider's tokenizer), one text after the other or both
    ``at_once``; a text it cannot count is estimated at four characters a token. Counting is best
    effort: an estimate beats no usage."""

    async def tokens(text: str) -> int:
        try:
            n = await count_tokens(model, text) if text else 0
        except Exception:
            n = None
        return n if n is not None else (len(text) + 3) // 4

    if at_once:
        counts = await asyncio.gather(tokens(prompt), tokens(completion))
        return usage_dict(counts[0], counts[1])
    return usage_dict(await tokens(prompt), await tokens(completion))


# Replies and chunks.


def reply_body(
    kind: Kind, ident: str | None, created: int, model: str, choices: list[JSON], used: JSON | None
) -> JSON:
    """A whole ``chat.completion`` or ``text_completion``."""
    return {
        "id": ident,
        "object": reply_object(kind),
        "created": created,
        "model": model,
        "choices": choices,
        "usage": used,
    }


def usage_chunk(kind: Kind, last: JSON, model: str, used: JSON) -> JSON:
    """The ``choices: []`` chunk that ends a stream with its usage (what
    ``stream_options.include_usage`` asks for), sharing the id, created time and model of the
    stream's ``last`` chunk (``model`` and now where there was none)."""
    return {
        "id": last.get("id", ""),
        "object": chunk_object(kind),
        "created": last.get("created", int(time.time())),
        "model": last.get("model", model),
        "choices": [],
        "usage": used,
    }


class ChunkMaker:
    """One stream's chunks (``chat.completion.chunk``, or ``text_completion`` for a text
    completion), sharing one id, created time and model; a dialect may set those from the
    backend's first event."""

    __slots__ = ("chat", "created", "id", "model", "object")

    def __init__(
        self, kind: Kind, model: str, chunk_id: str | None = None, created: int | None = None
    ) -> None:
        self.chat = kind == "chat"
        self.object = chunk_object(kind)
        self.id = chunk_id or reply_id(kind)
        self.created = created or int(time.time())
        self.model = model

    def chunk(self, choices: list[JSON]) -> JSON:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def choice(self, delta: JSON, finish: str | None = None, index: int = 0) -> JSON:
        """A chat chunk of one choice's ``delta``."""
        return self.chunk(
            [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )

    def text(self, text: str, finish: str | None = None, index: int = 0) -> JSON:
        """A text completion chunk of one choice's ``text``."""
        return self.chunk(
            [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]
        )

    def usage(self, used: JSON) -> JSON:
        """The usage-only chunk ``stream_options.include_usage`` asks for (``choices: []``)."""
        return {**self.chunk([]), "usage": used}


def embedding_list(vectors: Iterable[Any], model: str, used: JSON) -> JSON:
    """OpenAI's embedding list: one ``embedding`` object per input, in order."""
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": used}


def embedding_base64(vector: list[float]) -> str:
    """An embedding as OpenAI sends it for ``encoding_format: "base64"``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# Texts.


def prompt_text(kind: Kind, body: JSON) -> str:
    """The text a request sends: a chat's message texts, a completion's prompt(s), or an
    embedding's single input; for counting (and estimating) its tokens."""
    if kind == "embedding":
        value = body.get("input")
        return value if isinstance(value, str) else ""
    if kind != "chat":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        return "\n".join(p for p in prompt or () if isinstance(p, str))
    parts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
    return "\n".join(parts)


def reply_text(result: JSON) -> str:
    """The text a non-streaming reply generated, over all its choices."""
    out: list[str] = []
    for choice in result.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            out.append(text)
    return "".join(out)


def choice_texts(choices: list[JSON]) -> list[str]:
    """The text pieces a stream chunk's choices carry (a chat delta's content, or a text), tool
    calls' names and arguments included: they are generated tokens too."""
    out = []
    for choice in choices:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            out.append(text)
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for call in calls or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                out.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return out


# Capabilities.

#: the request field that asks for each capability (see `needs`)
CAPABILITY_PARAM: dict[str, str] = {
    "tools": "tools",
    "vision": "messages",
    "json_schema": "response_format",
    "streaming": "stream",
    "embeddings": "model",
    "completion": "model",
    "chat": "model",
}


def lacking(backend: str, missing: list[str], body: JSON) -> CapabilityError:
    """The refusal of a request needing capabilities (names of `Capabilities` fields) that a
    backend is declared to lack, naming the field that asks (for vision, the first image part);
    the configuration can declare them (``supports_tools`` ...). Another backend serving the same
    model may have them, so the router moves on to it (only the last refusal reaches the client).
    """
    param = CAPABILITY_PARAM.get(missing[0], "model")
    if missing[0] == "vision":
        param = _first_image(body) or param
    error = CapabilityError(
        f"Backend '{backend}' cannot serve this request: it lacks {', '.join(missing)} "
        f"(declare it in the configuration if the model can).",
        param=param,
    )
    error.fallback = True
    return error


def _first_image(body: JSON) -> str | None:
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                return f"messages[{i}].content[{j}]"
    return None
