"""llama-cpp-python's calls and replies in OpenAI's shapes: request arguments, a streamed
generation ending in a usage chunk, a reply assembled from a stream, token counts, embeddings."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ...config import ModelEntry
from ...errors import CapabilityError
from ..base import JSON, Call

__all__ = ["assemble", "embed", "generate", "prompt_text", "request_kwargs"]

# OpenAI request fields and the llama-cpp-python keyword each one becomes.
_CHAT_ARGS = (
    "messages", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "response_format",
    "tools", "tool_choice", "logprobs", "top_logprobs", "logit_bias", "grammar",
)  # fmt: skip
_COMPLETION_ARGS = (
    "prompt", "suffix", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "echo", "logprobs",
    "logit_bias", "grammar",
)  # fmt: skip


def generate(llm: Any, entry: ModelEntry, call: Call, kwargs: JSON) -> Iterator[JSON]:
    """Run one streamed generation in the worker thread; finish with a usage-only chunk."""
    create: Callable[..., Iterator[JSON]] = (
        llm.create_chat_completion if call.kind == "chat" else llm.create_completion
    )
    pieces: list[str] = []
    last: JSON = {}
    for chunk in create(**kwargs, stream=True):
        for choice in chunk.get("choices", ()):
            text = (
                choice.get("delta", {}).get("content")
                if call.kind == "chat"
                else choice.get("text")
            )
            if text:
                pieces.append(text)
        last = chunk
        yield chunk
    completion = _count(llm, "".join(pieces))
    prompt = _prompt_tokens(llm, entry, call)
    yield {
        "id": last.get("id", f"cmpl-{uuid.uuid4()}"),
        "object": last.get("object", "chat.completion.chunk"),
        "created": last.get("created", int(time.time())),
        "model": call.model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def request_kwargs(provider: str, call: Call) -> JSON:
    """llama-cpp-python's keyword arguments for an OpenAI request."""
    body = call.body
    names = _CHAT_ARGS if call.kind == "chat" else _COMPLETION_ARGS
    kwargs = {k: body[k] for k in names if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None and "max_tokens" not in kwargs:
        kwargs["max_tokens"] = body["max_completion_tokens"]
    if (body.get("n") or 1) > 1:
        raise CapabilityError(
            f"The embedded engine generates one choice per request; 'n' must be 1 "
            f"(provider '{provider}').",
            param="n",
        )
    if call.kind == "chat":
        _reject_images(provider, call.model, body["messages"])
    kwargs["model"] = call.model
    return kwargs


def assemble(call: Call, chunks: list[JSON]) -> JSON:
    """One OpenAI reply from a stream's chunks: text joined, tool calls merged by index, the
    last finish reason, and the usage chunk that `_generate` ends with."""
    first = chunks[0]
    pieces: list[str] = []
    calls: dict[int, JSON] = {}
    finish: str | None = None
    usage: JSON | None = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for part_of in chunk.get("choices", ()):
            finish = part_of.get("finish_reason") or finish
            delta = part_of.get("delta") or {}
            text = delta.get("content") if call.kind == "chat" else part_of.get("text")
            if text:
                pieces.append(text)
            for part in delta.get("tool_calls") or ():
                merged = calls.setdefault(
                    part.get("index", 0),
                    {
                        "id": part.get("id"),
                        "type": "function",
                        "function": {"name": "", "arguments": ""},
                    },
                )
                fn = part.get("function") or {}
                merged["id"] = merged["id"] or part.get("id")
                merged["function"]["name"] += fn.get("name") or ""
                merged["function"]["arguments"] += fn.get("arguments") or ""
    text = "".join(pieces)
    if call.kind == "chat":
        message: JSON = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice: JSON = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created", int(time.time())),
        "model": call.model,
        "choices": [choice],
        "usage": usage,
    }


def _reject_images(provider: str, model: str, messages: list[JSON]) -> None:
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url":
                raise CapabilityError(
                    f"The model '{model}' of provider '{provider}' does not accept images.",
                    param=f"messages[{i}].content[{j}]",
                )


def _count(llm: Any, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0


def prompt_text(entry: ModelEntry, call: Call) -> tuple[str, bool, bool]:
    """The prompt as the model reads it (the chat template applied, where llama-cpp-python knows
    it by name), whether that text already holds the special tokens (BOS), and whether it was
    templated (its special tokens are then parsed as such)."""
    if call.kind != "chat":
        prompt = call.body.get("prompt")
        if isinstance(prompt, str):
            return prompt, False, False
        return "".join(p for p in prompt or () if isinstance(p, str)), False, False
    from llama_cpp import llama_chat_format

    name = (entry.chat_format or "").replace("-", "_")
    formatter = getattr(llama_chat_format, f"format_{name}", None)
    if formatter is None:
        return "\n".join(str(m.get("content") or "") for m in call.body["messages"]), False, False
    result = formatter(messages=call.body["messages"])
    return str(result.prompt), bool(result.added_special), True


def _prompt_tokens(llm: Any, entry: ModelEntry, call: Call) -> int:
    """Prompt tokens as llama-cpp-python counts them: the chat template applied, then tokenised."""
    text, has_bos, templated = prompt_text(entry, call)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=templated)
    return len(tokens)


def embed(llm: Any, call: Call) -> JSON:
    result: JSON = llm.create_embedding(input=call.body["input"], model=call.model)
    return result
