"""The values every layer shares: a request as the gateway carries it (`Call`), a stream chunk
(`Chunk`), token usage (`Usage`), what a backend can do (`Capabilities`) and what a request needs
of it (`needs`). They sit below everything (fronts, gateway, routing, providers and telemetry
import them from here) and import nothing of turnout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "JSON",
    "KINDS",
    "Call",
    "Capabilities",
    "Chunk",
    "Kind",
    "Native",
    "Relayed",
    "Usage",
    "needs",
]

#: a JSON object as parsed by orjson
JSON = dict[str, Any]

#: what a request asks for: a chat, a text completion or embeddings
Kind = Literal["chat", "completion", "embedding"]
KINDS: tuple[Kind, ...] = ("chat", "completion", "embedding")


@dataclass(slots=True, frozen=True)
class Native:
    """A request as its client sent it, in a dialect other than the internal one (named by its
    front, as providers declare the dialects they serve in turnout/providers/presets.py). A
    backend that speaks that dialect is sent this body (only ``model`` rewritten) and its
    reply's bytes go back as they came: passthrough."""

    dialect: str
    body: JSON


@dataclass(slots=True)
class Call:
    """One request as the provider sees it: the client's body with ``model`` set to the backend's
    own model name, and the stream settings the gateway decided. ``native``: set by the router
    when this backend is to be sent the client's own request instead (`Native`)."""

    kind: Kind
    body: JSON
    model: str
    stream: bool = False
    native: Native | None = None


class Relayed(dict[str, Any]):
    """A reply relayed as the backend sent it (passthrough): ``raw``, its bytes, in the client's
    own dialect. As a dict it holds only the ``usage`` read from them, in OpenAI's shape, for
    statistics, limits and the usage ledger."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes, usage: JSON | None) -> None:
        super().__init__({"usage": usage} if usage else {})
        self.raw = raw


@dataclass(slots=True)
class Chunk:
    """One OpenAI stream chunk. ``raw`` holds the backend's JSON bytes when they can be forwarded
    unchanged, so a pass-through stream is never re-serialised. In a relayed stream (`Native`)
    ``raw`` is the backend's own bytes in the client's dialect and ``data`` holds only the usage
    read from them so far (OpenAI's shape), if any."""

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
