"""The values every layer shares: a request as the gateway carries it (`Call`), a stream chunk
(`Chunk`), token usage (`Usage`), what a backend can do (`Capabilities`) and what a request needs
of it (`needs`). They sit below everything (fronts, gateway, routing, providers and telemetry
import them from here) and import nothing of turnout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["JSON", "KINDS", "Call", "Capabilities", "Chunk", "Kind", "Usage", "needs"]

#: a JSON object as parsed by orjson
JSON = dict[str, Any]

#: what a request asks for: a chat, a text completion or embeddings
Kind = Literal["chat", "completion", "embedding"]
KINDS: tuple[Kind, ...] = ("chat", "completion", "embedding")


@dataclass(slots=True)
class Call:
    """One request as the provider sees it: the client's body with ``model`` set to the backend's
    own model name, and the stream settings the gateway decided."""

    kind: Kind
    body: JSON
    model: str
    stream: bool = False


@dataclass(slots=True)
class Chunk:
    """One OpenAI stream chunk. ``raw`` holds the backend's JSON bytes when they can be forwarded
    unchanged, so a pass-through stream is never re-serialised."""

    data: JSON
    raw: bytes | None = None


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts; `turnout.wire.openai.usage_dict` writes them in OpenAI's shape."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True, frozen=True)
class Capabilities:
    """What a backend can do for one model. Dialects set their defaults; a model entry in the
    configuration overrides them (``supports_tools``, ``supports_vision``, ``context_length``,
    and the provider's ``streaming``). A request that needs something a target lacks is never
    sent to that target."""

    chat: bool = True
    completion: bool = True
    embeddings: bool = True
    streaming: bool = True
    tools: bool = True
    vision: bool = False
    json_schema: bool = True
    context_length: int | None = None

    def lacks(self, required: frozenset[str]) -> list[str]:
        """The names in ``required`` (see `needs`) this model cannot do, in a stable order."""
        return sorted(name for name in required if not getattr(self, name))


_KIND_NEEDS: dict[str, str] = {"chat": "chat", "completion": "completion"}


def needs(kind: Kind, body: JSON) -> frozenset[str]:
    """The capabilities a validated request needs: ``chat``/``completion``/``embeddings``, plus
    ``streaming``, ``tools``, ``vision`` and ``json_schema`` when the request uses them."""
    required = {_KIND_NEEDS.get(kind, "embeddings")}
    if body.get("stream"):
        required.add("streaming")
    if body.get("tools") and body.get("tool_choice") != "none":
        required.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        required.add("json_schema")
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "image_url" for p in content
        ):
            required.add("vision")
            break
    return frozenset(required)
