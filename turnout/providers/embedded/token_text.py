"""The text side of token-by-token generation (`turnout.providers.embedded.thread_engine`): chats as
template turns, the named template for an architecture, stop strings cut across token pieces,
OpenAI's ``logit_bias`` checked, and the OpenAI chunks of one generation."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidRequestError
from ...wire.openai import ChunkMaker, usage_dict
from ..base import JSON, Call
from ..chat_templates import DEFAULT_TEMPLATE

__all__ = ["Chunks", "StopScanner", "chat_turns", "parse_logit_bias", "template_for"]

#: named templates by the architecture a model's config or header names (lower-cased prefix)
_TEMPLATE_BY_ARCH = (("gemma", "gemma"), ("llama", "llama-3"), ("qwen", "chatml"))


def template_for(architecture: str | None) -> str:
    """The named template of a model that brings none: by architecture, else ``chatml``."""
    arch = (architecture or "").lower()
    return next((name for prefix, name in _TEMPLATE_BY_ARCH if arch.startswith(prefix)), None) or (
        DEFAULT_TEMPLATE
    )


def chat_turns(messages: list[JSON]) -> list[tuple[str, str]]:
    """(role, text) pairs of an OpenAI chat: text parts joined, ``developer`` read as system."""
    out = []
    for message in messages:
        role = message.get("role") or "user"
        role = {"developer": "system", "tool": "user", "function": "user"}.get(role, role)
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(p.get("text") or "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        out.append((role, str(content or "")))
    return out


class StopScanner:
    """Cuts generated text at the first stop string. Text that could be the start of a stop
    string is held back until the next pieces tell, so a stop string never reaches the client."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be sent now; sets ``stopped`` when a stop string appeared."""
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return text[:cut]
        keep = max((_overlap(text, s) for s in self.stops), default=0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is held back, once generation ended without a stop string."""
        text, self.held = self.held, ""
        return text


def parse_logit_bias(value: Any) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (token ids as strings -> -100..100) as ids -> floats."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequestError("expected an object of token id -> bias", param="logit_bias")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"{key!r} is not a token id", param="logit_bias", code="invalid_value"
            ) from None
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise InvalidRequestError(
                f"the bias of token {key} must be a number from -100 to 100",
                param="logit_bias",
                code="invalid_value",
            )
        out[token] = float(bias)
    return out or None


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop`` (shorter than it)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0


class Chunks:
    """OpenAI stream chunks of one generation: ``chat.completion.chunk`` (the role first) or
    ``text_completion``, sharing one id; a finish chunk, then a ``choices: []`` usage chunk."""

    __slots__ = ("chat", "chunks")

    def __init__(self, call: Call) -> None:
        self.chat = call.kind == "chat"
        self.chunks = ChunkMaker(call.kind, call.model)

    def role(self) -> JSON:
        if self.chat:
            return self.chunks.choice({"role": "assistant", "content": ""})
        return self.chunks.text("")

    def text(self, text: str) -> JSON:
        return self.chunks.choice({"content": text}) if self.chat else self.chunks.text(text)

    def finish(self, reason: str) -> JSON:
        return self.chunks.choice({}, reason) if self.chat else self.chunks.text("", reason)

    def usage(self, prompt: int, completion: int) -> JSON:
        return self.chunks.usage(usage_dict(prompt, completion))
