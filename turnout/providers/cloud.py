"""What the cloud dialects (Anthropic, Gemini) share when they translate OpenAI requests and
answers: output limits, stop lists, inline images and tool call arguments (usage and stream chunks
are built by turnout/wire/openai.py).

Pure functions; no I/O. Errors name the OpenAI field at fault, in the
client's terms (``messages[2].content[1].image_url.url``), never the vendor's.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from ..errors import CapabilityError, InvalidRequestError
from .base import JSON

__all__ = [
    "call_id",
    "inline_image",
    "invalid",
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
