"""What turnout does itself for runtimes that lack a feature: a stream made from a whole reply,
stop strings applied to a reply, and a clear refusal of what cannot be emulated."""

from __future__ import annotations

from typing import Any

from ..errors import CapabilityError
from ..wire.openai import ChunkMaker
from .base import JSON, Kind

__all__ = [
    "chunks_from_response",
    "cut_at_stop",
    "refuse_unsupported",
    "single_prompt",
    "unsupported",
]


def unsupported(message: str, param: str) -> CapabilityError:
    """A 400 naming the field, for something this backend cannot do; another backend serving the
    same model may, so the router moves on to it (only the last refusal reaches the client)."""
    error = CapabilityError(message, param=param)
    error.fallback = True
    return error


def refuse_unsupported(body: JSON, runtime: str) -> None:
    """Raise a 400 naming the field when a request asks for tools, a JSON mode or log
    probabilities of a runtime that has none of them (dropping them would change the answer)."""
    if body.get("tools") and body.get("tool_choice") != "none":
        raise unsupported(f"{runtime} cannot call tools.", "tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        raise unsupported(f"{runtime} cannot constrain its output to JSON.", "response_format")
    if body.get("logprobs"):
        raise unsupported(f"{runtime} cannot return log probabilities.", "logprobs")


def single_prompt(prompt: Any, runtime: str) -> Any:
    """A completion's ``prompt`` as the one string such runtimes take."""
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise unsupported(
                f"{runtime} completes one text prompt per request (not several, nor token ids).",
                "prompt",
            )
        return prompt[0]
    return prompt


def cut_at_stop(text: str, stop: Any) -> tuple[str, bool]:
    """``text`` up to the first of the ``stop`` strings; True if one was found."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def chunks_from_response(result: JSON, kind: Kind) -> list[JSON]:
    """A whole reply as the stream OpenAI would have sent: per choice one content chunk (the role
    with it) and a finish chunk, then the ``choices: []`` usage chunk."""
    chunks = ChunkMaker(kind, result.get("model", ""), result.get("id"), result.get("created"))
    out: list[JSON] = []
    for choice in result.get("choices") or ():
        index = choice.get("index", 0)
        finish = choice.get("finish_reason") or "stop"
        if kind == "chat":
            content = (choice.get("message") or {}).get("content") or ""
            out.append(chunks.choice({"role": "assistant", "content": content}, None, index))
            out.append(chunks.choice({}, finish, index))
        else:
            out.append(chunks.text(choice.get("text") or "", None, index))
            out.append(chunks.text("", finish, index))
    if isinstance(result.get("usage"), dict):
        out.append(chunks.usage(result["usage"]))
    return out
