"""What turnout does itself for runtimes that lack a feature: a stream made from a whole reply,
stop strings applied to a reply, and a clear refusal of what cannot be emulated."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..errors import CapabilityError
from .base import JSON, Kind

__all__ = [
    "chunks_from_response",
    "cut_at_stop",
    "lacking",
    "refuse_unsupported",
    "single_prompt",
    "unsupported",
]

_CHUNK_OBJECT = {"chat": "chat.completion.chunk", "completion": "text_completion"}
#: the request field that asks for each capability
_PARAM = {
    "tools": "tools",
    "vision": "messages",
    "json_schema": "response_format",
    "streaming": "stream",
    "embeddings": "model",
    "completion": "model",
    "chat": "model",
}


def unsupported(message: str, param: str) -> CapabilityError:
    """A 400 naming the field, for something this backend cannot do; another backend serving the
    same model may, so the router moves on to it (only the last refusal reaches the client)."""
    error = CapabilityError(message, param=param)
    error.fallback = True
    return error


def lacking(backend: str, missing: list[str], body: JSON) -> CapabilityError:
    """The refusal of a request needing capabilities (names of `Capabilities` fields) that the
    backend is declared to lack; the configuration can declare them (``supports_tools`` ...)."""
    param = _PARAM.get(missing[0], "model")
    if missing[0] == "vision":  # name the first image part
        for i, message in enumerate(body.get("messages") or ()):
            content = message.get("content") if isinstance(message, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else ()):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    param = f"messages[{i}].content[{j}]"
                    break
            if param != "messages":
                break
    return unsupported(
        f"Backend '{backend}' cannot serve this request: it lacks {', '.join(missing)} "
        f"(declare it in the configuration if the model can).",
        param,
    )


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
    head = {
        "id": result.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": _CHUNK_OBJECT.get(kind, "chat.completion.chunk"),
        "created": result.get("created") or int(time.time()),
        "model": result.get("model", ""),
    }
    out: list[JSON] = []
    for choice in result.get("choices") or ():
        index = choice.get("index", 0)
        body: JSON
        end: JSON
        if kind == "chat":
            message = choice.get("message") or {}
            body = {"delta": {"role": "assistant", "content": message.get("content") or ""}}
            end = {"delta": {}}
        else:
            body, end = {"text": choice.get("text") or ""}, {"text": ""}
        finish = choice.get("finish_reason") or "stop"
        for part, reason in ((body, None), (end, finish)):
            piece = {"index": index, **part, "logprobs": None, "finish_reason": reason}
            out.append({**head, "choices": [piece]})
    if isinstance(result.get("usage"), dict):
        out.append({**head, "choices": [], "usage": result["usage"]})
    return out
