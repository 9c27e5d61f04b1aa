"""What the cloud dialects (Anthropic, Gemini) share when they translate OpenAI requests and
answers: output limits, stop lists, inline images, tool call arguments, usage and stream chunks.

Pure functions and one small chunk builder; no I/O. Errors name the OpenAI field at fault, in the
client's terms (``messages[2].content[1].image_url.url``), never the vendor's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ..errors import CapabilityError, InvalidRequestError
from .base import JSON

__all__ = [
    "ChunkMaker",
    "call_id",
    "inline_image",
    "invalid",
    "openai_usage",
    "output_limit",
    "refuse_unsupported",
    "stop_list",
    "system_text",
    "tool_arguments",
]

# How each image format's bytes begin once base64-encoded (OpenAI's schema allows bare base64).
_MAGIC = {"iVBORw0KGgo": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif"}


def invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


def call_id() -> str:
    """A tool call id in OpenAI's form, for a vendor that gives none (Gemini)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def output_limit(body: JSON) -> int | None:
    """The client's output token limit: ``max_completion_tokens`` (OpenAI's current name) wins
    over the deprecated ``max_tokens``."""
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    return limit if isinstance(limit, int) else None


def stop_list(body: JSON) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    return list(stop) if isinstance(stop, list) and stop else None


def refuse_unsupported(body: JSON, vendor: str, *, several_choices: bool = False) -> None:
    """Fields with no counterpart a faithful answer could come from: a clear 400, not a silent
    drop that would hand the client something other than what it asked for."""
    if not several_choices and (body.get("n") or 1) > 1:
        raise CapabilityError(
            f"{vendor} generates one choice per request; 'n' must be 1.", param="n"
        )
    if body.get("logprobs"):
        raise CapabilityError(
            f"turnout does not translate {vendor}'s log probabilities; leave 'logprobs' unset.",
            param="logprobs",
        )


def system_text(content: Any, param: str) -> str:
    """A system or developer message's content as plain text (strings and text parts only)."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content or ()):
        if part.get("type") != "text":
            raise CapabilityError(
                "A system message may carry text only.", param=f"{param}[{j}].type"
            )
        texts.append(part.get("text") or "")
    return "\n".join(texts)


def inline_image(url: str, param: str, vendor: str) -> tuple[str, str]:
    """``(media_type, base64 data)`` of an image sent inline: a ``data:<type>;base64,`` URI, or
    bare base64 whose first bytes tell its format."""
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        media_type = head[5:].removesuffix(";base64")
        if not comma or not head.endswith(";base64") or not data:
            raise CapabilityError(
                f"{vendor} takes inline images as base64; this data: URI is not "
                "data:<type>;base64,<data>.",
                param=param,
            )
        return media_type.lower(), data
    for prefix, media_type in _MAGIC.items():
        if url.startswith(prefix):
            return media_type, url
    if url.startswith("UklGR"):  # RIFF: WebP is the only image format in one
        return "image/webp", url
    raise CapabilityError(
        f"{vendor} cannot fetch {url[:80]!r}; send the image as a data:<type>;base64,<data> URI.",
        param=param,
    )


def tool_arguments(raw: Any, param: str, vendor: str) -> JSON:
    """An assistant tool call's ``arguments`` (a JSON string, as OpenAI sends them) as the object
    a vendor takes; an empty string is no arguments."""
    if isinstance(raw, dict):
        return raw
    try:
        args = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise invalid(
            param, f"{vendor} takes tool call arguments as a JSON object, got {str(raw)[:80]!r}"
        )
    return args


def openai_usage(
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
    usage: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
    }
    if cached or written:
        details = {"cached_tokens": cached}
        usage["prompt_tokens_details"] = (
            {**details, "cache_write_tokens": written} if written else details
        )
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


class ChunkMaker:
    """OpenAI ``chat.completion.chunk`` objects sharing one id, created time and model."""

    __slots__ = ("created", "id", "model")

    def __init__(self, model: str, chunk_id: str | None = None) -> None:
        self.id = chunk_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def choice(self, delta: JSON, finish: str | None = None, index: int = 0) -> JSON:
        entry = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._chunk([entry])

    def usage(self, usage: JSON) -> JSON:
        """The usage-only chunk ``stream_options.include_usage`` asks for (``choices: []``)."""
        return {**self._chunk([]), "usage": usage}

    def _chunk(self, choices: list[JSON]) -> JSON:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        return {**head, "model": self.model, "choices": choices}
